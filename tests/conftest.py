from pathlib import Path

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Two cores: torch's default of one thread per core fights with whatever else runs (other tests,
# Ray actors) and gets many times slower. One thread per process keeps timings predictable.
torch.set_num_threads(1)


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: real ECG samples (../shared/data) absent")
    return path


@pytest.fixture(scope="session")
def ptbxl_sample() -> Path:
    return _shared("ptbxl-sample")


@pytest.fixture(scope="session")
def cinc_sample() -> Path:
    return _shared("cinc2021-sample")


@pytest.fixture
def flower_runtime(monkeypatch):
    """The identity Flower's runtime gives a ServerApp, which its Message constructor reads:
    strategies can build messages outside a run."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A slow test is never in the quick tier: ``-m "not e2e"`` replaces the default
    ``-m "not slow"``, so slow tests (the 10,000-example fuzz runs) count as e2e too. Files
    with e2e tests run first."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.e2e)
    # Two test processes take a file at a time (pyproject: -n 2 --dist loadfile): the files with
    # whole runs go first, so the minutes-long ones start at once and quick files fill the end.
    whole_runs = {item.path for item in items if item.get_closest_marker("e2e") is not None}
    items.sort(key=lambda item: item.path not in whole_runs)
