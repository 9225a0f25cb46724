"""A PTB-XL-sized dataset from nothing: writing the synthetic PTB-XL-like set (21,837 records, the
real folder layout) and preparing its cache (decode + preprocess into the memory-mapped cache a
site trains from), each with 1 and 2 worker processes: records/s and the peak memory of the whole
process tree (issue 14: memory must stay bounded, never the whole set in RAM).

    .venv/bin/python benchmarks/bench_prepare.py [--records 21837] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_federation import PeakMemory

from common.cache import SiteCache
from common.preprocess import PipelineConfig
from simulations.synth import PtbxlLikeSpec, write_ptbxl_like


def measured(work, *args, **kwargs) -> tuple[float, float]:
    """(seconds, peak GB of this process and its children) of ``work(*args, **kwargs)``."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        work(*args, **kwargs)
        seconds = time.perf_counter() - started
    return seconds, memory.peak / 1e9


def row(step: str, workers: int, records: int, seconds: float, peak: float) -> str:
    return f"| {step} | {workers} | {seconds:.1f} | {records / seconds:.0f} | {peak:.2f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=21_837)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.records} records")
    print("| step | workers | seconds | records/s | peak memory (GB) |\n|---|---|---|---|---|")
    spec = PtbxlLikeSpec(n_records=args.records, n_sites=3, seed=7)
    with tempfile.TemporaryDirectory(prefix="ecgfl-prepare-") as tmp:
        for workers in args.workers:
            data, cache = Path(tmp) / f"ptbxl-{workers}", Path(tmp) / f"cache-{workers}"
            options = {"workers": workers, "progress": False}
            seconds, peak = measured(write_ptbxl_like, spec, data, **options)
            print(row("write PTB-XL-like (500 + 100 Hz)", workers, args.records, seconds, peak))
            seconds, peak = measured(
                SiteCache.prepare, data, cache, PipelineConfig(), "ptbxl", **options
            )
            print(row("prepare its cache (100 Hz x 10 s)", workers, args.records, seconds, peak))


if __name__ == "__main__":
    main()
