"""Fine-tune a (federated) model on this hospital's own data and keep the result.

The folder is prepared with the checkpoint's own pipeline, so the model sees data exactly as in
training; the new checkpoint stores per-class decision thresholds chosen on the validation split,
which ``ecgfl-hospital predict`` then uses.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path

from common.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from common.evaluation import score
from common.experiment import FinetuneSettings
from common.finetune import LAYERS, finetune_at_site
from common.labels import LabelSpace
from common.metrics import Metrics
from common.preprocess import PipelineConfig
from common.site import SiteData
from common.sources import FORMATS


def configure(p: argparse.ArgumentParser) -> None:
    defaults = FinetuneSettings()
    p.add_argument("--model", type=Path, required=True, help="checkpoint to start from")
    p.add_argument("--data", type=Path, required=True, help="folder of this site's records")
    p.add_argument("--cache", type=Path, required=True, help="folder that holds site caches")
    p.add_argument("--format", choices=FORMATS, help="data format (detected when omitted)")
    p.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL: which files to read")
    p.add_argument("--labels", help="label space to fine-tune to (default: the checkpoint's)")
    p.add_argument("--mode", choices=tuple(LAYERS), default=defaults.mode)
    p.add_argument("--k", type=int, default=defaults.k, help="last_k: body blocks that train")
    p.add_argument("--epochs", type=int, default=defaults.train.epochs)
    p.add_argument("--lr", type=float, default=defaults.train.lr)
    p.add_argument("--batch-size", type=int, default=defaults.train.batch_size)
    p.add_argument("--out", type=Path, help="new checkpoint (default: <model>-finetuned.pt)")


def load_site(ckpt: Checkpoint, args: argparse.Namespace) -> SiteData:
    """The site's folder prepared with the checkpoint's pipeline (refused if it differs)."""
    pipeline = PipelineConfig(**ckpt.pipeline_config)
    options = {"rate": args.rate} if args.rate else {}
    site = SiteData.from_folder(
        args.data.name, args.data, args.cache, pipeline, args.format, **options
    )
    ckpt.require_pipeline(site.cache.pipeline_fingerprint)
    return site


def scores_table(before: Metrics, after: Metrics) -> str:
    """Test scores side by side; '-' where a score is undefined (see the legend)."""

    def fmt(value: float | None) -> str:
        return f"{'-' if value is None else f'{value:.3f}':>7}"

    def per_class(m: Metrics, label: str, key: str) -> str:
        return fmt(m.per_class[label][key] if label in m.per_class else None)

    lines = [f"{'':12}{'before':>7}{'after':>7}"]
    for name, title in (
        ("macro_auc", "macro AUC"),
        ("micro_auc", "micro AUC"),
        ("macro_f1", "macro F1"),
    ):
        lines.append(f"{title:12}{fmt(getattr(before, name))}{fmt(getattr(after, name))}")
    lines.append(f"{'':12}{'AUC before':>14}{'after':>7}{'F1 before':>11}{'after':>7}")
    for label in dict.fromkeys(before.labels + after.labels):
        auc = per_class(before, label, "auc") + per_class(after, label, "auc")
        f1 = per_class(before, label, "f1") + per_class(after, label, "f1")
        lines.append(f"{label:12}{'':7}{auc}{'':4}{f1}")
    lines.append("- : no positives or negatives in the test split, or a label that model lacks")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.model)
    site = load_site(ckpt, args)
    old, new = ckpt.space, LabelSpace.load(args.labels) if args.labels else ckpt.space
    counts = site.counts()
    print(f"site {site.name}: {counts['train']} train, {counts['val']} val, {counts['test']} test")
    model = ckpt.build_model()
    before = score(model, site.dataset("val", old), site.dataset("test", old), old.labels)
    cfg = replace(
        FinetuneSettings().train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size
    )
    settings = FinetuneSettings(mode=args.mode, k=args.k, train=cfg)
    model, result, after = finetune_at_site(model, site, old, new, settings)
    # Without validation records no thresholds are chosen; predict then falls back to 0.5.
    thresholds = after.thresholds()
    out = args.out or args.model.with_name(f"{args.model.stem}-finetuned.pt")
    save_checkpoint(
        out,
        model,
        ckpt.model_cfg,
        new,
        ckpt.pipeline_fingerprint,
        ckpt.pipeline_config,
        **({"thresholds": thresholds} if thresholds else {}),
        finetuned_from=str(ckpt.path),
        site=site.name,
        finetune={"mode": args.mode, "k": args.k, **asdict(cfg)},
        before=before.to_dict(),
        after=after.to_dict(),
        history=result.history,
    )
    print(f"test scores ({counts['test']} records), before and after fine-tuning:")
    print(scores_table(before, after))
    print(f"saved {out}")
    return 0
