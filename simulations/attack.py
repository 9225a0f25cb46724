"""Robust aggregation against a bad site: the same simulation once per strategy clean, and once
per attack with one (or more) virtual sites attacking, summarised as global and fine-tuned macro
AUC of the honest sites.

An attack YAML is a simulation YAML (``base:`` works as usual) plus an attack, or a list of them
(one clean run per strategy serves them all), and the strategies:

    attack: {kind: sign-flip, sites: [0], factor: 4.0}      # or attacks: [{...}, {...}]
    strategies: [fedavg, fedmedian, fedtrimmedavg, krum]

The bad sites are chosen by partition id (the order of ``partition/sites.json``); the behaviour
lives in ``simulations/attack_app.py``, a ClientApp only these runs use.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from common import config, protocol
from common.config import Seed, at_least
from common.experiment import MAX_SITES
from server import runs
from server.strategies import STRATEGIES
from simulations import run as sim
from simulations.attack_app import ATTACK_APP, KINDS, Attack
from simulations.config import SimulationConfig, with_base

DEFAULT_STRATEGIES = ["fedavg", "fedmedian", "fedtrimmedavg", "krum"]


@dataclass
class AttackSettings:
    kind: str = "sign-flip"
    #: Partition ids of the bad sites.
    sites: list[Annotated[int, at_least(0, cap=MAX_SITES)]] = field(default_factory=lambda: [0])
    factor: float = 4.0  # scale / sign-flip: multiplies the update; noise: std in update RMS
    seed: Seed = 0

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {', '.join(KINDS)}")
        if not self.sites:
            raise ValueError("sites: give at least one bad site")

    @property
    def label(self) -> str:
        return (
            self.kind
            if self.kind in ("label-flip", "exfiltrate")
            else f"{self.kind} x{self.factor:g}"
        )


@dataclass
class AttackExperiment:
    simulation: SimulationConfig
    attacks: list[AttackSettings]
    strategies: list[str]

    @classmethod
    def load(cls, path: str | Path) -> AttackExperiment:
        data = with_base(Path(path))
        if "attack" in data and "attacks" in data:
            raise config.ConfigError(f"{path}: give 'attack' or 'attacks', not both")
        raw = data.pop("attacks", None) or [data.pop("attack", {}) or {}]
        attacks = config.coerce(raw, list[AttackSettings], f"{path}: attacks")
        kinds = [a.kind for a in attacks]
        if len(set(kinds)) != len(kinds):
            raise config.ConfigError(f"{path}: attacks: each kind once (got {kinds})")
        strategies = config.coerce(
            data.pop("strategies", DEFAULT_STRATEGIES), list[str], f"{path}: strategies"
        )
        unknown = sorted(set(strategies) - set(STRATEGIES))
        if unknown:
            raise config.ConfigError(f"{path}: strategies: unknown {unknown}")
        simulation = config.from_dict(SimulationConfig, data, str(path), local=True)
        return cls(simulation, attacks, strategies)

    def run_config(self, strategy: str, attack: AttackSettings | None) -> SimulationConfig:
        """``attack`` None: the clean run. Krum assumes as many bad sites as the attack has."""
        cfg = copy.deepcopy(self.simulation)
        fed = cfg.experiment.federation
        fed.strategy = strategy
        if strategy in ("krum", "multikrum"):
            fed.krum_malicious = max(len(a.sites) for a in self.attacks)
        cfg.experiment.name = f"{cfg.experiment.name}-{strategy}-{run_tag(attack)}"
        return cfg


def run_tag(attack: AttackSettings | None) -> str:
    return "clean" if attack is None else attack.kind


def failed_replies(run_dir: Path, bad: list[int]) -> int:
    """Replies that failed in a run, besides the bad sites' own (an exfiltrating site's fail)."""
    names = _site_names(run_dir)
    bad_names = {names[i] for i in bad if i < len(names)}
    count = 0
    for line in (run_dir / runs.METRICS).read_text().splitlines():
        entry = json.loads(line)
        count += sum(1 for f in entry.get("failed", []) if f["site"] not in bad_names)
    return count


def _site_names(run_dir: Path) -> list[str]:
    manifest = json.loads((run_dir / runs.PARTITION / runs.SITES).read_text())
    return [s["name"] for s in manifest["sites"]]


def honest_means(run_dir: Path, bad: list[int]) -> dict[str, float | None]:
    """Mean over the honest sites of the global model's and the fine-tuned models' test AUC."""
    honest = {n for i, n in enumerate(_site_names(run_dir)) if i not in bad}
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    out = {}
    for key, auc in (("before", protocol.BEFORE_MACRO_AUC), ("after", protocol.AFTER_MACRO_AUC)):
        values = [
            m[auc]
            for site, m in summary["finetune"].items()
            if site in honest and m[auc] is not None
        ]
        values = [v for v in values if not math.isnan(v)]
        out[key] = round(float(np.mean(values)), 4) if values else None
    return out


def _simulate(
    experiment: AttackExperiment,
    strategy: str,
    attack: AttackSettings | None,
    out: Path,
    progress: bool,
) -> tuple[Path, float]:
    """One run of the grid, in ``out/<strategy>-<clean or attack kind>``; returns (dir, seconds)."""
    cfg = experiment.run_config(strategy, attack)
    cfg.baselines.local_only = cfg.baselines.centralized = False
    run_dir = out / f"{strategy}-{run_tag(attack)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "attack.json").unlink(missing_ok=True)
    if attack is not None:
        Attack(attack.kind, tuple(attack.sites), attack.factor, attack.seed).write(run_dir)
    started = time.perf_counter()
    sim.run(cfg, run_dir, progress=progress, clientapp=ATTACK_APP)
    return run_dir, round(time.perf_counter() - started, 1)


def run_grid(experiment: AttackExperiment, out: Path, progress: bool = True) -> Path:
    """Every strategy clean, then under each attack; returns the path of the table (attack.md).

    The honest sites are the same in every row (the union of the attacks' bad sites is left out
    of the clean means too). Rows of other strategies already in ``out`` are kept: a rerun of some
    strategies (after a failure, or to add one) completes the same table.
    """
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bad = sorted({i for a in experiment.attacks for i in a.sites})
    previous = out / "attack.json"
    rows = json.loads(previous.read_text())["rows"] if previous.exists() else []
    rows = [r for r in rows if r["strategy"] not in experiment.strategies]
    for strategy in experiment.strategies:
        clean_dir, clean_s = _simulate(experiment, strategy, None, out, progress)
        clean = honest_means(clean_dir, bad)
        for attack in experiment.attacks:
            run_dir, seconds = _simulate(experiment, strategy, attack, out, progress)
            attacked = honest_means(run_dir, bad)
            rows.append(
                {
                    "strategy": strategy,
                    "attack": attack.label,
                    "clean_global": clean["before"],
                    "clean_finetuned": clean["after"],
                    "attacked_global": attacked["before"],
                    "attacked_finetuned": attacked["after"],
                    "clean_s": clean_s,
                    "attacked_s": seconds,
                    "clean_failed": failed_replies(clean_dir, []),
                    "attacked_failed": failed_replies(run_dir, attack.sites),
                }
            )
            _write(out, experiment, rows)
    return _write(out, experiment, rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _write(out: Path, experiment: AttackExperiment, rows: list[dict]) -> Path:
    attacks = [a.__dict__ for a in experiment.attacks]
    (out / "attack.json").write_text(json.dumps({"attacks": attacks, "rows": rows}, indent=1))
    bad = sorted({i for a in experiment.attacks for i in a.sites})
    lines = [
        f"# Robust aggregation against bad partition(s) {bad}",
        "",
        "Macro AUC on the honest sites' test splits (mean over sites): the global model, and "
        "the global model fine-tuned at each site. Failed replies (honest sites only) should be "
        "0: a failed site makes a row incomparable (rerun it with --strategies).",
        "",
        "| strategy | attack | clean global | clean fine-tuned | attacked global "
        "| attacked fine-tuned | global drop | failed replies | s (clean + attacked) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, t = r.get("clean_global"), r.get("attacked_global")
        drop = None if c is None or t is None else c - t
        lines.append(
            f"| {r['strategy']} | {r.get('attack', '-')} | {_fmt(c)} | "
            f"{_fmt(r.get('clean_finetuned'))} | {_fmt(t)} | "
            f"{_fmt(r.get('attacked_finetuned'))} | {_fmt(drop)} | "
            f"{r.get('clean_failed', '-')} + {r.get('attacked_failed', '-')} | "
            f"{r.get('clean_s', '-')} + {r.get('attacked_s', '-')} |"
        )
    path = out / "attack.md"
    path.write_text("\n".join(lines) + "\n")
    return path
