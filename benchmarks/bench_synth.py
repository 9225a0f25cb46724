"""Generator speed: in-memory records/s on one core (10 s, 12 leads), and written records/s.

.venv/bin/python benchmarks/bench_synth.py --records 500
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace

import numpy as np

from simulations.synth import (
    PtbxlLikeSpec,
    TisNetworkSpec,
    generate_record,
    write_ptbxl_like,
    write_tis_network,
)
from simulations.synth.device import IDEAL
from simulations.synth.pathology import ABNORMAL, is_consistent


def label_mix(n: int) -> list[tuple[str, ...]]:
    """A fixed mix of normal, single and combined findings."""
    rng = np.random.default_rng(0)
    out = []
    while len(out) < n:
        labels = tuple(rng.choice(ABNORMAL, size=rng.integers(0, 3), replace=False))
        if is_consistent(labels):
            out.append(labels)
    return out


def rate(work, n: int) -> float:
    start = time.perf_counter()
    work()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=500)
    args = p.parse_args()
    n = args.records
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, numpy {np.__version__}")  # fmt: skip
    mix = label_mix(n)
    for fs in (500, 1000):
        r = rate(
            lambda fs=fs: [
                generate_record(i, mix[i], device=replace(IDEAL, fs=fs)) for i in range(n)
            ],
            n,
        )
        print(f"in memory, {fs} Hz, 1 core: {r:7.1f} records/s")
    with tempfile.TemporaryDirectory() as tmp:
        tis = TisNetworkSpec(n_records=n // 2, n_hospitals=4)
        r = rate(lambda: write_tis_network(tis, f"{tmp}/tis", progress=False), tis.n_records)
        print(f"TIS-like CSV written (500/1000 Hz), 1 core: {r:7.1f} records/s")
        ptb = PtbxlLikeSpec(n_records=n // 2)
        r = rate(lambda: write_ptbxl_like(ptb, f"{tmp}/ptbxl", progress=False), ptb.n_records)
        print(f"PTB-XL-like WFDB written (500 + 100 Hz), 1 core: {r:7.1f} records/s")


if __name__ == "__main__":
    main()
