"""An experiment's settings: labels, model, pipeline, local training, federation, fine-tuning.

One YAML file describes a run for every path (federated, local-only and centralized baselines),
validated on load; the coordinator sends the parts a site needs inside its messages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from common import config, dpsgd
from common.config import Local, Range, SettingError, above, at_least
from common.dpsgd import Delta, DPSGDSettings, Epsilon
from common.labels import LabelSpace, label_space
from common.models import ModelConfig, ModelSettings
from common.names import RULE, is_plain_name
from common.personalise import CANDIDATES, METHODS, MODES, Method
from common.preprocess import PipelineConfig
from common.training import MAX_EPOCHS, TrainConfig
from common.transport import TRANSPORTS

#: Resource caps (docs/formats.md#configuration-limits): a round is minutes, so 10,000 rounds
#: is weeks; a round that waits longer than a week for replies has lost its sites.
MAX_ROUNDS = 10_000
MAX_SITES = 10_000
MAX_ROUND_TIMEOUT_S = 7 * 24 * 3600.0
#: How the sites' local learning rate moves over the rounds (``FederationSettings.lr_at``).
ROUND_LR = ("constant", "cosine")


@dataclass
class PrivacySettings:
    """Central differential privacy on the sites' updates (DP-FedAvg, McMahan et al. 2018).

    Each site's update w_local - w_global is clipped to ``clipping_norm`` (by the site, or by the
    coordinator), and Gaussian noise of std noise_multiplier * clipping_norm / n is added to the
    mean of the n updates. The guarantee is per site (one whole hospital in or out), not per ECG.
    """

    noise_multiplier: Annotated[float, at_least(0)] = 0.0  # 0 = no DP (unless target_epsilon)
    #: Instead of noise_multiplier: spend this over all rounds.
    target_epsilon: Epsilon | None = None
    clipping_norm: Annotated[float, above(0)] = 1.0
    clipping: str = "client"  # "client": each site clips before replying; "server": coordinator
    delta: Delta = 1e-5
    #: Budget: no round starts that would take epsilon past it.
    max_epsilon: Annotated[float, above(0)] | None = None

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0 or self.target_epsilon is not None

    def validate(self) -> None:
        if self.target_epsilon is not None and self.noise_multiplier > 0:
            raise ValueError("target_epsilon is not given with noise_multiplier")
        if self.clipping not in ("client", "server"):
            raise ValueError(f"clipping={self.clipping!r}: expected client or server")
        if self.max_epsilon is not None and not self.enabled:
            raise ValueError("max_epsilon needs noise_multiplier or target_epsilon")


@dataclass
class FederationSettings:
    """How the coordinator runs the pretraining rounds."""

    strategy: str = "fedavg"  # a name in server/strategies.BUILDERS, checked where it is built
    rounds: Annotated[int, at_least(1, cap=MAX_ROUNDS)] = 3
    fraction_train: Annotated[float, above(0, 1)] = 1.0
    fraction_evaluate: Annotated[float, at_least(0, 1)] = 1.0
    #: None: every site (simulation) / every provisioned hospital.
    min_sites: Annotated[int, at_least(1, cap=MAX_SITES)] | None = None
    round_timeout_s: Annotated[float, above(0, cap=MAX_ROUND_TIMEOUT_S)] = 600.0
    proximal_mu: Annotated[float, at_least(0)] = 0.0  # fedprox
    #: fedadam / fedyogi eta, fedavgm server learning rate.
    server_lr: Annotated[float, above(0)] = 0.01
    server_momentum: Annotated[float, at_least(0, 1)] = 0.9  # fedavgm
    #: fedtrimmedavg: share cut from each end.
    trimmed_beta: Annotated[float, Range(0, 0.5, high_open=True)] = 0.2
    krum_malicious: Annotated[int, at_least(0, cap=MAX_SITES)] = 0  # krum, multikrum: byzantine
    #: Start from these weights instead of from scratch.
    init_checkpoint: Annotated[str, Local(config.existing_file)] | None = None
    transport: str = "float32"  # or float16: half the bytes on the wire each way
    #: The sites' local learning rate over the rounds: constant, or cosine (decayed towards 0).
    round_lr: str = "constant"
    #: Sites clip w_local - w_global to this L2 norm.
    update_clip_norm: Annotated[float, above(0)] | None = None
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    dp_sgd: DPSGDSettings = field(default_factory=DPSGDSettings)  # sample-level, at each site

    def validate(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport={self.transport!r}: expected one of {TRANSPORTS}")
        if self.round_lr not in ROUND_LR:
            raise SettingError("round_lr", f"{self.round_lr!r}: expected one of {ROUND_LR}")
        if self.strategy == "fedprox" and self.proximal_mu == 0:
            raise ValueError("strategy fedprox needs proximal_mu > 0 (0 is plain fedavg)")
        if self.privacy.enabled and (
            self.strategy not in ("fedavg", "fedprox") or self.fraction_train != 1
        ):
            raise ValueError(
                "privacy needs strategy fedavg or fedprox with fraction_train 1: the noise is "
                "calibrated to an unweighted mean over a fixed set of sites"
            )

    def lr_at(self, lr: float, rnd: int) -> float:
        """The sites' learning rate in round ``rnd`` (from 1): ``lr`` in every round, or along
        half a cosine over the rounds, ``lr`` in round 1 and about 7 % of it in the last of 6.
        Each site computes it from the round Flower sends, as each round starts a new optimiser
        (a schedule within a round's few local steps decays too early: docs/results.md)."""
        if self.round_lr == "constant":
            return lr
        return lr * (1 + math.cos(math.pi * (max(rnd, 1) - 1) / self.rounds)) / 2


@dataclass
class FinetuneSettings:
    """How each site personalises the global model (``common.personalise``): a plain local
    fine-tune after the last round, or a method that also changes the rounds."""

    mode: str = "full"
    k: Annotated[int, at_least(1)] = 1  # last_k: how many body blocks train
    #: A label space to grow/shrink the head to; None = pretraining's.
    labels: Annotated[str, Local(label_space)] | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=3e-4))
    #: Ditto: strength of the personal model's pull towards the global weights.
    ditto_lambda: Annotated[float, at_least(0)] = 0.5
    #: FedRep: epochs on the site's own head before the body's, each round.
    head_epochs: Annotated[int, at_least(1, cap=MAX_EPOCHS)] = 1
    #: auto: the methods each site tries, keeping the best by its own validation split.
    candidates: list[str] = field(default_factory=lambda: ["full", "head", "ditto"])
    #: The share of sites that fine-tune and are scored after the last round: a sample seeded
    #: by ``local.seed``, by site name; 1 = every site. A study of 1,000 sites samples its
    #: rounds (``federation.fraction_train``) and may sample this too.
    fraction: Annotated[float, above(0, 1)] = 1.0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise SettingError("mode", f"{self.mode!r}: expected one of {', '.join(MODES)}")
        wrong = [c for c in self.candidates if c not in CANDIDATES]
        if wrong or not self.candidates or len(set(self.candidates)) < len(self.candidates):
            raise SettingError(
                "candidates",
                f"{self.candidates!r}: distinct names among {', '.join(CANDIDATES)} (methods "
                "with plain rounds, so that one federation serves them all)",
            )
        runs = self.candidates if self.mode == "auto" else [self.mode]
        if self.labels and "ditto" in runs:
            raise SettingError(
                "labels",
                "ditto pulls the personal model towards the global one, which has no outputs for "
                "labels it was not trained on: fine-tune to new labels with a plain mode",
            )

    @property
    def method(self) -> Method:
        return METHODS[self.mode]


@dataclass
class TrackingSettings:
    """Where the coordinator also reports the run (server/tracking.py); off by default. A value
    without a URI scheme is a folder, relative to the runs folder."""

    mlflow: str | None = None  # an MLflow tracking URI, or a folder for a local store
    tensorboard: str | None = None  # a folder: event files per run


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    labels: Annotated[str, Local(label_space)] = "seed6"
    model: ModelSettings = field(default_factory=ModelSettings)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    local: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationSettings = field(default_factory=FederationSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @classmethod
    def load(cls, path: str | Path | None) -> ExperimentConfig:
        return config.load(cls, path) if path else cls()

    def validate(self) -> None:
        if not is_plain_name(self.name):  # it names the run's folder, here and at every site
            raise SettingError("name", f"{self.name!r}: a run folder's name needs {RULE}")
        if self.finetune.method.local_keys is not None and (
            self.federation.strategy not in ("fedavg", "fedprox", "fedexp")
            or self.federation.privacy.enabled
            or self.federation.dp_sgd.enabled
        ):
            raise SettingError(
                "finetune.mode",
                f"{self.finetune.mode} sends only part of the model back and aggregates that "
                "part only: it needs federation.strategy fedavg, fedprox or fedexp, without "
                "privacy or dp_sgd (finetune.mode full works with every strategy)",
            )
        # fedbn with DP-SGD or central privacy (both need GroupNorm) is refused just above.
        if self.finetune.mode == "fedbn" and self.model.norm != "batch":
            raise SettingError(
                "finetune.mode",
                "fedbn keeps each site's BatchNorm layers at the site, and with model.norm: "
                f"{self.model.norm} the model has none: use model.norm: batch",
            )
        if self.federation.dp_sgd.enabled:
            local = self.local
            found = dpsgd.conflicts(
                self.federation.proximal_mu > 0,
                local.class_weights,
                local.max_grad_norm,
                local.precision,
            )
            if self.model.norm == "batch":
                found.insert(0, "BatchNorm, which mixes records within a batch (model.norm)")
            if found:
                raise ValueError(
                    f"federation.dp_sgd cannot account for {', '.join(found)}: turn those off "
                    "(model.norm: group, local.class_weights: none, local.precision: fp32)"
                )
        if self.federation.privacy.enabled and self.model.norm == "batch":
            raise ValueError(
                "federation.privacy needs model.norm: group. BatchNorm's running statistics "
                "are summaries of site data outside what DP-FedAvg clips, and its integer step "
                "counter cannot be clipped"
            )

    def check_local(self) -> None:
        """The model builds (on the meta device) for this label space within the caps. Where the
        experiment is loaded: a hospital measures the coordinator's model by its own policy."""
        try:
            self.model_config().check_size(len(LabelSpace.load(self.labels)))
        except ValueError as exc:
            raise SettingError("model", str(exc)) from exc

    def to_dict(self) -> dict:
        return asdict(self)

    def model_config(self) -> ModelConfig:
        """The model at the pipeline's input length and rate."""
        return self.model.at(self.pipeline.length, self.pipeline.fs)
