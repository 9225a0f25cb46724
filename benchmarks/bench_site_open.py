"""How long opening a simulation's virtual sites takes: every site of a partition manifest,
as the simulation's main process and each ClientApp process do.

    python benchmarks/bench_site_open.py --records 3000 --sites 200 [--walk]

The manifest names each source's prepared cache, so a site opens it by path; ``--walk`` drops
those paths (a manifest written before they existed): every site then re-walks and stats the
source folder to find its cache, as every site did before.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common.labels import LabelSpace
from common.preprocess import PipelineConfig
from common.site import SiteData
from server import runs
from simulations.partition import SourcePlan, partition, write_report
from simulations.run import prepare_caches
from simulations.synth.build import write_tis_network
from simulations.synth.network import TisNetworkSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--walk", action="store_true", help="open caches by walking the source")
    args = parser.parse_args()
    pipeline = PipelineConfig(fs=50.0, length_s=10.0, lowpass_hz=20.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = TisNetworkSpec(n_records=args.records, n_hospitals=4, seed=0)
        write_tis_network(spec, root / "tis", workers=2, progress=False)
        plan = SourcePlan("tis", root / "tis", args.sites, "tis", None, None)
        space = LabelSpace.load("seed6")
        manifest, counts = partition([plan], space, "dirichlet", root / "cache", min_size=1)
        prepare_caches(manifest, [plan], pipeline, workers=2, progress=False)
        if args.walk:
            for source in manifest["sources"].values():
                source.pop("caches")
        write_report(manifest, counts, root / runs.PARTITION)
        path = root / runs.PARTITION / runs.SITES
        n = len(manifest["sites"])
        started = time.perf_counter()
        for i in range(n):
            SiteData.from_manifest(path, i, pipeline)
        took = time.perf_counter() - started
        how = "walking the source" if args.walk else "by cache path"
        print(
            f"{n} virtual sites of {args.records} records opened {how} in {took:.2f} s "
            f"({1000 * took / n:.1f} ms per site)"
        )


if __name__ == "__main__":
    main()
