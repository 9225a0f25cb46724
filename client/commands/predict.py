"""Score ECG record files with a trained model: per-label probabilities and decisions.

Records are read by the same source readers and preprocessed by the checkpoint's own pipeline as
in training. A record longer than the pipeline's ``length_s`` is cut into windows of that length
half a window apart (the last one aligned to the record's end), each window is preprocessed like a
training record, and each label takes its maximum over windows, as in Strodthoff et al.'s PTB-XL
benchmark: an intermittent finding anywhere in a long strip still counts. A record up to
``length_s`` long is one window, zero-padded as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common import preprocess, sources
from common.checkpoint import Checkpoint, load_checkpoint
from common.metrics import DEFAULT_THRESHOLD
from common.models import ECGClassifier
from common.preprocess import PipelineConfig
from common.record import Record, RecordError
from common.sources import RecordRef, limits
from common.training import evaluate, window_starts

WFDB_SUFFIXES = ("", ".hea", ".dat", ".mat")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="checkpoint to predict with")
    p.add_argument(
        "records",
        type=Path,
        nargs="+",
        metavar="RECORD",
        help="record files: TIS-like .csv, WFDB .hea/.dat (PTB-XL) or .hea/.mat (CinC)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def read_path(path: Path) -> Record:
    """One record file, read by its source's reader; the format follows from the file names."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return sources.read_record(RecordRef(path.stem, path, "tis"))
    if suffix in WFDB_SUFFIXES:
        base = path.with_suffix("")  # the readers take a WFDB record by its name, no extension
        fmt = "cinc" if base.with_suffix(".mat").exists() else "ptbxl"
        return sources.read_record(RecordRef(base.name, base, fmt))
    raise RecordError(path.stem, path, "unsupported file type: expected .csv, .hea, .dat or .mat")


def windows(record: Record, pipeline: PipelineConfig) -> np.ndarray:
    """The record as model input, shaped (windows, 12, pipeline.length)."""
    size = int(round(pipeline.length_s * record.fs))
    n = record.signal.shape[1]
    if n <= size:
        return preprocess.apply(pipeline, record.signal, record.fs)[None]
    return np.stack(
        [
            preprocess.apply(pipeline, record.signal[:, s : s + size], record.fs)
            for s in window_starts(n, size, size // 2)
        ]
    )


def probabilities(model: ECGClassifier, x: np.ndarray) -> np.ndarray:
    """Per-label probability of one record: the maximum over its windows."""
    empty = torch.zeros(len(x), model.head.out_features)
    probs, _, _ = evaluate(model, TensorDataset(torch.from_numpy(x), empty, empty))
    return probs.max(axis=0)


def thresholds(ckpt: Checkpoint) -> tuple[np.ndarray, str]:
    """Decision thresholds in label order, and where they come from."""
    stored = ckpt.meta.get("thresholds") or {}
    values = np.array([stored.get(lab, DEFAULT_THRESHOLD) for lab in ckpt.space.labels])
    missing = [lab for lab in ckpt.space.labels if lab not in stored]
    if not missing:
        return values, "per-class thresholds stored in the checkpoint"
    if len(missing) == len(values):
        return values, f"the checkpoint stores no thresholds: {DEFAULT_THRESHOLD} for every label"
    return values, f"checkpoint thresholds; {DEFAULT_THRESHOLD} for {', '.join(missing)}"


def predict(ckpt: Checkpoint, paths: list[Path]) -> dict:
    """Every record's prediction, or its error; one bad record never stops the others."""
    pipeline = PipelineConfig(**ckpt.pipeline_config)
    ckpt.require_pipeline(pipeline.fingerprint)
    model = ckpt.build_model()
    labels = ckpt.space.labels
    cuts, source = thresholds(ckpt)
    results = []
    for path in paths:
        try:
            record = read_path(path)
            limits.check_resampling(record.record_id, path, record.fs, pipeline.fs)
            x = windows(record, pipeline)
        except RecordError as err:
            results.append({"path": str(path), "error": str(err)})
            continue
        except ValueError as err:  # preprocessing: too short to classify
            results.append({"path": str(path), "error": f"{path}: {err} - record skipped"})
            continue
        except Exception as exc:  # one record never stops the others (MemoryError included)
            results.append(
                {"path": str(path), "error": str(RecordError.unexpected(path.stem, path, exc))}
            )
            continue
        probs = probabilities(model, x)
        results.append(
            {
                "path": str(path),
                "record_id": record.record_id,
                "source": record.source,
                "fs": record.fs,
                "duration_s": round(record.duration_s, 3),
                "windows": len(x),
                "probabilities": {lab: float(p) for lab, p in zip(labels, probs, strict=True)},
                "predicted": [lab for lab, p, t in zip(labels, probs, cuts, strict=True) if p >= t],
            }
        )
    return {
        "model": str(ckpt.path),
        "labels": list(labels),
        "thresholds": dict(zip(labels, cuts.tolist(), strict=True)),
        "threshold_source": source,
        "records": results,
    }


def as_text(report: dict) -> str:
    lines = [
        f"model {report['model']}; decision thresholds: {report['threshold_source']}",
        "(+ = at or above the label's threshold)",
    ]
    for r in report["records"]:
        if "error" in r:
            lines.append(f"ERROR {r['error']}")
            continue
        found = ", ".join(r["predicted"]) or "no label"
        lines.append(
            f"{r['path']}: {found}  ({r['duration_s']:g} s at {r['fs']:g} Hz, "
            f"{r['windows']} window{'s' if r['windows'] > 1 else ''})"
        )
        lines.append(
            "   "
            + "  ".join(
                f"{lab} {p:.3f}{'+' if lab in r['predicted'] else ''}"
                for lab, p in r["probabilities"].items()
            )
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = predict(load_checkpoint(args.model), args.records)
    print(json.dumps(report, indent=1) if args.json else as_text(report))
    failed = [r for r in report["records"] if "error" in r]
    if failed:
        print(f"{len(failed)} of {len(report['records'])} record(s) failed", file=sys.stderr)
    return 1 if failed else 0
