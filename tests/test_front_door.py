"""The coordinator's control surface stays off the network: nginx on the public address forwards
only Flower's Fleet API, the SuperLink listens on loopback, and only the SuperExec that holds the
secret may take ServerApp tasks. Real processes on loopback; all stopped by process group.
"""

import http.client
import inspect
import json
import re
import ssl
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fastapi.routing import iter_route_contexts
from flwr.superlink.main import create_app
from flwr.supernode.fleet_http_client import FleetHttpClient
from test_deployment import BIN, Processes, free_port, wait_for

from common.config import ConfigError
from common.flower_process import APP_DIR, flower_env
from server import coordinator, front_door
from server.coordinator import CoordinatorConfig
from server.provision import provision

CONFIG = "coordinator/coordinator.yaml"


def _nginx_installed() -> bool:
    try:
        front_door.find_nginx()
    except ConfigError:
        return False
    return True


needs_nginx = pytest.mark.skipif(not _nginx_installed(), reason=front_door.INSTALL_HINT)


def superlink_routes() -> list[tuple[str, str]]:
    """(method, path) of everything a SuperLink serves, from Flower's own app."""
    return [
        (method, ctx.path)
        for ctx in iter_route_contexts(create_app().routes)
        for method in sorted(ctx.route.methods)
    ]


def request(address: str, path: str, ca: Path, method: str = "POST") -> tuple[int, bytes]:
    """One raw HTTPS request (the path is sent exactly as given), empty protobuf body."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request(method, path, body=b"", headers={"content-type": "application/protobuf"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Door:
    root: Path
    cfg: CoordinatorConfig

    @property
    def public(self) -> str:
        return self.cfg.address

    @property
    def loopback(self) -> str:
        return f"127.0.0.1:{self.cfg.internal_port}"

    @property
    def hospital_ca(self) -> Path:
        return self.root / "hospitals" / "H1" / "ca.crt"

    def start(self, *args: str) -> subprocess.CompletedProcess:
        command = [BIN / "ecgfl-coordinator", "start", "--config", self.root / CONFIG, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def flwr_public(self, *args: str) -> tuple[int, str]:
        """The ``flwr`` CLI with a connection to the public address, trusting the hospitals' CA."""
        home = self.root / "public-flwr"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "door"\n\n[superlink.door]\n'
            f'address = "{self.public}"\nroot-certificates = {json.dumps(str(self.hospital_ca))}\n'
        )
        done = subprocess.run(
            ["flwr", *args],
            env=flower_env(home),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    if not _nginx_installed():
        pytest.skip(front_door.INSTALL_HINT)
    root = tmp_path_factory.mktemp("door")
    provision(root, ["H1"], ["localhost"], f"localhost:{free_port()}", listen="127.0.0.1")
    path = root / CONFIG
    settings = yaml.safe_load(path.read_text())
    settings["superlink_port"] = free_port()  # not port + 1: that one may be taken here
    path.write_text(yaml.safe_dump(settings))
    fed = Door(root, CoordinatorConfig.load(path))
    procs = Processes()
    try:
        done = fed.start("--detach")
        if pid := coordinator.running_pid(fed.cfg):
            procs.adopt(pid)
        assert done.returncode == 0, done.stderr
        yield fed
    finally:
        procs.stop_all()


# --- the nginx configuration, without processes ----------------------------------------------


def _config(tls: tuple[str, str, str] | None = None) -> str:
    routes = front_door.fleet_routes()
    return front_door.nginx_config(
        Path("/state"), ("0.0.0.0", 8000), 8001, tls, routes, front_door.routine_paths()
    )


def test_the_front_door_forwards_exactly_flowers_fleet_routes_each_to_itself():
    text = _config(("/f/ca.crt", "/f/server.crt", "/f/server.key"))
    forwarded = re.findall(r"location = (\S+) \{\n.*\n\s+proxy_pass https://superlink(\S+);", text)
    assert forwarded and all(a == b for a, b in forwarded)
    fleet = {path for method, path in superlink_routes() if path.startswith("/v1/fleet/")}
    assert {a for a, _ in forwarded} == fleet
    assert text.count("proxy_pass") == len(fleet)  # nothing else goes through
    assert "limit_except POST { deny all; }" in text
    assert "location / { return 404; }" in text
    for prefix in ("/v1/control/", "/v1/runtime/"):
        assert f"location {prefix} {{ return 403; }}" in text


def test_every_path_the_supernode_calls_is_forwarded():
    called = set(re.findall(r'path="([^"]+)"', inspect.getsource(FleetHttpClient)))
    assert called and called <= {path for path, _ in front_door.fleet_routes()}


def test_tls_at_the_door_and_a_verified_superlink_behind_it():
    text = _config(("/f/ca.crt", "/f/server.crt", "/f/server.key"))
    assert "listen 0.0.0.0:8000 ssl;" in text
    assert 'ssl_certificate "/f/server.crt";' in text
    assert 'ssl_certificate_key "/f/server.key";' in text
    assert 'proxy_ssl_trusted_certificate "/f/ca.crt";' in text
    assert "proxy_ssl_verify on;" in text and "proxy_ssl_name localhost;" in text
    assert "server 127.0.0.1:8001;" in text
    assert "client_max_body_size 64m;" in text and "proxy_read_timeout 300s;" in text
    plain = _config(None)
    assert "listen 0.0.0.0:8000;" in plain and "ssl" not in plain.replace("X-Forwarded", "")
    assert "proxy_pass http://superlink/v1/fleet/pull-messages;" in plain


def test_nginx_keeps_everything_in_its_state_folder():
    text = _config()
    for line in ("daemon off;", 'pid "/state/nginx.pid";', 'error_log "/state/error.log" warn;'):
        assert line in text
    assert 'access_log "/state/access.log"' in text
    for name in front_door.TEMP_PATHS:
        assert f'{name}_temp_path "/state/tmp/{name}";' in text
    assert "/var/" not in text and "/etc/" not in text


@needs_nginx
def test_nginx_accepts_the_written_configuration(tmp_path):
    provision(tmp_path, [], ["localhost"], "localhost:8000", listen="127.0.0.1")
    cfg = CoordinatorConfig.load(tmp_path / CONFIG)
    state = tmp_path / "nginx state"  # a space: paths are quoted
    conf = front_door.write_config(state, ("127.0.0.1", 8000), 8001, coordinator.tls_files(cfg))
    command = [*front_door.nginx_command(front_door.find_nginx(), state, conf), "-t", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr + (state / "error.log").read_text()


def test_the_superlink_binds_loopback_with_process_isolation_and_the_secret(tmp_path):
    provision(tmp_path, [], ["localhost"], "localhost:9443", listen="0.0.0.0")
    cfg = CoordinatorConfig.load(tmp_path / CONFIG)
    assert cfg.internal_port == 9444
    link = coordinator.superlink_command(cfg, insecure=False)
    assert link[link.index("--host") + 1] == "127.0.0.1"
    assert link[link.index("--port") + 1] == "9444"
    assert link[link.index("--isolation") + 1] == "process"
    assert link[link.index("--superexec-auth-secret-file") + 1] == str(cfg.secret_file)
    assert "--enable-supernode-auth" in link
    exe = coordinator.superexec_command(cfg, insecure=False)
    assert exe[exe.index("--runtime-api-address") + 1] == "127.0.0.1:9444"
    assert exe[exe.index("--superexec-auth-secret-file") + 1] == str(cfg.secret_file)
    assert exe[exe.index("--root-certificates") + 1] == cfg.ca_certificate
    assert "--allow-runtime-dependency-installation" not in exe
    direct = coordinator.superlink_command(cfg, insecure=False, listen="127.0.0.1")
    assert direct[direct.index("--port") + 1] == "9443"


def test_binding_the_superlink_beyond_loopback_needs_the_flag():
    coordinator.check_exposure(False, None, False)
    coordinator.check_exposure(False, "127.0.0.1", False)
    with pytest.raises(ConfigError, match=coordinator.OPEN_FLAG):
        coordinator.check_exposure(False, "0.0.0.0", False)
    coordinator.check_exposure(False, "0.0.0.0", True)


def test_the_superexec_secret_is_made_once_private_and_refused_when_readable(tmp_path):
    cfg = CoordinatorConfig(address="localhost:8000", state_dir=str(tmp_path))
    path = coordinator.ensure_secret(cfg)
    secret = path.read_bytes()
    assert len(secret) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert coordinator.ensure_secret(cfg).read_bytes() == secret
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        coordinator.ensure_secret(cfg)


# --- a running coordinator, seen from outside and from this host ------------------------------


@pytest.mark.e2e
def test_the_operators_flwr_reaches_the_loopback_superlink(door):
    code, out = coordinator.flwr(door.cfg, "ls", coordinator.CONNECTION)
    assert code == 0, out
    assert door.loopback in out
    # run from a folder holding a clone named like the connection, as operators do
    clone = door.root / "workdir" / coordinator.CONNECTION
    clone.mkdir(parents=True, exist_ok=True)
    (clone / "pyproject.toml").write_text((APP_DIR / "pyproject.toml").read_text())
    status = subprocess.run(
        [BIN / "ecgfl-coordinator", "status", "--config", door.root / CONFIG],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=clone.parent,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("superlink", "superexec", "nginx"):
        assert f"{name}: running" in status.stdout


@pytest.mark.parametrize(
    "command",
    [("ls", "door"), ("run", str(APP_DIR), "door"), ("supernode", "register", "H1.pub", "door")],
    ids=["ls", "run", "supernode-register"],
)
@pytest.mark.e2e
def test_flwr_through_the_front_door_is_refused(door, command):
    command = tuple(
        str(door.root / "coordinator" / "hospitals" / a) if a == "H1.pub" else a for a in command
    )
    code, out = door.flwr_public(*command)
    assert code != 0, out
    assert "403 Forbidden" in out


@pytest.mark.e2e
def test_every_control_and_runtime_path_is_refused_at_the_front_door(door):
    codes = {
        (method, path): request(door.public, path, door.hospital_ca, method)[0]
        for method, path in superlink_routes()
        if not path.startswith("/v1/fleet/")
    }
    apis = {k: c for k, c in codes.items() if k[1].startswith(("/v1/control/", "/v1/runtime/"))}
    assert {p.split("/")[2] for _, p in apis} == {"control", "runtime"}
    assert set(apis.values()) == {403}, apis
    assert set(codes.values()) <= {403, 404}, codes  # /health, /docs, /openapi.json: unknown


@pytest.mark.parametrize(
    "path",
    [
        "/v1/fleet/../control/list-runs",
        "/v1/fleet/pull-messages/../../control/list-runs",
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1/fleet/pull-messages%2F..%2F..%2Fcontrol%2Flist-runs",
        "//v1/control/list-runs",
        "/v1/Control/list-runs",
        "/unknown",
    ],
)
@pytest.mark.e2e
def test_spelled_differently_a_control_path_is_still_refused(door, path):
    assert request(door.public, path, door.hospital_ca)[0] in (400, 403, 404)


@pytest.mark.e2e
def test_fleet_calls_pass_and_meet_node_authentication(door):
    code, body = request(door.public, "/v1/fleet/pull-messages", door.hospital_ca)
    assert code == 401 and b"Invalid SuperNode authentication" in body  # the SuperLink's answer
    assert request(door.public, "/v1/fleet/pull-messages", door.hospital_ca, "GET")[0] == 403


@pytest.mark.e2e
def test_acquire_task_on_the_loopback_superlink_needs_the_secret(door):
    ca = door.root / "coordinator" / "ca.crt"
    assert request(door.loopback, "/v1/control/list-runs", ca)[0] == 200  # this host: the operator
    assert request(door.loopback, "/v1/runtime/acquire-task", ca)[0] == 401


@pytest.mark.e2e
def test_a_run_is_launched_by_the_coordinators_superexec(door):
    """No hospital is needed to see it: the ServerApp starts and stops at its own config check."""
    code, out = coordinator.flwr(
        door.cfg, "run", str(APP_DIR), coordinator.CONNECTION, "--format", "json"
    )
    assert code == 0, out
    run_id = json.loads(out)["run-id"]

    def finished() -> dict | None:
        _, listing = coordinator.flwr(door.cfg, "ls", coordinator.CONNECTION, "--format", "json")
        (run,) = [r for r in json.loads(listing)["runs"] if r["run-id"] == run_id]
        return run if run["status"].startswith("finished") else None

    run = wait_for("the run to finish", finished, 60)
    assert run["running-at"] and "min_sites" in run["status-details"]  # ecgfl's ServerApp ran


@pytest.mark.e2e
def test_listen_on_all_interfaces_is_refused_without_the_flag(door):
    done = door.start("--listen", "0.0.0.0", "--detach")
    assert done.returncode == 2
    assert coordinator.OPEN_FLAG in done.stderr
    assert coordinator.running_pid(door.cfg) is not None  # the running one is untouched


@pytest.mark.e2e
def test_stop_ends_all_three_processes(door):
    pids = [p["pid"] for p in coordinator.processes(door.cfg).values()]
    assert len(pids) == 3
    command = [BIN / "ecgfl-coordinator", "stop", "--config", door.root / CONFIG]
    assert subprocess.run(command, capture_output=True, timeout=90).returncode == 0
    assert coordinator.running_pid(door.cfg) is None
    assert not any(coordinator.is_running(pid) for pid in pids)
    with pytest.raises(OSError):
        request(door.public, "/v1/fleet/pull-messages", door.hospital_ca)
