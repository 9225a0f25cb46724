"""The secure deployment end to end on loopback: one coordinator (SuperLink with TLS and node
authentication) and three hospital daemons, each with its own tiny synthetic data.

Every process a test starts is stopped by process group at teardown, and so is everything they
started in sessions of their own (Flower's SuperExec), also when a test fails.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common.flower_process import APP_DIR
from server import coordinator, front_door, runs
from server.coordinator import CoordinatorConfig
from server.provision import provision
from simulations.synth.build import write_tis_network
from simulations.synth.network import TisNetworkSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not front_door.DEBIAN_NGINX.is_file(),
        reason=f"the coordinator's front door needs nginx ({front_door.INSTALL_HINT})",
    ),
]
BIN = Path(sys.executable).parent
SITES = ("H1", "H2", "H3")
EXPERIMENT = {
    "name": "tiny",
    "model": {"name": "ribeiro_resnet", "kwargs": {"width": 0.125}},
    "pipeline": {"fs": 50.0, "length_s": 10.0, "lowpass_hz": 20.0},
    "local": {"epochs": 1, "batch_size": 32},
    "federation": {"strategy": "fedavg", "rounds": 2, "round_timeout_s": 240, "min_sites": 3},
    "finetune": {"mode": "full", "train": {"epochs": 1, "batch_size": 16}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (Flower detaches some into new sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class Processes:
    """What a test started; ``stop_all`` ends each by process group, then any stragglers."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.popen: list[subprocess.Popen] = []

    def start(self, command: list[str], log: Path, **kwargs) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                **kwargs,
            )
        self.adopt(proc.pid)
        self.popen.append(proc)
        return proc

    def adopt(self, pid: int) -> None:
        self.started.append(pid)

    def kill(self, pid: int, sig: int) -> None:
        for p in {pid} | descendants(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(p), sig)

    def stop_all(self) -> None:
        everything = set(self.started)
        for pid in self.started:
            everything |= descendants(pid)
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in everything):
            for proc in self.popen:
                proc.poll()
            time.sleep(0.2)
        for pid in everything:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.popen:
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what: str, check, limit_s: float, every_s: float = 1.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}")


def online(cfg: CoordinatorConfig) -> int:
    code, out = coordinator.flwr(
        cfg, "supernode", "list", coordinator.CONNECTION, "--format", "json"
    )
    if code != 0:
        return 0
    return sum(n["status"] == "online" for n in json.loads(out)["nodes"])


class Federation:
    """A provisioned federation in a temporary folder and the processes running it."""

    def __init__(self, root: Path, procs: Processes) -> None:
        self.root, self.procs = root, procs
        port = free_port()
        provision(root, list(SITES), ["localhost"], f"localhost:{port}", listen="127.0.0.1")
        self.config_path = root / "coordinator" / "coordinator.yaml"
        self.cfg = CoordinatorConfig.load(self.config_path)
        self.daemons: dict[str, subprocess.Popen] = {}
        for i, site in enumerate(SITES):
            data = root / "data" / site
            write_tis_network(
                TisNetworkSpec(n_records=40, n_hospitals=1, seed=i), data, progress=False
            )
            self.configure_hospital(root / "hospitals" / site, data)

    def configure_hospital(self, bundle: Path, data: Path) -> None:
        """What the hospital's IT does with its bundle: point it at the data."""
        path = bundle / "hospital.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg.update(data_dir=str(data), runtime_port=free_port(), pipeline=EXPERIMENT["pipeline"])
        path.write_text(yaml.safe_dump(cfg))

    def start_coordinator(self) -> None:
        done = subprocess.run(
            [BIN / "ecgfl-coordinator", "start", "--config", self.config_path, "--detach"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if pid := coordinator.running_pid(self.cfg):
            self.procs.adopt(pid)
        assert done.returncode == 0, done.stderr

    def stop_coordinator(self) -> None:
        command = [BIN / "ecgfl-coordinator", "stop", "--config", self.config_path]
        assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0

    def start_hospital(self, site: str, bundle: Path | None = None) -> subprocess.Popen:
        bundle = bundle or self.root / "hospitals" / site
        command = [BIN / "ecgfl-hospital", "start", "--config", bundle / "hospital.yaml"]
        self.daemons[site] = self.procs.start(command, bundle / "daemon.out", cwd=bundle)
        return self.daemons[site]

    def submit(self, *args: str | Path) -> subprocess.Popen:
        command = [BIN / "ecgfl-coordinator", "run", "--coordinator", self.config_path, *args]
        return self.procs.start(command, self.root / "run.out")

    def experiment(self, name: str, **federation) -> Path:
        data = json.loads(json.dumps(EXPERIMENT))
        data["federation"].update(federation)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def metrics(run_dir: Path) -> list[dict]:
    return runs.entries(run_dir)  # metrics.jsonl with site_metrics.jsonl


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    procs = Processes()
    fed = Federation(tmp_path_factory.mktemp("deploy"), procs)
    try:
        fed.start_coordinator()
        for site in SITES:
            fed.start_hospital(site)
        wait_for("three hospitals online", lambda: online(fed.cfg) == 3, 120, 2)
        yield fed
    finally:
        procs.stop_all()


PROBE_APP = '''"""A coordinator's probe: read the site's data index, send its first line back."""
from pathlib import Path

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def leak(msg, context):
    folder = Path(str(context.node_config.get("data-dir", ".")))
    (folder.parent / "probe-was-here").write_text("x")
    line = (folder / "index.csv").read_text().splitlines()[0]
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"metrics": metrics, "site": ConfigRecord({"name": line})}), msg)


app.train()(leak)
app.evaluate()(leak)
app.train("finetune")(leak)
'''


def rogue_app(root: Path, client_app: str) -> Path:
    """ecgfl's own app folder with its ClientApp replaced: what a rogue coordinator submits."""
    app = root / "app"
    shutil.copytree(
        APP_DIR,
        app,
        ignore=shutil.ignore_patterns(
            ".*", "__pycache__", "*.egg-info", "tests", "docs", "benchmarks", "runs"
        ),
    )
    (app / "client" / "app.py").write_text(client_app)
    return app


def test_a_rogue_coordinators_apps_are_refused_at_every_hospital_and_nothing_leaves(federation):
    unguarded = (APP_DIR / "client" / "app.py").read_text().replace("egress_guard, ", "")
    assert unguarded != (APP_DIR / "client" / "app.py").read_text()
    experiment = federation.experiment("probe", rounds=1, fraction_evaluate=0.0)
    first_line = (federation.root / "data" / "H1" / "index.csv").read_text().splitlines()[0]
    for name, client_app in (("probe", PROBE_APP), ("unguarded", unguarded)):
        run_dir = federation.root / "runs" / name
        app = rogue_app(federation.root / name, client_app)
        proc = federation.submit("--config", experiment, "--run-dir", run_dir, "--app", app)
        proc.wait(timeout=240)
        failed = [f for e in metrics(run_dir) for f in e["failed"]]
        assert {f["site"] for f in failed} == set(SITES)
        assert "fewer than min_sites 3" in text(federation.root / "run.out")
        assert all("app not approved by this hospital" in f["reason"] for f in failed)
        assert not any(first_line in p.read_text(errors="ignore") for p in run_dir.rglob("*.*"))
    assert not list(federation.root.rglob("probe-was-here"))
    refused_by_site = {}
    for site in SITES:
        hospital = federation.root / "hospitals" / site
        log = [json.loads(x) for x in (hospital / "audit.jsonl").read_text().splitlines()]
        refused = [e for e in log if e["event"] == "refused"]
        refused_by_site[site] = {e["bundle_sha256"] for e in refused}
        assert {e["message_type"] for e in refused} == {"train"}  # then the run stopped
        runs = {e["run_id"] for e in refused}
        assert not [e for e in log if e["run_id"] in runs and e["event"] != "refused"]
        for sha in refused_by_site[site]:  # kept for the hospital's review
            assert (hospital / "state" / "bundles" / f"{sha}.fab").exists()
    assert len(refused_by_site["H1"]) == 2
    assert refused_by_site["H1"] == refused_by_site["H2"] == refused_by_site["H3"]


def _stranger(federation, tmp_path, name: str) -> Path:
    """A hospital bundle the coordinator never registered, from a federation of its own."""
    provision(tmp_path, [name], ["localhost"], federation.cfg.address)
    bundle = tmp_path / "hospitals" / name
    federation.configure_hospital(bundle, federation.root / "data" / "H1")
    return bundle


@pytest.mark.parametrize(
    ("name", "own_ca", "words"),
    [
        ("H8", True, "not signed by this hospital's CA"),  # TLS refuses the coordinator
        ("H9", False, "refused this site's key"),  # same CA, so TLS succeeds; the key does not
    ],
)
def test_a_hospital_that_cannot_join_says_why_and_stops_within_a_minute(
    federation, tmp_path, name, own_ca, words
):
    bundle = _stranger(federation, tmp_path, name)
    if not own_ca:
        (bundle / "ca.crt").write_bytes((federation.root / "coordinator" / "ca.crt").read_bytes())
    started = time.monotonic()
    daemon = federation.start_hospital(name, bundle)
    assert daemon.wait(timeout=60) == 1
    assert time.monotonic() - started < 60
    assert words in text(bundle / "daemon.out")
    assert online(federation.cfg) == 3


def test_a_stopped_coordinator_restarts_and_the_run_resumes_from_its_checkpoint(federation):
    run_dir = federation.root / "runs" / "resumed"
    experiment = federation.experiment("resumed", fraction_evaluate=0.0)
    first = federation.submit("--config", experiment, "--run-dir", run_dir)
    wait_for("round 1", lambda: (run_dir / "checkpoints" / "round-0001.pt").exists(), 300)
    federation.stop_coordinator()
    assert first.wait(timeout=120) != 0
    assert not (run_dir / "summary.json").exists()
    round_one = [e for e in metrics(run_dir) if e["phase"] == "train"]
    federation.start_coordinator()
    wait_for("hospitals reconnected", lambda: online(federation.cfg) == 3, 180, 2)
    resumed = federation.submit("--resume", run_dir)
    assert resumed.wait(timeout=480) == 0, text(federation.root / "run.out")[-3000:]
    trained = [e for e in metrics(run_dir) if e["phase"] == "train"]
    assert [e["round"] for e in trained] == [1, 2]
    assert trained[0] == round_one[0]  # round 1 was not redone
    assert set(trained[1]["sites"]) == set(SITES)
    assert (run_dir / "report.md").exists()


def test_a_hospital_killed_mid_run_is_named_and_the_others_finish(federation):
    """Runs last: H3 stays down. Flower notices a dead node after two missed heartbeats (~60 s)."""
    run_dir = federation.root / "runs" / "dropout"
    audit = federation.root / "hospitals" / "H3" / "audit.jsonl"
    seen = text(audit).count('"received"')
    experiment = federation.experiment("dropout", min_sites=2, fraction_evaluate=0.0)
    proc = federation.submit("--config", experiment, "--run-dir", run_dir)
    wait_for("H3 to receive work", lambda: text(audit).count('"received"') > seen, 300)
    federation.procs.kill(federation.daemons["H3"].pid, signal.SIGKILL)
    assert proc.wait(timeout=480) == 0, text(federation.root / "run.out")[-3000:]
    log = metrics(run_dir)
    assert [f["site"] for e in log for f in e["failed"]] == ["H3"]
    (ft,) = [e for e in log if e["phase"] == "finetune"]
    assert set(ft["sites"]) == {"H1", "H2"}
    assert "H3 (" in (run_dir / "report.md").read_text()
