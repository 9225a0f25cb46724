"""Data pipeline: decoding source files vs reading the prepared cache, and data wait in training.

Prints records/s for (1) decoding WFDB (PTB-XL layout) and TIS-like CSV files alone, (2) decoding +
preprocessing (what every epoch would cost without a cache), (3) one epoch over the cache (memory
map) and from memory, then the share of a training epoch spent waiting for data.

    .venv/bin/python benchmarks/bench_pipeline.py --records 400
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common import preprocess, sources
from common.cache import SiteCache
from common.dataset import CachedDataset
from common.labels import LabelSpace
from common.models import build_model
from common.preprocess import PipelineConfig
from common.training import masked_bce
from simulations.synth import PtbxlLikeSpec, TisNetworkSpec, write_ptbxl_like, write_tis_network


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def decode_all(scan: sources.Scan) -> None:
    for ref in scan.refs:
        sources.read_record(ref)


def decode_and_preprocess(scan: sources.Scan, cfg: PipelineConfig) -> None:
    for ref in scan.refs:
        rec = sources.read_record(ref)
        preprocess.apply(cfg, rec.signal, rec.fs)


def cache_epoch(ds: CachedDataset, batch_size: int) -> None:
    for _ in DataLoader(ds, batch_size=batch_size, shuffle=True):
        pass


def data_wait_share(
    ds: CachedDataset, space: LabelSpace, cfg: PipelineConfig
) -> tuple[float, float]:
    """(seconds waiting for batches, epoch seconds) for one epoch of the default model."""
    model = build_model("ribeiro_resnet", n_classes=len(space), input_length=cfg.length, width=0.25)
    opt = torch.optim.Adam(model.parameters())
    wait = 0.0
    start = time.perf_counter()
    loader = iter(DataLoader(ds, batch_size=64, shuffle=True))
    while True:
        t0 = time.perf_counter()
        try:
            x, y, m = next(loader)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        loss = masked_bce(model(x), y, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wait, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PipelineConfig()
    space = LabelSpace.load("seed6")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)"
    )
    print(f"pipeline {cfg.fingerprint}: {cfg.fs:g} Hz x {cfg.length_s:g} s, {args.records} records")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_ptbxl_like(
            PtbxlLikeSpec(n_records=args.records, seed=5), tmp / "ptbxl", workers=2, progress=False
        )
        write_tis_network(
            TisNetworkSpec(n_records=args.records, n_hospitals=4, seed=5),
            tmp / "tis",
            workers=2,
            progress=False,
        )
        for name, options in (("ptbxl", {"rate": 500}), ("tis", {})):
            scan = sources.scan(tmp / name, name, **options)
            n = len(scan.refs)
            decode = timed(lambda scan=scan: decode_all(scan))
            full = timed(lambda scan=scan: decode_and_preprocess(scan, cfg))
            cache = SiteCache.prepare(
                tmp / name, tmp / "cache", cfg, name, progress=False, **options
            )
            mapped = CachedDataset(cache, space, in_memory=False)
            t_map = timed(lambda ds=mapped: cache_epoch(ds, 64))
            # What a training process does: open the cache, load its rows, run the epoch.
            t_mem = timed(
                lambda c=cache: cache_epoch(CachedDataset(SiteCache.load(c.path), space), 64)
            )
            memory = CachedDataset(cache, space)
            print(f"\n{name}: {n} records")
            print(f"  decode files only            {n / decode:9.0f} rec/s")
            print(f"  decode + preprocess          {n / full:9.0f} rec/s  (an epoch without cache)")
            print(
                f"  cache: open + load + epoch   {n / t_mem:9.0f} rec/s  "
                f"{decode / t_mem:.0f}x decoding"
            )
            print(
                f"  cache epoch from memory map  {n / t_map:9.0f} rec/s  "
                f"{decode / t_map:.0f}x decoding"
            )
            wait, epoch = data_wait_share(memory, space, cfg)
            print(
                f"  training epoch {epoch:.1f} s, waiting for data {wait:.3f} s "
                f"({100 * wait / epoch:.2f}%)"
            )


if __name__ == "__main__":
    main()
