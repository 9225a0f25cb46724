"""The seed paper's experiment without federation: does pretraining on a large hospital network
help a small target dataset?

Three arms, all scored on the target's test split (PTB-XL fold 10) with F1 thresholds from its
validation split (fold 9): (a) train on the target alone, (b) pretrain on the TIS-like network and
use the model as is, (c) pretrain, then fine-tune on the target. Each seed changes model
initialisation and data order; the data stay fixed. Results: mean and spread over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from common import config
from common.cache import SiteCache
from common.config import Seed, SettingError, Workers
from common.dataset import CachedDataset
from common.evaluation import score
from common.experiment import ExperimentConfig
from common.finetune import finetune
from common.labels import LabelSpace
from common.metrics import Metrics
from common.models import ECGClassifier
from common.site import SiteData
from common.training import Trainer, TrainResult, default_device
from simulations.config import DataSettings, with_base
from simulations.report import over_seeds, spread_cell
from simulations.run import synthetic_source

#: Arm key -> how the report names it.
ARMS = {
    "target_only": "(a) target only",
    "pretrained": "(b) TIS-like pretrained, as is",
    "finetuned": "(c) TIS-like pretrained + fine-tuned",
}
HEADLINE = ("macro_auc", "micro_auc", "macro_f1")


@dataclass
class CentralizedConfig:
    """Experiment settings (``local`` trains arms a and b, ``finetune`` arm c) and the data: the
    simulation's ``data:`` section, its TIS-like network pretrains and its PTB-XL(-like) data is
    the target."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataSettings = field(default_factory=DataSettings)
    seeds: list[Seed] = field(default_factory=lambda: [0, 1, 2])
    workers: Workers = 2  # processes for data generation and cache preparation

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: give at least one seed, without repeats")
        if self.data.tis is None:
            raise SettingError("data.tis", "the pretraining network is needed (arms b and c)")
        if self.data.ptbxl is None and self.data.ptbxl_like is None:
            raise SettingError("data", "no target: give ptbxl_like or ptbxl")
        if self.experiment.finetune.labels is not None:
            raise ValueError(
                "experiment.finetune.labels: the arms are compared on one label space; "
                "leave it unset (labels sets the space)"
            )

    @classmethod
    def load(
        cls, path: str | Path, seeds: list[int] | None = None, ptbxl: Path | None = None
    ) -> CentralizedConfig:
        """The YAML file (over its ``base`` chain, as a scenario's), with the command line's
        ``--seeds`` and ``--ptbxl`` over its own."""
        data = with_base(Path(path))
        if seeds:
            data["seeds"] = seeds
        if ptbxl is not None:
            data["data"] = {**(data.get("data") or {}), "ptbxl": str(ptbxl)}
        return config.from_dict(cls, data, str(path), local=True)


@dataclass
class Splits:
    """The datasets every arm draws on, built once for all seeds."""

    tis_train: CachedDataset
    tis_val: CachedDataset
    train: CachedDataset
    val: CachedDataset
    test: CachedDataset


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_sites(
    cfg: CentralizedConfig, store: Path, cache_dir: Path, progress: bool
) -> tuple[SiteData, SiteData]:
    """The TIS-like network and the target, generated once per spec and prepared once."""
    d = cfg.data
    tis_dir = synthetic_source("tis", d.tis, store, cfg.workers, progress)
    target_dir = (
        Path(d.ptbxl)
        if d.ptbxl
        else synthetic_source("ptbxl", d.ptbxl_like, store, cfg.workers, progress)
    )
    pipeline = cfg.experiment.pipeline
    sources = (("tis", tis_dir, {}), ("ptbxl", target_dir, {"rate": d.ptbxl_rate}))
    sites = []
    for fmt, data_dir, options in sources:
        SiteCache.prepare(
            data_dir, cache_dir, pipeline, fmt, workers=cfg.workers, progress=progress, **options
        )
        sites.append(SiteData.from_folder(fmt, data_dir, cache_dir, pipeline, fmt, **options))
    return sites[0], sites[1]


def _fresh_model(experiment: ExperimentConfig, space: LabelSpace, seed: int) -> ECGClassifier:
    torch.manual_seed(seed)
    return experiment.model_config().build(n_classes=len(space))


def _trained(result: TrainResult, started: float) -> dict:
    return {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_seed(
    experiment: ExperimentConfig, space: LabelSpace, data: Splits, seed: int, progress: bool
) -> dict[str, dict]:
    """The three arms for one seed: per arm its test metrics and how long it trained."""
    local = replace(experiment.local, seed=seed)
    labels = space.labels
    out: dict[str, dict] = {}

    def done(arm: str, metrics: Metrics, training: dict) -> None:
        out[arm] = {"metrics": metrics.to_dict(), "training": training}
        _say(
            f"seed {seed}: {ARMS[arm]}: macro AUC {_fmt(metrics.macro_auc)}, "
            f"{training['epochs']} epochs, {training['seconds']} s"
        )

    _say(f"seed {seed}: {ARMS['target_only']} ...")
    started = time.perf_counter()
    model = _fresh_model(experiment, space, seed)
    result = Trainer(local, labels, progress).fit(model, data.train, data.val)
    done("target_only", score(model, data.val, data.test, labels), _trained(result, started))

    _say(f"seed {seed}: pretraining on the TIS-like network ...")
    started = time.perf_counter()
    model = _fresh_model(experiment, space, seed)
    result = Trainer(local, labels, progress).fit(model, data.tis_train, data.tis_val)
    done("pretrained", score(model, data.val, data.test, labels), _trained(result, started))

    _say(f"seed {seed}: fine-tuning on the target ...")
    started = time.perf_counter()
    ft = experiment.finetune
    settings = replace(ft, train=replace(ft.train, seed=seed))
    model, result = finetune(model, space, space, data.train, data.val, settings, progress)
    training = _trained(result, started)
    training["pretraining_epochs"] = out["pretrained"]["training"]["epochs"]
    done("finetuned", score(model, data.val, data.test, labels), training)
    return out


def summarise(per_seed: dict[int, dict[str, dict]], labels: tuple[str, ...]) -> dict:
    """Arm -> metric (headline metrics and ``auc_<label>``) -> mean, std, n over seeds."""
    summary = {}
    for arm in ARMS:
        runs = [per_seed[s][arm]["metrics"] for s in per_seed]
        stats = {name: over_seeds([m[name] for m in runs]) for name in HEADLINE}
        for label in labels:
            stats[f"auc_{label}"] = over_seeds([m["per_class"][label]["auc"] for m in runs])
        summary[arm] = stats
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _epochs(arm: dict) -> str:
    return f"{arm['training']['epochs']} ({arm['training']['best_epoch']})"


def machine() -> str:
    device = default_device()
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} on {device.type}, {torch.get_num_threads()} threads"
    )


def markdown(results: dict) -> str:
    """The run's report: headline table, per-class AUC table, data, budget rules, timings."""
    labels = results["labels"]
    summary = results["summary"]
    seeds = results["seeds"]
    counts = results["data"]
    lines = [
        f"# Centralized experiment: {results['name']}",
        "",
        f"Target test split ({counts['target']['test']} records), mean ± std over "
        f"{len(seeds)} seed(s) {', '.join(map(str, seeds))}; F1 at per-class thresholds chosen "
        "on the target's validation split.",
        "",
        "| arm | macro AUC | micro AUC | macro F1 |",
        "|---|---|---|---|",
    ]
    for arm, title in ARMS.items():
        cells = " | ".join(spread_cell(summary[arm][name]) for name in HEADLINE)
        lines.append(f"| {title} | {cells} |")
    lines += ["", "Per-class AUC:", ""]
    lines.append("| arm | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for arm, title in ARMS.items():
        cells = " | ".join(spread_cell(summary[arm][f"auc_{label}"]) for label in labels)
        lines.append(f"| {title} | {cells} |")
    positives = counts["target_test_positives"]
    lines += [
        "",
        "Positives in the target test split: "
        + ", ".join(f"{label} {positives[label]}" for label in labels)
        + ".",
        "",
        "Data: TIS-like network train/val/test "
        + "/".join(str(counts["tis"][s]) for s in ("train", "val", "test"))
        + ", target train/val/test "
        + "/".join(str(counts["target"][s]) for s in ("train", "val", "test"))
        + " records.",
        "",
        f"Budget: {results['budget']}",
        "",
        "Epochs trained, best epoch in brackets (target only / pretraining / fine-tuning): "
        + "; ".join(
            f"seed {s}: " + " / ".join(_epochs(results["per_seed"][str(s)][arm]) for arm in ARMS)
            for s in seeds
        )
        + ".",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in results["timings"].items()),
        "",
        f"Machine: {results['machine']}.",
        "",
        "Configuration: [config.yaml](config.yaml); every number: [results.json](results.json).",
    ]
    return "\n".join(lines) + "\n"


def budget(experiment: ExperimentConfig) -> str:
    local, ft = experiment.local, experiment.finetune
    patience = local.early_stopping_patience
    stop = f"early stopping on validation macro AUC (patience {patience}, best epoch kept)"
    return (
        f"arms (a) and (b) train with the same settings: at most {local.epochs} epochs, batch "
        f"{local.batch_size}, {local.optimizer} lr {local.lr}, "
        f"{stop if patience else 'no early stopping'}, (a) on the target's train split with its "
        "validation split, (b) on the TIS-like train split with the TIS-like validation split. "
        f"(c) fine-tunes (b)'s model ({ft.mode}) for at most {ft.train.epochs} epochs, batch "
        f"{ft.train.batch_size}, lr {ft.train.lr}"
        + (
            f", early stopping patience {ft.train.early_stopping_patience}"
            if ft.train.early_stopping_patience
            else ""
        )
        + ". All arms are scored on the same target test split."
    )


def run(cfg: CentralizedConfig, run_dir: Path, progress: bool = True) -> Path:
    """Run every seed and arm; writes config.yaml, results.json and results.md, returns the last."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    experiment = cfg.experiment
    space = LabelSpace.load(experiment.labels)
    timings: dict[str, float] = {}

    _say("data")
    started = time.perf_counter()
    tis, target = load_sites(cfg, run_dir.parent / ".data", run_dir.parent / ".cache", progress)
    data = Splits(
        tis.dataset("train", space),
        tis.dataset("val", space),
        *(target.dataset(split, space) for split in ("train", "val", "test")),
    )
    timings["data_s"] = round(time.perf_counter() - started, 1)
    _say(f"TIS-like {tis.counts()}, target {target.counts()}")

    per_seed = {}
    for seed in cfg.seeds:
        started = time.perf_counter()
        per_seed[seed] = run_seed(experiment, space, data, seed, progress)
        timings[f"seed_{seed}_s"] = round(time.perf_counter() - started, 1)

    positives = (data.test.y * data.test.mask).sum(0).int().tolist()
    results = {
        "name": experiment.name,
        "labels": list(space.labels),
        "seeds": list(cfg.seeds),
        "data": {
            "tis": tis.counts(),
            "target": target.counts(),
            "target_test_positives": dict(zip(space.labels, positives, strict=True)),
        },
        "budget": budget(experiment),
        "summary": summarise(per_seed, space.labels),
        "per_seed": {str(s): arms for s, arms in per_seed.items()},
        "timings": timings,
        "machine": machine(),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    path = run_dir / "results.md"
    path.write_text(markdown(results))
    return path
