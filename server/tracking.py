"""Experiment tracking in the tools researchers already use: when the experiment asks
(``tracking: {mlflow: ..., tensorboard: ...}``), the run's parameters, every metrics.jsonl entry
(aggregate and per site), the report and the final model also go to MLflow and/or TensorBoard.

Optional (``pip install -e '.[tracking]'``) and off by default. A sink that fails, or is not
installed, is dropped with one warning: the run never depends on it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path

from common import protocol
from common.experiment import ExperimentConfig
from server import runs

log = logging.getLogger("ecgfl.server")
MLFLOW_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
# MLflow retries an unreachable server for minutes by default (7 retries, backoff 2, 120 s
# timeout); a run waiting on a sink that is down is what tracking must never cause. Set in the
# ServerApp's process only, and only where the operator has not set them.
MLFLOW_PATIENCE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``federation.rounds: 3``."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def scalars(entry: dict) -> dict[str, float]:
    """A metrics.jsonl entry's numbers: ``phase/metric`` aggregated, ``phase/site/metric`` per
    site, ``privacy/epsilon``. Lists (per-label counts) and undefined scores are left out."""

    def numbers(prefix: str, metrics: object) -> dict[str, float]:
        if not isinstance(metrics, dict):
            return {}
        return {
            _name(f"{prefix}/{k}"): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }

    phase = str(entry.get("phase"))
    out = numbers(phase, entry.get("aggregate"))
    for site, metrics in (entry.get("sites") or {}).items():
        out.update(numbers(f"{phase}/{site}", metrics))
    privacy = entry.get("privacy")
    if isinstance(privacy, dict):
        out.update(numbers("privacy", {"epsilon": privacy.get("epsilon")}))
    if phase in (protocol.Phase.TRAIN, protocol.Phase.EVALUATE):
        out[f"{phase}/failed-sites"] = float(len(entry.get("failed") or []))
    return out


def local_folder(where: str, run_dir: Path) -> Path | None:
    """A tracking target without a URI scheme is a folder, relative to the runs folder."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", where) or where.startswith("databricks"):
        return None
    return (run_dir.parent / where).resolve()


class MlflowSink:
    """One MLflow run per run folder, in the experiment named like the ecgfl experiment."""

    name = "mlflow"

    def __init__(self, where: str, experiment: ExperimentConfig, run_dir: Path) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for key, value in MLFLOW_PATIENCE.items():
            os.environ.setdefault(key, value)
        folder = local_folder(where, run_dir)
        artifacts = None
        if folder is not None:  # MLflow 3's own local default: a SQLite file, artifacts beside
            folder.mkdir(parents=True, exist_ok=True)
            where, artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
        self.client = MlflowClient(where)
        found = self.client.get_experiment_by_name(experiment.name)
        exp_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment.name, artifact_location=artifacts)
        )
        tag = f"tags.`ecgfl.run_dir` = '{run_dir}'"
        resumed = self.client.search_runs([exp_id], filter_string=tag, max_results=1)
        if resumed:  # a resumed run goes on in the same MLflow run
            self.run_id = resumed[0].info.run_id
            self.client.update_run(self.run_id, "RUNNING")
            return
        tags = {"ecgfl.run_dir": str(run_dir)}
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name, tags=tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(experiment.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params per call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def entry(self, entry: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * float(entry.get("time", time.time())))
        step = int(entry.get("round", 0))
        metrics = [Metric(k, v, stamp, step) for k, v in scalars(entry).items()]
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MLFLOW_BATCH])

    def finish(self, run_dir: Path, status: str) -> None:
        for name, folder in ((runs.REPORT, None), (runs.GLOBAL_MODEL, "model")):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name), folder)
        self.client.set_terminated(self.run_id, status)


class TensorBoardSink:
    """Event files in ``<folder>/<run name>``: one scalar series per metric and site."""

    name = "tensorboard"

    def __init__(self, where: str, experiment: ExperimentConfig, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = local_folder(where, run_dir) or Path(where)
        self.writer = SummaryWriter(str(folder / run_dir.name))
        settings = "\n".join(f"    {k}: {v}" for k, v in flatten(experiment.to_dict()).items())
        self.writer.add_text("experiment", settings)

    def entry(self, entry: dict) -> None:
        step = int(entry.get("round", 0))
        for key, value in scalars(entry).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, run_dir: Path, status: str) -> None:
        if (run_dir / runs.REPORT).is_file():
            self.writer.add_text("report", (run_dir / runs.REPORT).read_text())
        self.writer.close()


class Tracker:
    """The experiment's sinks; each call goes to every sink still working."""

    def __init__(self, experiment: ExperimentConfig, run_dir: Path) -> None:
        self.sinks: list = []
        wanted = experiment.tracking
        for cls, where in ((MlflowSink, wanted.mlflow), (TensorBoardSink, wanted.tensorboard)):
            if where:

                def start(cls=cls, where=where) -> None:
                    self.sinks.append(cls(where, experiment, run_dir))

                self._call(cls.name, start)

    def _call(self, name: str, action) -> bool:
        try:
            action()
            return True
        except Exception as exc:  # any failure of a sink: the run goes on without it
            log.warning("tracking: %s is off for the rest of this run: %s", name, exc)
            return False

    def entry(self, entry: dict) -> None:
        self.sinks = [s for s in self.sinks if self._call(s.name, lambda s=s: s.entry(entry))]

    def finish(self, run_dir: Path, stopped: bool = False) -> None:
        status = "FAILED" if stopped else "FINISHED"
        self.sinks = [
            s for s in self.sinks if self._call(s.name, lambda s=s: s.finish(run_dir, status))
        ]
