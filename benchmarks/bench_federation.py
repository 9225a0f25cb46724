"""Federation overhead, scaling with the number of sites, and communication per round.

1. overhead: a simulation of N sites x R rounds x E local epochs against the same model trained in
   one plain loop over the same sample-epochs, same machine, same run: wall-time ratio and where
   the rest goes (start-up, per-round exchanges, evaluation, fine-tuning).
2. scaling: 4, 16 and 64 virtual sites over the same total data: wall time and peak memory of
   everything the run starts (SuperLink, ServerApp, Ray and its ClientApp workers);
   sites1000: the same for 100 and 1,000 sites over 20,000 records, 10 % of them sampled;
   messages: the cost per message with a near-empty model, sites reopened per message or kept.
3. communication: bytes per site per round for each model, float32 and float16 transport, and
   the macro AUC cost of float16 measured on one simulation pair.

    .venv/bin/python benchmarks/bench_federation.py [--only overhead scaling sites1000 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from client import node
from common import protocol
from common.cache import SiteCache
from common.config import from_dict
from common.labels import LabelSpace
from common.models import build_model
from common.site import SiteData
from common.training import Trainer
from server import runs
from simulations import run as sim
from simulations.config import SimulationConfig

BASE = {
    "experiment": {
        "name": "bench",
        "model": {"name": "ribeiro_resnet", "kwargs": {"width": 0.25}},
        "local": {"epochs": 1, "batch_size": 64},
        "federation": {"strategy": "fedavg", "rounds": 5},
        "finetune": {"train": {"epochs": 1}},
    },
    "data": {"tis": {"n_records": 2400, "n_hospitals": 4, "seed": 7}, "ptbxl_like": None},
    "partition": {"scheme": "iid", "tis_sites": 4},
    "baselines": {"local_only": False, "centralized": False},
}


def config(**changes) -> SimulationConfig:
    data = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return from_dict(SimulationConfig, data, "bench")


class PeakMemory:
    """Peak summed RSS of this process and every process started since (sampled from /proc)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_of_tree(self) -> int:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        total, todo, seen = 0, [os.getpid()], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo += children.get(pid, [])
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss_of_tree())
            time.sleep(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def simulate(cfg: SimulationConfig, workdir: Path, name: str) -> tuple[Path, float, int]:
    run_dir = workdir / name
    with PeakMemory() as memory:
        started = time.perf_counter()
        sim.run(cfg, run_dir, progress=False)
        seconds = time.perf_counter() - started
    return run_dir, seconds, memory.peak


def phases(run_dir: Path) -> dict[str, float]:
    """Where a run's federation time went, from metrics.jsonl time stamps."""
    entries = runs.entries(run_dir)
    train = [e for e in entries if e["phase"] == protocol.Phase.TRAIN]
    evaluate = [e for e in entries if e["phase"] == protocol.Phase.EVALUATE]
    finetune = next(e for e in entries if e["phase"] == protocol.Phase.FINETUNE)
    started = (run_dir / runs.RUN_CONFIG).stat().st_mtime
    first = train[0]["time"] - train[0]["seconds"]
    eval_s = sum(ev["time"] - tr["time"] for tr, ev in zip(train, evaluate, strict=True))
    return {
        "start-up (SuperLink, ServerApp, Ray)": first - started,
        "train exchanges": sum(e["seconds"] for e in train),
        "evaluate exchanges": eval_s,
        "fine-tune exchange": finetune["time"] - evaluate[-1]["time"],
    }


def overhead(workdir: Path, rounds: int, epochs: int) -> None:
    cfg = config(**{"experiment.federation.rounds": rounds, "experiment.local.epochs": epochs})
    run_dir, _, _ = simulate(cfg, workdir, "overhead")
    fed_s = json.loads((run_dir / "results.json").read_text())["timings"]["federation_s"]
    manifest = run_dir / runs.PARTITION / runs.SITES
    experiment = cfg.experiment
    space = LabelSpace.load(experiment.labels)
    sites = [SiteData.from_manifest(manifest, i, experiment.pipeline) for i in range(4)]
    pooled = ConcatDataset([s.dataset("train", space) for s in sites])
    torch.manual_seed(0)
    model = experiment.model_config().build(n_classes=len(space))
    epochs = experiment.federation.rounds * experiment.local.epochs
    started = time.perf_counter()
    Trainer(replace(experiment.local, epochs=epochs), progress=False).fit(model, pooled, None)
    plain_s = time.perf_counter() - started
    parts = phases(run_dir)
    print("\n## 1. federation overhead")
    print(
        f"4 sites x {experiment.federation.rounds} rounds x {experiment.local.epochs} epoch, "
        f"{len(pooled)} training records, ribeiro_resnet width 0.25, 100 Hz x 10 s"
    )
    print(
        f"plain loop, same sample-epochs ({torch.get_num_threads()} torch threads): {plain_s:.1f} s"
    )
    print(f"federated (flwr run, whole): {fed_s:.1f} s  -> ratio {fed_s / plain_s:.2f}")
    print(
        f"federated train exchanges only: {parts['train exchanges']:.1f} s -> ratio "
        f"{parts['train exchanges'] / plain_s:.2f}"
    )
    for name, seconds in parts.items():
        print(f"  {name:40s} {seconds:7.1f} s")


def scaling(workdir: Path) -> None:
    sim.source_plans(config(), workdir / ".data", progress=False)  # generate the data untimed
    print("\n## 3. scaling over the same 2400 records (iid), 5 rounds")
    print("| sites | wall time of the run (s) | federation (s) | peak memory (GB) |")
    print("|---|---|---|---|")
    for n in (4, 16, 64):
        cfg = config(**{"partition.tis_sites": n})
        run_dir, seconds, peak = simulate(cfg, workdir, f"scale-{n}")
        fed_s = json.loads((run_dir / "results.json").read_text())["timings"]["federation_s"]
        print(f"| {n} | {seconds:.1f} | {fed_s:.1f} | {peak / 2**30:.2f} |")


def sites1000(workdir: Path, in_flight: int | None = None) -> None:
    """100 and 1,000 virtual sites over the same 20,000 records, 10 % of the sites sampled in
    every round and for the final fine-tuning, baselines off. Data and caches are prepared
    beforehand, untimed. ``in_flight``: the 1,000-site run's window instead of
    ``simulations.run.in_flight``'s."""
    sampled = {
        "data.tis.n_records": 20_000,
        "experiment.federation.fraction_train": 0.1,
        "experiment.federation.fraction_evaluate": 0.1,
        "experiment.finetune.fraction": 0.1,
    }
    cfg = config(**sampled)
    for plan in sim.source_plans(cfg, workdir / ".data", progress=False):
        SiteCache.prepare(
            plan.data_dir, workdir / ".cache", cfg.experiment.pipeline, plan.format, 2, False
        )
    print("\n## 3b. 100 and 1,000 sites over the same 20,000 records (iid), 5 rounds, 10 % sampled")
    print("| sites | wall time of the run (s) | federation (s) | peak memory (GB) | phases (s) |")
    print("|---|---|---|---|---|")
    rule = sim.in_flight
    for n in (100, 1000):
        if n == 1000 and in_flight is not None:
            sim.in_flight = lambda cfg, n_sites: in_flight
        try:
            run_dir, seconds, peak = simulate(
                config(**sampled, **{"partition.tis_sites": n}), workdir, f"sites-{n}"
            )
        finally:
            sim.in_flight = rule
        fed_s = json.loads((run_dir / "results.json").read_text())["timings"]["federation_s"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in phases(run_dir).items())
        print(f"| {n} | {seconds:.1f} | {fed_s:.1f} | {peak / 2**30:.2f} | {parts} |", flush=True)


def messages(workdir: Path) -> None:
    """Per-message cost with a near-empty model (ribeiro_resnet width 1/32, 7,903 parameters),
    64 sites x 5 rounds, in one run: as messages went before (each ClientApp process reopening
    its site for every message, ECGFL_SITE_CACHE=0, and a round's every message in flight)
    beside keeping 32 or 64 sites open per process with the in-flight window of
    ``simulations.run.in_flight``; then the same handlers called in this process on the last
    run's sites (no Flower, one thread), which splits a message's cost into the site's own work
    and Flower's path."""
    cfg = config(
        **{"partition.tis_sites": 64, "experiment.model.kwargs": {"width": 1 / 32}},
    )
    sim.source_plans(cfg, workdir / ".data", progress=False)  # generate the data untimed
    print("\n## 3c. per-message cost: 64 sites x 5 rounds, near-empty model")
    print("| messages | train + evaluate exchanges (s) | per message (ms) |")
    print("|---|---|---|")
    in_flight = sim.in_flight
    for kept, label in (
        ("0", "as before: reopened, all in flight"),
        ("32", "32 kept open"),
        ("64", "64 kept open"),
    ):
        os.environ[node.SITE_CACHE_ENV] = kept
        if kept == "0":
            sim.in_flight = lambda cfg, n_sites: 0
        try:
            run_dir, _, _ = simulate(cfg, workdir, f"messages-{kept}")
        finally:
            os.environ.pop(node.SITE_CACHE_ENV)
            sim.in_flight = in_flight
        parts = phases(run_dir)
        sent = sum(
            len(e["sites"]) + len(e["failed"])
            for e in runs.entries(run_dir)
            if e["phase"] in (protocol.Phase.TRAIN, protocol.Phase.EVALUATE)
        )
        busy = parts["train exchanges"] + parts["evaluate exchanges"]
        print(f"| {label} | {busy:.1f} | {1000 * busy / sent:.0f} |", flush=True)
    print("\nThe same handlers in this process (one thread), ms per message:")
    print("| sites | train | evaluate |\n|---|---|---|")
    for reopen in (True, False):
        train_ms, evaluate_ms = handler_ms(run_dir, reopen)
        label = "reopened per message" if reopen else "kept open"
        print(f"| {label} | {train_ms:.1f} | {evaluate_ms:.1f} |", flush=True)


def handler_ms(run_dir: Path, reopen: bool, rounds: int = 2) -> tuple[float, float]:
    """ms per train and per evaluate message of the ClientApp's own handlers (client/app.py)
    over a finished run's sites, opening each site anew per message or once."""
    from flwr.app import ArrayRecord, Context, Metadata, RecordDict
    from flwr.app.message.message import make_message

    from client import app
    from common.experiment import ExperimentConfig

    experiment = ExperimentConfig.load(run_dir / runs.EXPERIMENT)
    job = protocol.Job.for_run(experiment, "handlers")
    arrays = ArrayRecord(experiment.model_config().build(n_classes=len(job.space)).state_dict())
    manifest = run_dir / runs.PARTITION / runs.SITES
    scratch = {protocol.SITE_MANIFEST: str(manifest), protocol.RUN_DIR: str(run_dir / "handlers")}
    n_sites = len(json.loads(manifest.read_text())["sites"])
    contexts = [Context(1, i, {"partition-id": i}, RecordDict(), scratch) for i in range(n_sites)]
    kept: dict[int, SiteData] = {}

    def open_site(context: Context, exp: ExperimentConfig) -> SiteData:
        i = int(context.node_config["partition-id"])
        if reopen or i not in kept:
            kept[i] = SiteData.from_manifest(manifest, i, exp.pipeline)
        return kept[i]

    def send(kind: str, handler, rnd: int) -> float:
        record = job.to_record()
        record[protocol.SERVER_ROUND] = rnd
        started = time.perf_counter()
        for context in contexts:
            meta = Metadata(1, f"{kind}{rnd}", 0, context.node_id, "", "1", time.time(), 600, kind)
            message = make_message(meta, RecordDict({"arrays": arrays, "config": record}))
            handler(message, context, open_site)
        return (time.perf_counter() - started) / len(contexts) * 1000

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each virtual site runs (cpus_per_site 1)
    try:
        send(protocol.TRAIN, app.train, 1)  # warm: caches, the kept sites
        timed = [
            (send(protocol.TRAIN, app.train, r), send(protocol.EVALUATE, app.evaluate, r))
            for r in range(2, 2 + rounds)
        ]
    finally:
        torch.set_num_threads(threads)
    return min(t for t, _ in timed), min(e for _, e in timed)


def communication(workdir: Path) -> None:
    print("\n## 4. communication: model bytes per site per round (each way)")
    print("| model | parameters + buffers | float32 | float16 |")
    print("|---|---|---|---|")
    for name, kwargs in (
        ("ribeiro_resnet", {}),
        ("ribeiro_resnet", {"width": 0.25}),
        ("xresnet1d50", {}),
        ("inception1d", {}),
    ):
        model = build_model(name, n_classes=7, input_length=1000, **kwargs)
        floats = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
        ints = sum(
            t.numel() * t.element_size()
            for t in model.state_dict().values()
            if not t.is_floating_point()
        )
        label = name + (f" width {kwargs['width']}" if kwargs else "")
        print(
            f"| {label} | {floats:,} | {(4 * floats + ints) / 2**20:.2f} MiB | "
            f"{(2 * floats + ints) / 2**20:.2f} MiB |"
        )
    aucs = {}
    for transport in ("float32", "float16"):
        cfg = config(**{"experiment.federation.transport": transport})
        run_dir, _, _ = simulate(cfg, workdir, f"transport-{transport}")
        entries = runs.entries(run_dir)
        last = [e for e in entries if e["phase"] == protocol.Phase.EVALUATE][-1]
        train = [e for e in entries if e["phase"] == protocol.Phase.TRAIN][-1]
        up = sum(s[protocol.BYTES_UP] for s in train["sites"].values()) / len(train["sites"])
        aucs[transport] = last["aggregate"][protocol.MACRO_AUC]
        print(
            f"{transport}: measured {train[protocol.BYTES_DOWN] / 2**20:.2f} MiB down and "
            f"{up / 2**20:.2f} MiB up per site per round; final validation macro AUC "
            f"{aucs[transport]:.4f}"
        )
    print(f"float16 - float32 macro AUC: {aucs['float16'] - aucs['float32']:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("overhead", "scaling", "sites1000", "messages", "communication"),
        default=["overhead", "scaling", "communication"],
    )
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=10, help="overhead run: rounds")
    parser.add_argument("--epochs", type=int, default=2, help="overhead run: local epochs")
    parser.add_argument("--in-flight", type=int, help="sites1000: the 1,000-site run's window")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        if "overhead" in args.only:
            overhead(workdir, args.rounds, args.epochs)
        if "scaling" in args.only:
            scaling(workdir)
        if "sites1000" in args.only:
            sites1000(workdir, args.in_flight)
        if "messages" in args.only:
            messages(workdir)
        if "communication" in args.only:
            communication(workdir)


if __name__ == "__main__":
    main()
