"""A coordinator's run folders as an operator reads them: which runs exist, how far each got,
which sites answered or failed per round, and where the report is.

The ServerApp records each Flower run id it ran under in ``flower_runs.json`` (a resumed run
gets a new one), so a folder can be matched with what the SuperLink says about its runs.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w
import yaml

from common import protocol
from common.config import ConfigError
from server import metricslog, sitesummary

if TYPE_CHECKING:  # torch: only where an experiment is run
    from common.experiment import ExperimentConfig

# The files of a run folder (docs/architecture.md#the-run-folder), named here only.
EXPERIMENT = "experiment.yaml"  # the pinned experiment the ServerApp runs
RUN_CONFIG = "run_config.toml"  # what ``flwr run --run-config`` hands the apps
SITES = "sites.json"  # deployment: Flower node id -> hospital; simulation: PARTITION/SITES
PARTITION = "partition"  # simulation: the virtual sites' manifest and partition report
PARTITION_CSV = f"{PARTITION}/partition.csv"  # simulation: records and positives per site, split
PARTITION_JSON = f"{PARTITION}/partition.json"  # simulation: the same summed over the splits
METRICS = "metrics.jsonl"  # one line per phase of a round (server.metricslog.MetricsLog)
SITE_METRICS = metricslog.SITE_METRICS  # one line per site per round and phase (server.metricslog)
SUMMARY = "summary.json"  # written when the run ends
SITES_CSV = "sites.csv"  # simulation: every site's scores as a flat table (simulations/report.py)
REPORT = "report.md"
ROUNDS_PLOT = "rounds.png"
FAILURES = "failures.log"  # each failure's full reason
CHECKPOINTS = "checkpoints"  # one per round: resume
GLOBAL_MODEL = "global_model.pt"  # the latest global model as a checkpoint any tool opens
FLOWER_RUNS = "flower_runs.json"  # the Flower run ids this folder ran under
FLOWER_LOG = "flower.log"  # flwr run's output


def pin_experiment(run_dir: Path, experiment: ExperimentConfig) -> Path:
    """``experiment.yaml``: the settings the run runs with, pinned in its folder (a resumed run
    reads them back, whatever its original file says now). One writer for both paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / EXPERIMENT
    path.write_text(yaml.safe_dump(experiment.to_dict(), sort_keys=False))
    return path


def write_run_config(
    run_dir: Path, resume: bool, site_manifest: Path | None = None, max_in_flight: int = 0
) -> Path:
    """``run_config.toml``: what ``flwr run --run-config`` hands the ServerApp and ClientApps
    (one writer for simulations and deployments; TOML escaping by tomli_w). ``max_in_flight``:
    a simulation's messages in flight per exchange (server/inflight.py); 0 = all at once."""
    values = {
        protocol.RUN_DIR: str(run_dir),
        protocol.EXPERIMENT_FILE: str(run_dir / EXPERIMENT),
        protocol.RESUME: resume,
        protocol.MAX_IN_FLIGHT: max_in_flight,
    }
    if site_manifest is not None:
        values[protocol.SITE_MANIFEST] = str(site_manifest)
    path = run_dir / RUN_CONFIG
    path.write_text(tomli_w.dumps(values))
    return path


def record_flower_run(run_dir: Path, run_id: int) -> None:
    """Remember that this folder's run now runs as Flower run ``run_id``."""
    ids = flower_run_ids(run_dir)
    if run_id not in ids:
        (run_dir / FLOWER_RUNS).write_text(json.dumps([*ids, run_id]))


def flower_run_ids(run_dir: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(i) for i in json.loads((run_dir / FLOWER_RUNS).read_text())]
    return []


def entries(run_dir: Path) -> list[dict]:
    """metrics.jsonl's entries, with their sites' metrics from site_metrics.jsonl, of the shape
    MetricsLog writes: a line being written, or one that is malformed, is left out, so nothing
    built from them fails on it."""
    found = [_entry_shape(e) for e in metricslog.read_entries(run_dir / METRICS)]
    return [e for e in found if e is not None]


def progress_line(entry: dict) -> str:
    """One metrics.jsonl entry as the console shows it: the phase and the sites by name; above
    ``SUMMARY_ABOVE`` sites, how many answered and the first ``SHOWN`` failures (a round of
    1,000 sites would be a line of 1,000 names)."""
    if entry.get("phase") == protocol.Phase.STOPPED:
        return f"[ecgfl] round {entry['round']}: the run stopped: {entry.get('reason', '')}"
    names, failures = sorted(entry.get("sites", {})), entry.get("failed", [])
    head = f"[ecgfl] round {entry['round']} {entry['phase']}: "
    if not sitesummary.summarised(len(names) + len(failures)):
        failed = ", ".join(f"{f['site']} ({f['reason']})" for f in failures)
        return head + (", ".join(names) or "no site") + (f"; failed: {failed}" if failed else "")
    shown = ", ".join(f"{f['site']} ({f['reason']})" for f in failures[: sitesummary.SHOWN])
    more = len(failures) - sitesummary.SHOWN
    shown += f" and {more} more (all reasons: {FAILURES})" if more > 0 else ""
    return head + f"{len(names)} sites" + (f"; {len(failures)} failed: {shown}" if shown else "")


@dataclass
class RunFolder:
    """What one run folder says about its run."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rounds(self) -> int | None:
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
            data = yaml.safe_load((self.path / EXPERIMENT).read_text())
            return int(data["federation"]["rounds"])
        return None

    def state(self, flower_status: dict[int, str]) -> str:
        """finished / stopped / what the SuperLink says of its latest Flower run / interrupted."""
        summary = self.path / SUMMARY
        if summary.exists():
            with contextlib.suppress(OSError, ValueError):
                return "stopped" if json.loads(summary.read_text()).get("stopped") else "finished"
        ids = flower_run_ids(self.path)
        status = flower_status.get(ids[-1]) if ids else None
        if status and not status.startswith("finished"):
            return status  # pending, starting, running
        return "interrupted (resume with ecgfl-coordinator run --resume)"

    def done(self) -> int:
        """Completed pretraining rounds (their evaluation may be pending)."""
        return max(
            (e["round"] for e in entries(self.path) if e.get("phase") == protocol.Phase.TRAIN),
            default=0,
        )

    def progress(self) -> list[str]:
        """One line per round and phase so far: the sites that answered and those that failed."""
        return [progress_line(e) for e in entries(self.path)]

    def ending(self) -> list[str]:
        """Where the report and the full failure reasons are, once they exist."""
        out = []
        if (self.path / SUMMARY).exists():
            out.append(f"report: {self.path / 'report.md'}")
        if (self.path / FAILURES).exists():
            out.append(f"full failure reasons: {self.path / 'failures.log'}")
        return out


def run_folders(runs_dir: Path) -> list[RunFolder]:
    """Every run folder under ``runs_dir``, oldest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir() if (p / EXPERIMENT).is_file()]
    return [RunFolder(p) for p in sorted(found, key=lambda p: p.stat().st_mtime)]


def find_run(runs_dir: Path, run: str) -> RunFolder:
    """A run by folder name (under ``runs_dir``), by path, or by a Flower run id."""
    for candidate in (runs_dir / run, Path(run)):
        if (candidate / EXPERIMENT).is_file():
            return RunFolder(candidate)
    if run.isdigit():
        for folder in run_folders(runs_dir):
            if int(run) in flower_run_ids(folder.path):
                return folder
    known = ", ".join(f.name for f in run_folders(runs_dir)) or "none yet"
    raise ConfigError(f"no run {run!r} in {runs_dir} (runs: {known})")


def last_seen(folders: list[RunFolder]) -> dict[str, str]:
    """Site -> the newest run and round it answered in (or failed), as ``run round N``."""
    seen: dict[str, str] = {}
    for folder in folders:  # oldest first: newer runs overwrite
        note_seen(seen, folder.name, entries(folder.path))
    return seen


def note_seen(seen: dict[str, str], run: str, run_entries: list[dict]) -> None:
    """Update ``seen`` (site -> where) with one run's well-formed entries."""
    for e in run_entries:
        where = f"{run} round {e['round']} {e['phase']}"
        for site in e.get("sites", {}):
            seen[site] = where
        for f in e.get("failed", []):
            seen[f["site"]] = f"{where} (failed)"


def _entry_shape(e: object) -> dict | None:
    """``e`` if it has the shape MetricsLog writes (a hand-edited or foreign line may not)."""
    if not isinstance(e, dict) or not isinstance(e.get("round"), int):
        return None
    if not isinstance(e.get("phase"), str):
        return None
    sites = e.get("sites", {})
    failed = e.get("failed", [])
    if not isinstance(sites, dict) or not all(isinstance(m, dict) for m in sites.values()):
        return None
    if not isinstance(failed, list) or not all(
        isinstance(f, dict) and isinstance(f.get("site"), str) for f in failed
    ):
        return None
    aggregate = e.get("aggregate")
    return {
        **e,
        "sites": sites,
        "failed": [{**f, "reason": str(f.get("reason", ""))} for f in failed],
        "aggregate": aggregate if isinstance(aggregate, dict) else None,
    }


def partition_counts(run_dir: Path) -> dict[str, dict[str, int]]:
    """A simulation's sites -> label -> records (``partition/partition.json``); {} when absent."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # AttributeError: no dicts
        data = json.loads((run_dir / PARTITION_JSON).read_text())
        counts = [n for v in data.values() for n in v.values()]
        if all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            return data
    return {}


def last_update(run_dir: Path) -> float | None:
    """When the run last wrote its metrics or summary (a Unix time), None before either."""
    times = [
        (run_dir / name).stat().st_mtime for name in (METRICS, SUMMARY) if (run_dir / name).exists()
    ]
    return max(times, default=None)
