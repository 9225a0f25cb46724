"""An experiment's settings: labels, model, pipeline, local training, federation, fine-tuning.

One YAML file describes a run for every path (federated, local-only and centralized baselines),
validated on load; the coordinator sends the parts a site needs inside its messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import config
from common.dpsgd import DPSGDSettings
from common.models import ModelConfig
from common.preprocess import PipelineConfig
from common.training import TrainConfig
from common.transport import TRANSPORTS

STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedavgm",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
)
FINETUNE_MODES = ("full", "head", "last_k", "discriminative")


@dataclass
class ModelSettings:
    """A registered model by name; input length and rate come from the pipeline."""

    name: str = "ribeiro_resnet"
    norm: str = "batch"
    kwargs: dict = field(default_factory=dict)


@dataclass
class PrivacySettings:
    """Central differential privacy on the sites' updates (DP-FedAvg, McMahan et al. 2018).

    Each site's update w_local - w_global is clipped to ``clipping_norm`` (by the site, or by the
    coordinator), and Gaussian noise of std noise_multiplier * clipping_norm / n is added to the
    mean of the n updates. The guarantee is per site (one whole hospital in or out), not per ECG.
    """

    noise_multiplier: float = 0.0  # 0 = no DP (unless target_epsilon sets it)
    target_epsilon: float | None = None  # instead of noise_multiplier: spend this over all rounds
    clipping_norm: float = 1.0
    clipping: str = "client"  # "client": each site clips before replying; "server": coordinator
    delta: float = 1e-5
    max_epsilon: float | None = None  # budget: no round starts that would take epsilon past it

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0 or self.target_epsilon is not None

    def validate(self) -> None:
        if self.noise_multiplier < 0 or self.clipping_norm <= 0:
            raise ValueError("noise_multiplier must be >= 0 and clipping_norm > 0")
        if self.target_epsilon is not None and (
            self.target_epsilon <= 0 or self.noise_multiplier > 0
        ):
            raise ValueError("target_epsilon must be > 0, and not given with noise_multiplier")
        if self.clipping not in ("client", "server"):
            raise ValueError(f"clipping={self.clipping!r}: expected client or server")
        if not 0 < self.delta < 1:
            raise ValueError("delta must lie in (0, 1)")
        if self.max_epsilon is not None and (self.max_epsilon <= 0 or not self.enabled):
            raise ValueError("max_epsilon must be > 0 and needs noise_multiplier or target_epsilon")


@dataclass
class FederationSettings:
    """How the coordinator runs the pretraining rounds."""

    strategy: str = "fedavg"
    rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_sites: int | None = None  # None: every site (simulation) / every provisioned hospital
    round_timeout_s: float = 600.0
    proximal_mu: float = 0.0  # fedprox
    server_lr: float = 0.01  # fedadam / fedyogi eta, fedavgm server learning rate
    server_momentum: float = 0.9  # fedavgm
    trimmed_beta: float = 0.2  # fedtrimmedavg: share cut from each end
    krum_malicious: int = 0  # krum, multikrum: sites assumed byzantine
    init_checkpoint: str | None = None  # start from these weights instead of from scratch
    transport: str = "float32"  # or float16: half the bytes on the wire each way
    update_clip_norm: float | None = None  # sites clip w_local - w_global to this L2 norm
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    dp_sgd: DPSGDSettings = field(default_factory=DPSGDSettings)  # sample-level, at each site

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.rounds < 1 or (self.min_sites is not None and self.min_sites < 1):
            raise ValueError("rounds and min_sites must be at least 1")
        if not 0 < self.fraction_train <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise ValueError("fraction_train must lie in (0, 1], fraction_evaluate in [0, 1]")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport={self.transport!r}: expected one of {TRANSPORTS}")
        if self.proximal_mu < 0:
            raise ValueError("proximal_mu must be >= 0")
        if self.strategy == "fedprox" and self.proximal_mu == 0:
            raise ValueError("strategy fedprox needs proximal_mu > 0 (0 is plain fedavg)")
        if self.update_clip_norm is not None and self.update_clip_norm <= 0:
            raise ValueError("update_clip_norm must be > 0 (or null: no clipping)")
        if self.privacy.enabled and (
            self.strategy not in ("fedavg", "fedprox") or self.fraction_train != 1
        ):
            raise ValueError(
                "privacy needs strategy fedavg or fedprox with fraction_train 1: the noise is "
                "calibrated to an unweighted mean over a fixed set of sites"
            )


@dataclass
class FinetuneSettings:
    """Local fine-tuning of the global model at each site after the last round."""

    mode: str = "full"
    k: int = 1  # last_k: how many body blocks train
    labels: str | None = None  # a label space to grow/shrink the head to; None = pretraining's
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=3e-4))

    def validate(self) -> None:
        if self.mode not in FINETUNE_MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {', '.join(FINETUNE_MODES)}")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    labels: str = "seed6"
    model: ModelSettings = field(default_factory=ModelSettings)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    local: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationSettings = field(default_factory=FederationSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    @classmethod
    def load(cls, path: str | Path | None) -> ExperimentConfig:
        return config.load(cls, path) if path else cls()

    def validate(self) -> None:
        if self.federation.dp_sgd.enabled and (
            self.model.norm == "batch"
            or self.federation.proximal_mu > 0
            or self.local.class_weights != "none"
            or self.local.max_grad_norm is not None
        ):
            raise ValueError(
                "federation.dp_sgd needs model.norm: group (BatchNorm mixes records within a "
                "batch), no FedProx term, local.class_weights: none and no local.max_grad_norm"
            )
        if self.federation.privacy.enabled and self.model.norm == "batch":
            raise ValueError(
                "federation.privacy needs model.norm: group. BatchNorm's running statistics "
                "are summaries of site data outside what DP-FedAvg clips, and its integer step "
                "counter cannot be clipped"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def model_config(self) -> ModelConfig:
        """The model at the pipeline's input length and rate."""
        return ModelConfig(
            self.model.name,
            dict(self.model.kwargs),
            self.model.norm,
            self.pipeline.length,
            self.pipeline.fs,
        )
