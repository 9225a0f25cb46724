"""An experiment's settings: labels, model, pipeline, local training, federation, fine-tuning.

One YAML file describes a run for every path (federated, local-only and centralized baselines),
validated on load; the coordinator sends the parts a site needs inside its messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import config
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
)
FINETUNE_MODES = ("full", "head", "last_k", "discriminative")


@dataclass
class ModelSettings:
    """A registered model by name; input length and rate come from the pipeline."""

    name: str = "ribeiro_resnet"
    norm: str = "batch"
    kwargs: dict = field(default_factory=dict)


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
    krum_malicious: int = 0  # krum: sites assumed byzantine
    init_checkpoint: str | None = None  # start from these weights instead of from scratch
    transport: str = "float32"  # or float16: half the bytes on the wire each way

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
