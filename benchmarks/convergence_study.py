"""Which federated training closes the gap to pooled training at equal sample-epochs (issue 15)?

Each candidate is the default scenario (simulations/configs/default.yaml: 9 heterogeneous sites,
6 passes over every site's data) with one thing changed, run with ``--seeds`` (mean ± std over
seeds of the per-site mean macro AUC). The reference (plain FedAvg) also runs the centralized
baseline: the same 6 passes over the pooled data, then the same fine-tuning. The data and caches
are generated once and shared by every candidate (they are keyed by their spec). Under fedbn the
"global" column is the final global model with each site's own BatchNorm (the coordinator's
never trains), its fine-tune the same full fine-tune from there.

    .venv/bin/python benchmarks/convergence_study.py [--seeds 0 1 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

SIMULATE = Path(sys.executable).with_name("ecgfl-simulate")
DEFAULT = Path(__file__).resolve().parents[1] / "simulations" / "configs" / "default.yaml"
FEDERATION_ONLY = {"baselines": {"local_only": False, "centralized": False}}

#: name -> (what changes, the override of default.yaml)
CANDIDATES: dict[str, tuple[str, dict]] = {
    "fedavg": (
        "FedAvg, BatchNorm averaged (the default), + the pooled baseline",
        {"baselines": {"local_only": False, "centralized": True}},
    ),
    "fedadam-groupnorm": (
        "FedAdam (server lr 0.01) with GroupNorm",
        {
            "experiment": {
                "model": {"norm": "group"},
                "federation": {"strategy": "fedadam", "server_lr": 0.01},
            },
            **FEDERATION_ONLY,
        },
    ),
    "fedavg-groupnorm": (
        "FedAvg with GroupNorm (FedAdam's normalisation, FedAvg's server)",
        {"experiment": {"model": {"norm": "group"}}, **FEDERATION_ONLY},
    ),
    "fedprox-2epochs": (
        "FedProx (mu 0.01), 2 local epochs x 3 rounds (same 6 passes)",
        {
            "experiment": {
                "local": {"epochs": 2},
                "federation": {"strategy": "fedprox", "proximal_mu": 0.01, "rounds": 3},
            },
            **FEDERATION_ONLY,
        },
    ),
    "fedavg-round-cosine": (
        "FedAvg, the local learning rate decayed along a cosine over the rounds",
        {"experiment": {"federation": {"round_lr": "cosine"}}, **FEDERATION_ONLY},
    ),
    "fedavg-cosine": (
        "FedAvg, cosine learning-rate decay within each round's local training",
        {"experiment": {"local": {"scheduler": "cosine"}}, **FEDERATION_ONLY},
    ),
    "fedbn": (
        "FedBN: each site keeps its BatchNorm layers, the rest is averaged (finetune.mode fedbn)",
        {"experiment": {"finetune": {"mode": "fedbn"}}, **FEDERATION_ONLY},
    ),
    "fedavg-batch16": (
        "FedAvg, local batch 16 instead of 64: 4x the local steps in the same passes",
        {"experiment": {"local": {"batch_size": 16}}, **FEDERATION_ONLY},
    ),
    "fedavg-batch16-server-lr-1.5": (
        "FedAvg past the average: server lr 1.5, no momentum (FedAvgM's update), local batch 16",
        {
            "experiment": {
                "local": {"batch_size": 16},
                "federation": {"strategy": "fedavgm", "server_momentum": 0.0, "server_lr": 1.5},
            },
            **FEDERATION_ONLY,
        },
    ),
    "fedexp": (
        "FedExP: FedAvg stepping past the average by the round's own update disagreement",
        {"experiment": {"federation": {"strategy": "fedexp"}}, **FEDERATION_ONLY},
    ),
    "fedavg-batch8": (
        "FedAvg, local batch 8: 8x the local steps in the same passes",
        {"experiment": {"local": {"batch_size": 8}}, **FEDERATION_ONLY},
    ),
    "fedavgm-batch16": (
        "FedAvgM (server momentum 0.9, server lr 1.0) with local batch 16",
        {
            "experiment": {
                "local": {"batch_size": 16},
                "federation": {"strategy": "fedavgm", "server_momentum": 0.9, "server_lr": 1.0},
            },
            **FEDERATION_ONLY,
        },
    ),
    "fedavgm": (
        "FedAvgM (server momentum 0.9, server lr 1.0), BatchNorm statistics averaged with momentum",
        {
            "experiment": {
                "federation": {"strategy": "fedavgm", "server_momentum": 0.9, "server_lr": 1.0}
            },
            **FEDERATION_ONLY,
        },
    ),
}


def run(name: str, override: dict, seeds: list[str], out: Path) -> dict:
    """One candidate over the seeds; its combined results.json."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for shared in (".data", ".cache"):  # one generation and preparation for all candidates
        (out / shared).mkdir(exist_ok=True)
        if not (folder / shared).exists():
            (folder / shared).symlink_to(out / shared)
    config = folder / "study.yaml"
    config.write_text(yaml.safe_dump({"base": str(DEFAULT), **override}, sort_keys=False))
    argv = [str(SIMULATE), "run", "--quiet", "--config", str(config), "--out", str(folder)]
    subprocess.run([*argv, "--seeds", *seeds], check=True, stdout=subprocess.DEVNULL)
    return json.loads((folder / "results.json").read_text())


def cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["std"] is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES))
    p.add_argument("--out", type=Path, default=Path("runs/convergence-study"))
    args = p.parse_args()
    print("| candidate | global | global + fine-tune | centralized + fine-tune | wall (s) |")
    print("|---|---|---|---|---|")
    for name in args.only or CANDIDATES:
        what, override = CANDIDATES[name]
        started = time.perf_counter()
        columns = run(name, override, args.seeds, args.out.resolve())["columns"]
        cells = [cell(columns[key]["auc"]) for key in ("before", "after", "central")]
        wall = time.perf_counter() - started
        print(f"| {name}: {what} | {' | '.join(cells)} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
