"""The main job (``ecgfl-simulate run``, defaults) from nothing, on a quiet machine and again
while a second process keeps two threads busy with matrix products beside it.

Each run gets a fresh folder (so data are generated and caches prepared again), and the figures
are the wall time end to end and per phase (results.json's timings; data = the rest). The
target (issue 18): at most 4 min quiet, at most twice that under the load.

    python benchmarks/bench_main_job.py [--config FILE] [--only quiet|loaded]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIMULATE = Path(sys.executable).with_name("ecgfl-simulate")
#: The load: a 2-thread float32 matmul loop, as another user's job would be.
LOAD = (
    "import torch; torch.set_num_threads(2); a = torch.randn(1024, 1024)\n"
    "while True: a = torch.tanh(a @ a)"
)


def main_job(config: str | None, folder: Path) -> dict:
    """One run of the main job in ``folder``; its wall time and phases in seconds."""
    argv = [str(SIMULATE), "run", "--quiet", "--out", str(folder / "run")]
    if config:
        argv += ["--config", config]
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    timings = json.loads((folder / "run" / "results.json").read_text())["timings"]
    return {"wall_s": round(wall, 1), "data_s": round(wall - sum(timings.values()), 1), **timings}


def loaded(config: str | None, folder: Path) -> dict:
    """The main job while the load runs beside it; the load is stopped however the job ends."""
    load = subprocess.Popen([sys.executable, "-c", LOAD])
    try:
        return main_job(config, folder)
    finally:
        load.kill()
        load.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="simulation YAML (default: the built-in default)")
    p.add_argument("--only", choices=("quiet", "loaded"))
    args = p.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable), load average {os.getloadavg()[0]:.2f}"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="ecgfl-bench-") as tmp:
        for name, run in (("quiet", main_job), ("loaded", loaded)):
            if args.only in (None, name):
                results[name] = run(args.config, Path(tmp) / name)
                print(f"{name:>6}: " + ", ".join(f"{k} {v}" for k, v in results[name].items()))
    if len(results) == 2:
        ratio = results["loaded"]["wall_s"] / results["quiet"]["wall_s"]
        print(f"loaded / quiet wall time: {ratio:.2f}x (target <= 2x); quiet target <= 240 s")


if __name__ == "__main__":
    main()
