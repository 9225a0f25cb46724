"""A whole simulation, end to end: data -> virtual sites -> caches -> federation -> baselines ->
report, all in one run directory. The federation is the real app on Flower's Simulation Engine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from common import cpu, protocol
from common.cache import SiteCache
from common.errors import RunFailed
from common.labels import LabelSpace
from common.preprocess import PipelineConfig
from common.site import SiteData
from server import runs
from simulations import baselines, cluster, engine, report
from simulations.config import SimulationConfig
from simulations.partition import SourcePlan, partition, write_report
from simulations.synth import GENERATOR_FINGERPRINT
from simulations.synth.build import write_ptbxl_like, write_tis_network

log = logging.getLogger("ecgfl.simulate")
BASELINE_NAMES = {
    "local": "local-only training per site",
    "central": "centralized pooled training + fine-tuning",
}


def synthetic_source(kind: str, spec, store: Path, workers: int, progress: bool) -> Path:
    """Synthetic data is a pure function of its spec and the generator's code: build once per
    spec and generator version, reuse afterwards."""
    what = {"spec": dataclasses.asdict(spec), "generator": GENERATOR_FINGERPRINT}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    path = store / f"{kind}-{key.hexdigest()[:12]}"
    if (path / ".complete").exists():
        return path
    tmp = path.with_name(path.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = write_tis_network if kind == "tis" else write_ptbxl_like
    writer(spec, tmp, workers=workers, force=True, progress=progress)
    (tmp / ".complete").touch()
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def source_plans(cfg: SimulationConfig, store: Path, progress: bool) -> list[SourcePlan]:
    d, p = cfg.data, cfg.partition
    plans = []
    if d.tis is not None:
        path = synthetic_source("tis", d.tis, store, cfg.workers, progress)
        plans.append(SourcePlan("tis", path, p.tis_sites, "tis", None, p.annotated.get("tis")))
    ptbxl = None
    if d.ptbxl:
        ptbxl = Path(d.ptbxl)
    elif d.ptbxl_like is not None:
        ptbxl = synthetic_source("ptbxl", d.ptbxl_like, store, cfg.workers, progress)
    if ptbxl is not None:
        plans.append(
            SourcePlan(
                "ptbxl",
                ptbxl,
                p.ptbxl_sites,
                "ptbxl",
                {"rate": d.ptbxl_rate},
                p.annotated.get("ptbxl"),
            )
        )
    return plans


def prepare_caches(
    manifest: dict, plans: list[SourcePlan], pipeline: PipelineConfig, workers: int, progress: bool
) -> None:
    """Build each source's cache once and name it in the manifest (``caches``: pipeline
    fingerprint -> folder), so every virtual site opens it by path instead of re-walking the
    source folder to find it."""
    for plan in plans:
        cache = SiteCache.prepare(
            plan.data_dir,
            Path(manifest["cache_dir"]),
            pipeline,
            plan.format,
            workers=workers,
            progress=progress,
            **(plan.options or {}),
        )
        manifest["sources"][plan.name]["caches"] = {pipeline.fingerprint: str(cache.path)}


def stage(name: str) -> None:
    """A stage's start, timestamped, above any progress bar."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {name}")


def _resources(cfg: SimulationConfig, n_sites: int) -> str:
    """Flower's --federation-config: how many sites, and each one's CPUs and GPU share."""
    cpus = int(cfg.cpus_per_site) if cfg.cpus_per_site.is_integer() else cfg.cpus_per_site
    out = f"num-supernodes={n_sites} client-resources-num-cpus={cpus}"
    return out + (f" client-resources-num-gpus={cfg.gpus_per_site:g}" if cfg.gpus_per_site else "")


#: Waiting messages x sites that Flower's engine may scan per sweep (ten sweeps a second, about
#: 2 us a pair on the 2-core machine: 20 ms a sweep).
SWEEP_PAIRS = 10_000


def in_flight(cfg: SimulationConfig, n_sites: int) -> int:
    """Messages an exchange keeps in flight (server/inflight.py): as many as keep Flower's
    engine sweep within ``SWEEP_PAIRS`` (every message of a 64-site round), and never fewer
    than four times the sites this machine runs at once (at least 8), so its workers never wait
    for work.
    No limit on a Ray cluster, whose size is not known here."""
    if cfg.ray_address is not None:
        return 0
    return max(8, 4 * int(cpu.available_cores() // cfg.cpus_per_site), SWEEP_PAIRS // n_sites)


def prepared_caches(run_dir: Path) -> list[Path]:
    """The site caches the run's partition manifest names (every node must read them)."""
    manifest = json.loads((run_dir / runs.PARTITION / runs.SITES).read_text())
    return [
        Path(path)
        for source in manifest["sources"].values()
        for path in source.get("caches", {}).values()
    ]


def federate(
    cfg: SimulationConfig,
    run_dir: Path,
    n_sites: int,
    resume: bool,
    progress: bool,
    clientapp: str | None = None,
) -> None:
    """The ServerApp + one ClientApp per virtual site on the Simulation Engine (the sites'
    ClientApp: simulations/site_app.py, or ``clientapp``: an attack run's)."""
    manifest = run_dir / runs.PARTITION / runs.SITES
    run_config = runs.write_run_config(run_dir, resume, manifest, in_flight(cfg, n_sites))
    rounds = cfg.experiment.federation.rounds
    bar = tqdm(total=rounds + 1, desc="federation", unit="round", disable=not progress)

    def poll() -> None:
        entries = runs.entries(run_dir)
        done = len({e["round"] for e in entries if e["phase"] == protocol.Phase.TRAIN})
        done += any(e["phase"] == protocol.Phase.FINETUNE for e in entries)
        if done > bar.n:
            bar.update(done - bar.n)

    flwr_home = run_dir / "flwr"
    if cfg.ray_address is not None:
        cluster.require_shared(cfg.ray_address, [run_dir, *prepared_caches(run_dir)])
    app = engine.app_dir(flwr_home, clientapp or engine.SITE_APP)
    with engine.simulation_superlink(flwr_home, cfg.ray_address) as connection:
        code = engine.flwr_run(
            flwr_home,
            connection,
            app,
            run_config,
            _resources(cfg, n_sites),
            run_dir / runs.FLOWER_LOG,
            poll,
        )
    bar.close()
    summary = run_dir / runs.SUMMARY
    if code != 0 or not summary.exists():
        raise RunFailed(f"the federated run failed (flwr exit {code}); see {run_dir}/flower.log")
    stopped = json.loads(summary.read_text()).get("stopped")
    if stopped:
        raise RunFailed(f"the federation stopped: {stopped} (see {run_dir}/failures.log)")


def run(
    cfg: SimulationConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    clientapp: str | None = None,
) -> Path:
    """Run everything; returns the report's path. ``clientapp`` ("module:app") replaces the
    production ClientApp in the federation (``ecgfl-simulate attack``)."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    store = run_dir.parent / ".data"
    experiment = cfg.experiment
    space = LabelSpace.load(experiment.labels)

    stage("data")
    plans = source_plans(cfg, store, progress)
    stage("virtual sites")
    manifest, counts = partition(
        plans,
        space,
        cfg.partition.scheme,
        run_dir.parent / ".cache",
        cfg.partition.alpha,
        cfg.partition.min_size,
        cfg.partition.seed,
    )
    stage(f"{len(manifest['sites'])} sites; preparing caches")
    prepare_caches(manifest, plans, experiment.pipeline, cfg.workers, progress)
    write_report(manifest, counts, run_dir / runs.PARTITION)
    sites = [
        SiteData.from_manifest(run_dir / runs.PARTITION / runs.SITES, i, experiment.pipeline)
        for i in range(len(manifest["sites"]))
    ]
    if experiment.federation.min_sites is None:  # every virtual site takes part
        experiment.federation.min_sites = len(sites)
    runs.pin_experiment(run_dir, experiment)

    stage(f"federation: {experiment.federation.strategy}, {experiment.federation.rounds} rounds")
    started = time.perf_counter()
    federate(cfg, run_dir, len(sites), resume, progress, clientapp)
    timings = {"federation_s": round(time.perf_counter() - started, 1)}

    which = {"local"} if cfg.baselines.local_only else set()
    which |= {"central"} if cfg.baselines.centralized else set()
    done: dict[str, dict] = {}
    if which:
        stage("baselines: " + ", ".join(BASELINE_NAMES[kind] for kind in sorted(which)))
        started = time.perf_counter()
        manifest = run_dir / runs.PARTITION / runs.SITES
        names = [site.name for site in sites]
        done = baselines.run_baselines(experiment, manifest, names, which, progress)
        timings["baselines_s"] = round(time.perf_counter() - started, 1)
    local, central = done.get("local", {}), done.get("central", {})
    return report.write(run_dir, experiment, sites, local, central, timings)
