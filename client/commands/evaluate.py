"""Score a model on this hospital's own labelled records: per-label AUC with a 95 % bootstrap
interval, F1 at the checkpoint's decision thresholds, calibration (Brier score, reliability plot).

The folder is prepared into the site's cache with the checkpoint's own pipeline and split as every
other hospital command splits it (``ecgfl-hospital finetune``'s ``load_site``); nothing leaves the
site: the table is printed, and ``evaluation.json`` and ``reliability.png`` are written to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from client.commands.finetune import load_site
from client.commands.predict import thresholds
from common.checkpoint import Checkpoint, load_checkpoint
from common.config import ConfigError
from common.errors import DataError
from common.metrics import MIN_CASES, N_RESAMPLES, brier_scores, compute_metrics
from common.site import ALL, SiteData
from common.sources import FORMATS
from common.splits import SPLITS
from common.training import evaluate

RELIABILITY_BINS = 10


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="checkpoint to score")
    p.add_argument("--data", type=Path, required=True, help="folder of this site's records")
    p.add_argument("--split", choices=(*SPLITS, ALL), default="test", help="records to score")
    p.add_argument("--format", choices=FORMATS, help="data format (detected when omitted)")
    p.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL: which files to read")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="folder for the results")
    p.add_argument("--cache", type=Path, help="folder that holds site caches (default <out>/cache)")


def _out_dir(path: Path) -> Path:
    """--out, made if missing; refused (one line) where it cannot be a folder."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot make the folder ({exc.strerror})") from None
    return path


def score_site(site: SiteData, split: str, ckpt: Checkpoint) -> dict:
    """Every number of the report, as plain data: per label and overall."""
    ds = site.dataset(split, ckpt.space)
    if not len(ds):
        counts = ", ".join(f"{k} {v}" for k, v in site.counts().items())
        raise DataError(f"{site.name}: no records in split {split!r} ({counts}); try --split all")
    labels = ckpt.space.labels
    probs, y, mask = evaluate(ckpt.build_model(), ds)
    cuts, source = thresholds(ckpt)
    m = compute_metrics(probs, y, mask, labels, cuts, intervals=True)
    brier, brier_all = brier_scores(probs, y, mask, labels)
    scores = m.to_dict()  # a copy: the Brier scores join each label's row
    for label in labels:
        scores["per_class"][label]["brier"] = brier[label]
    return {
        "model": str(ckpt.path),
        "data": str(site.cache.manifest.get("data_dir", site.name)),
        "split": split,
        "records": len(ds),
        "threshold_source": source,
        "thresholds_stored": bool(ckpt.meta.get("thresholds")),
        "bootstrap_resamples": N_RESAMPLES,
        "metrics": scores,
        "brier": brier_all,
        "unscored": m.unscored(),
        "few_cases": m.few_cases(),
        "reliability": _reliability_data(probs, y, mask, labels),
    }


def _reliability_data(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, labels: tuple[str, ...]
) -> dict:
    """Per label, and pooled: mean predicted probability vs observed frequency in each of
    ``RELIABILITY_BINS`` equal-width bins (sklearn's calibration_curve), over annotated records."""
    from sklearn.calibration import calibration_curve

    curves = {}
    columns = [(lab, mask[:, k] > 0, k) for k, lab in enumerate(labels)]
    for name, keep, k in [*columns, ("all labels", mask > 0, None)]:
        t = (y[:, k] if k is not None else y)[keep] > 0.5
        p = (probs[:, k] if k is not None else probs)[keep]
        if t.any() and not t.all():
            observed, predicted = calibration_curve(t, p, n_bins=RELIABILITY_BINS)
            curves[name] = {"predicted": predicted.tolist(), "observed": observed.tolist()}
    return curves


def plot_reliability(curves: dict, path: Path, title: str) -> None:
    """Where the model's probabilities can be read as frequencies (on the diagonal) and where
    not; Agg, so it works on a headless hospital server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, c in curves.items():
        style = {"color": "black", "lw": 2} if name == "all labels" else {"lw": 1}
        ax.plot(c["predicted"], c["observed"], "o-", ms=3, label=name, **style)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed frequency of the label")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ci(interval: list[float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "-"


def as_text(result: dict) -> str:
    """The per-label table and the overall scores, as a hospital reads them."""
    m = result["metrics"]
    tuned = result["thresholds_stored"]
    lines = [
        f"model {result['model']}; {result['records']} records of split {result['split']!r}",
        f"F1 at: {result['threshold_source']}" + ("" if tuned else " (NOT tuned on this site)"),
        f"{'label':8}{'positives':>10}{'annotated':>10}{'AUC':>7}  {'95% CI':17}"
        f"{'F1':>6}{'threshold':>10}{'Brier':>7}",
    ]
    for label, c in m["per_class"].items():
        lines.append(
            f"{label:8}{c['positives']:>10}{c['annotated']:>10}{_fmt(c['auc']):>7}  "
            f"{_ci(c['auc_ci']):17}{_fmt(c['f1']):>6}{_fmt(c['threshold']):>10}"
            f"{_fmt(c['brier']):>7}"
        )
    lines += [
        f"macro AUC {_fmt(m['macro_auc'])} {_ci(m['macro_auc_ci'])} (95 % bootstrap interval, "
        f"{m['resamples']} resamples of the records)",
        f"micro AUC {_fmt(m['micro_auc'])}; macro F1 {_fmt(m['macro_f1'])}; "
        f"Brier score over every annotated label {_fmt(result['brier'])}",
    ]
    if result["unscored"]:
        lines.append(
            "not scored (left out of the macro AUC and F1): "
            + ", ".join(f"{k} ({v})" for k, v in result["unscored"].items())
        )
    if result["few_cases"]:
        lines.append(
            f"too few cases for an interval (fewer than {MIN_CASES} positives or negatives; "
            "the AUC is a rank among a handful): "
            + ", ".join(f"{k} ({v})" for k, v in result["few_cases"].items())
        )
    if result["records"] < 100:
        lines.append(f"only {result['records']} records: read the intervals, not the points")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.model)
    out = _out_dir(args.out)
    args.cache = args.cache or out / "cache"
    site = load_site(ckpt, args)
    for problem in site.cache.problems:
        print(
            f"skipped {problem['record_id']}: {problem['path']}: {problem['reason']}",
            file=sys.stderr,
        )
    result = score_site(site, args.split, ckpt)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    title = f"{args.model.name} on {args.data.name} ({args.split}, {result['records']} records)"
    plot_reliability(result["reliability"], out / "reliability.png", title)
    print(as_text(result))
    print(f"wrote {out / 'evaluation.json'} and {out / 'reliability.png'}")
    return 0
