"""How hard is the synthetic task? A small 1-D CNN on PTB-XL-like records (100 Hz, 10 s).

Trains on folds 1-7 (~1,000 records of 1,430) with the written (annotator) labels and reports
held-out macro AUC over the seed6 labels on folds 8-10, against the written and the true labels.

    .venv/bin/python benchmarks/synth_difficulty.py --difficulty default
"""

from __future__ import annotations

import argparse
import ast
import platform
import time

import numpy as np
import torch
from scipy.signal import resample_poly
from sklearn.metrics import roc_auc_score
from torch import nn

from common.labels import LabelSpace
from simulations.synth.annotation import scp_codes
from simulations.synth.network import PtbxlLikeSpec, plan_ptbxl_like, synthesize


def dataset(spec: PtbxlLikeSpec, space: LabelSpace):
    plan = plan_ptbxl_like(spec)
    x = np.stack([resample_poly(synthesize(r, spec)[0], 1, 5, axis=1) for r in plan])
    x = (x - np.median(x, axis=2, keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1e-6)

    def targets(which: str) -> np.ndarray:
        codes = [ast.literal_eval(scp_codes(getattr(r, which))) for r in plan]
        return np.stack([space.encode(c, "scp")[0] for c in codes])

    folds = np.array([r.fold for r in plan])
    return x.astype(np.float32), targets("written"), targets("truth"), folds


def small_cnn(n_labels: int) -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv1d(i, o, 7, stride=2, padding=3), nn.BatchNorm1d(o), nn.ReLU()]

    return nn.Sequential(
        *block(12, 32), *block(32, 64), *block(64, 64), *block(64, 128),
        nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, n_labels),
    )  # fmt: skip


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = small_cnn(y.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(xt)).split(64):
            loss = nn.functional.binary_cross_entropy_with_logits(model(xt[batch]), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def macro_auc(y: np.ndarray, scores: np.ndarray, labels: tuple[str, ...]) -> tuple[float, dict]:
    per = {lab: roc_auc_score(y[:, i], scores[:, i]) for i, lab in enumerate(labels)
           if 0 < y[:, i].sum() < len(y)}  # fmt: skip
    return float(np.mean(list(per.values()))), per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--difficulty", default="default")
    p.add_argument("--records", type=int, default=1430)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    space = LabelSpace.load("seed6")
    start = time.perf_counter()
    spec = PtbxlLikeSpec(n_records=args.records, difficulty=args.difficulty, seed=args.seed)
    x, written, truth, folds = dataset(spec, space)
    made = time.perf_counter() - start
    tr, te = folds <= 7, folds >= 8
    model = train(x[tr], written[tr], args.epochs, args.seed)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(x[te]))).numpy()
    auc_w, _ = macro_auc(written[te], scores, space.labels)
    auc_t, per = macro_auc(truth[te], scores, space.labels)
    print(
        f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print(
        f"difficulty {args.difficulty}: {tr.sum()} train / {te.sum()} test records, "
        f"{args.epochs} epochs, data {made:.0f} s, total {time.perf_counter() - start:.0f} s"
    )
    print(f"macro AUC  written labels {auc_w:.3f}  true labels {auc_t:.3f}")
    print("per label (true): " + "  ".join(f"{k} {v:.3f}" for k, v in per.items()))


if __name__ == "__main__":
    main()
