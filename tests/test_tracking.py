"""Tracking sinks: MLflow and TensorBoard get every round's metrics, globally and per site, and a
sink that fails costs one warning, never the run."""

import logging
from pathlib import Path

import pytest
from test_simulation import entries, tiny_config

from common.experiment import ExperimentConfig, TrackingSettings
from server import tracking
from server.rounds import MetricsLog
from simulations import run as sim

pytest.importorskip("mlflow", reason="the [tracking] extra is not installed")
pytest.importorskip("tensorboard", reason="the [tracking] extra is not installed")
SITES = ("H1", "H2")


def write_rounds(log: MetricsLog, rounds: int) -> None:
    for rnd in range(1, rounds + 1):
        sites = {
            s: {"train-loss": rnd + i / 10, "positives": [1.0, 2.0]} for i, s in enumerate(SITES)
        }
        log.write(
            {
                "round": rnd,
                "phase": "train",
                "sites": sites,
                "failed": [],
                "aggregate": {"train-loss": rnd + 0.05},
                "privacy": {"epsilon": rnd / 2},
            }
        )
        sites = {s: {"macro-auc": 0.5 + rnd / 10, "val-loss": float("nan")} for s in SITES}
        log.write(
            {
                "round": rnd,
                "phase": "evaluate",
                "sites": sites,
                "failed": [{"site": "H3", "reason": "no reply within 600 s"}],
                "aggregate": {"macro-auc": 0.5 + rnd / 10},
            }
        )


def finished_run(tmp_path: Path, **sinks) -> tuple[Path, ExperimentConfig]:
    run_dir = tmp_path / "runs" / "study-1"
    (run_dir / "checkpoints").mkdir(parents=True)
    experiment = ExperimentConfig(name="study", tracking=TrackingSettings(**sinks))
    tracker = tracking.Tracker(experiment, run_dir)
    write_rounds(MetricsLog(run_dir / "metrics.jsonl", tracker.entry), 3)
    (run_dir / "report.md").write_text("# Federated run study-1\n")
    (run_dir / "global_model.pt").write_bytes(b"weights")
    tracker.finish(run_dir)
    return run_dir, experiment


@pytest.mark.e2e  # MLflow's store takes seconds to create
def test_mlflow_gets_params_every_round_per_site_the_report_and_the_model(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, _ = finished_run(tmp_path, mlflow="mlruns")
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.info.run_name == "study-1" and run.info.status == "FINISHED"
    assert run.data.params["federation.rounds"] == "3"

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert history("train/train-loss") == [(1, 1.05), (2, 2.05), (3, 3.05)]
    assert history("train/H2/train-loss") == [(1, 1.1), (2, 2.1), (3, 3.1)]
    assert [s for s, _ in history("evaluate/H1/macro-auc")] == [1, 2, 3]
    assert history("privacy/epsilon") == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert history("evaluate/failed-sites") == [(1, 1.0), (2, 1.0), (3, 1.0)]
    assert "evaluate/H1/val-loss" not in run.data.metrics  # NaN: undefined, left out
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    files |= {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"report.md", "model/global_model.pt"} <= files


@pytest.mark.e2e  # MLflow's store takes seconds to create
def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, experiment = finished_run(tmp_path, mlflow="mlruns")
    tracker = tracking.Tracker(experiment, run_dir)  # the ServerApp again, with --resume
    MetricsLog(run_dir / "metrics.jsonl", tracker.entry).write(
        {"round": 4, "phase": "train", "sites": {}, "failed": [], "aggregate": {"train-loss": 0.5}}
    )
    tracker.finish(run_dir)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/train-loss")]
    assert sorted(steps) == [1, 2, 3, 4] and run.info.status == "FINISHED"


def test_tensorboard_event_files_hold_a_scalar_per_round_and_site(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    finished_run(tmp_path, tensorboard="tensorboard")
    events = EventAccumulator(str(tmp_path / "runs" / "tensorboard" / "study-1")).Reload()
    for key in ("train/train-loss", "train/H1/train-loss", "evaluate/H2/macro-auc"):
        assert [e.step for e in events.Scalars(key)] == [1, 2, 3], key
    assert [round(e.value, 3) for e in events.Scalars("train/H1/train-loss")] == [1, 2, 3]


def test_a_failing_sink_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    def broken(self, entry):
        raise OSError("disk full")

    monkeypatch.setattr(tracking.TensorBoardSink, "entry", broken)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "blocked").write_text("a file where the MLflow folder would go")
    with caplog.at_level(logging.WARNING, logger="ecgfl.server"):
        run_dir, _ = finished_run(tmp_path, mlflow="blocked/store", tensorboard="tensorboard")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "mlflow is off" in warnings[0] and "tensorboard is off" in warnings[1]
    assert "disk full" in warnings[1]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6  # every entry written


def test_an_unreachable_mlflow_server_is_given_up_with_one_warning(tmp_path, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    experiment = ExperimentConfig(tracking=TrackingSettings(mlflow=f"http://127.0.0.1:{port}"))
    with caplog.at_level(logging.WARNING, logger="ecgfl.server"):
        tracker = tracking.Tracker(experiment, tmp_path / "runs" / "r")
    assert tracker.sinks == []
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "ecgfl.server"]
    assert "mlflow is off" in warning and str(port) in warning


def test_no_tracking_is_the_default(tmp_path):
    assert tracking.Tracker(ExperimentConfig(), tmp_path).sinks == []


@pytest.mark.e2e
def test_a_simulation_logs_every_round_and_its_model_to_mlflow_and_tensorboard(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(rounds=2)
    cfg.experiment.tracking = TrackingSettings(mlflow="mlruns", tensorboard="tensorboard")
    cfg.baselines.local_only = cfg.baselines.centralized = False
    sim.run(cfg, tmp_path / "runs" / "tracked", progress=False)
    sites = {s for e in entries(tmp_path / "runs" / "tracked") for s in e.get("sites", {})}
    assert len(sites) == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("train/train-loss", "evaluate/val-loss", *(f"train/{s}/train-loss" for s in sites)):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2], key
    model = client.list_artifacts(run.info.run_id, "model")
    assert [f.path for f in model] == ["model/global_model.pt"]
    events = EventAccumulator(str(tmp_path / "runs" / "tensorboard" / "tracked")).Reload()
    for site in sites:
        assert [e.step for e in events.Scalars(f"evaluate/{site}/macro-auc")] == [1, 2]
