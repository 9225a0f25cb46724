"""A simulation's settings: data to build, how to cut it into sites, experiment, baselines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common import config
from common.experiment import ExperimentConfig
from simulations.partition import SCHEMES
from simulations.synth.network import PtbxlLikeSpec, TisNetworkSpec

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


@dataclass
class DataSettings:
    """Synthetic sources by default; ``ptbxl`` swaps the PTB-XL-like one for a real download."""

    tis: TisNetworkSpec | None = field(default_factory=TisNetworkSpec)
    ptbxl_like: PtbxlLikeSpec | None = field(default_factory=PtbxlLikeSpec)
    ptbxl: str | None = None
    ptbxl_rate: int = 500

    def validate(self) -> None:
        if self.tis is None and self.ptbxl_like is None and self.ptbxl is None:
            raise ValueError("no data: give tis, ptbxl_like or ptbxl")
        if self.ptbxl_rate not in (100, 500):
            raise ValueError("ptbxl_rate must be 100 or 500")


@dataclass
class PartitionSettings:
    scheme: str = "natural"
    tis_sites: int | None = None
    ptbxl_sites: int | None = None
    alpha: float = 0.5
    min_size: int = 50
    seed: int = 0
    #: Per source ("tis", "ptbxl"): the only labels its sites annotate, e.g. a hospital network
    #: whose reports never mention some diagnosis. The others are masked, not taken as negative.
    annotated: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> None:
        if set(self.annotated) - {"tis", "ptbxl"}:
            raise ValueError(f"annotated: unknown source(s) {sorted(set(self.annotated))}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme={self.scheme!r}: expected one of {', '.join(SCHEMES)}")


@dataclass
class BaselineSettings:
    local_only: bool = True
    centralized: bool = True


@dataclass
class SimulationConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataSettings = field(default_factory=DataSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    cpus_per_site: float = 1.0
    workers: int = 2  # processes for data generation and cache preparation

    @classmethod
    def load(cls, path: str | Path | None) -> SimulationConfig:
        """A scenario may name a ``base`` file (relative to itself) and override parts of it."""
        path = Path(path or DEFAULT_CONFIG)
        return config.from_dict(cls, _resolve(path), str(path))


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    data = config.load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise config.ConfigError(f"{path}: 'base' chain loops back to {base_path}")
    return _merge(_resolve(base_path, (*seen, base_path)), data)
