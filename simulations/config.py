"""A simulation's settings: data to build, how to cut it into sites, experiment, baselines."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from common import config, cpu
from common.config import Local, Seed, SettingError, Workers, above, at_least
from common.experiment import MAX_SITES, ExperimentConfig
from common.labels import LabelSpace
from server import strategies
from simulations.partition import SCHEMES
from simulations.synth.network import PtbxlLikeSpec, TisNetworkSpec

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
#: Resource cap (docs/formats.md#configuration-limits): Ray cannot place a site that needs more.
MAX_CPUS_PER_SITE = 1024.0
MAX_GPUS_PER_SITE = 64.0
_RAY_ADDRESS = re.compile(r"[A-Za-z0-9.-]{1,253}:\d{1,5}")


@dataclass
class DataSettings:
    """Synthetic sources by default; ``ptbxl`` swaps the PTB-XL-like one for a real download."""

    tis: TisNetworkSpec | None = field(default_factory=TisNetworkSpec)
    ptbxl_like: PtbxlLikeSpec | None = field(default_factory=PtbxlLikeSpec)
    ptbxl: Annotated[str, Local(config.existing_dir)] | None = None
    ptbxl_rate: int = 500

    def validate(self) -> None:
        if self.tis is None and self.ptbxl_like is None and self.ptbxl is None:
            raise ValueError("no data: give tis, ptbxl_like or ptbxl")
        if self.ptbxl_rate not in (100, 500):
            raise ValueError("ptbxl_rate must be 100 or 500")


@dataclass
class PartitionSettings:
    scheme: str = "natural"
    tis_sites: Annotated[int, at_least(1, cap=MAX_SITES)] | None = None
    ptbxl_sites: Annotated[int, at_least(1, cap=MAX_SITES)] | None = None
    alpha: Annotated[float, above(0)] = 0.5  # Dirichlet concentration
    min_size: Annotated[int, at_least(0)] = 50
    seed: Seed = 0
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
    cpus_per_site: Annotated[float, above(0, cap=MAX_CPUS_PER_SITE)] = 1.0
    #: A fraction of a GPU per site (0.25: four sites share one); 0 = CPU only. A site trains
    #: on CUDA when Ray gives it a GPU.
    gpus_per_site: Annotated[float, at_least(0, cap=MAX_GPUS_PER_SITE)] = 0.0
    #: A running Ray cluster for the sites ("HOST:6379", or "auto": the one started on this
    #: host with ``ray start --head``); None = a private one on this machine for the run.
    #: Every node must see this run's folder and its data at the same paths.
    ray_address: str | None = None
    workers: Workers = 2  # processes for data generation and cache preparation

    def validate(self) -> None:
        address = self.ray_address
        if address is not None and not (address == "auto" or _RAY_ADDRESS.fullmatch(address)):
            raise SettingError("ray_address", f"{address!r}: expected HOST:PORT or auto")

    def check_local(self) -> None:
        """Every site fits this machine, the strategy is one the ServerApp builds, and
        ``annotated`` names labels of the experiment's."""
        cpus = cpu.available_cores()
        if self.ray_address is None and self.cpus_per_site > cpus:
            raise SettingError(
                "cpus_per_site",
                f"{self.cpus_per_site:g}: this machine has {cpus} CPUs, and a site that needs "
                "more is never started",
            )
        strategies.check(self.experiment.federation, "experiment.federation.strategy")
        labels = LabelSpace.load(self.experiment.labels).labels
        for source, names in self.partition.annotated.items():
            unknown = sorted(set(names) - set(labels))
            if unknown:
                raise SettingError(
                    f"partition.annotated.{source}",
                    f"{unknown} not in label space {self.experiment.labels} ({', '.join(labels)})",
                )

    @classmethod
    def load(cls, path: str | Path | None, ptbxl: Path | None = None) -> SimulationConfig:
        """A scenario may name a ``base`` file (relative to itself) and override parts of it;
        ``ptbxl`` (a command-line flag) replaces ``data.ptbxl``."""
        path = Path(path or DEFAULT_CONFIG)
        data = with_base(path)
        if ptbxl is not None:
            data = _merge(data, {"data": {"ptbxl": str(ptbxl)}})
        return config.from_dict(cls, data, str(path), local=True)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The file's settings over those of its ``base`` chain; a problem in the chain is named
    from the file the user gave ('run.yaml: base: common.yaml: ...')."""
    data = config.load_yaml(path)
    base: Any = data.pop("base", None)
    if base is None:
        return data
    where = f"{path}: base"
    if not isinstance(base, str):
        raise config.ConfigError(f"{where}: expected the path of a YAML file, got {base!r}")
    here = (*seen, path.resolve())
    try:
        base_path = (path.parent / base).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise config.ConfigError(f"{where}: not a usable path: {exc}") from exc
    if base_path in here:
        raise config.ConfigError(f"{where}: loops back to {base_path}")
    try:
        return _merge(with_base(base_path, here), data)
    except config.ConfigError as exc:
        raise config.ConfigError(f"{where}: {exc}") from exc
