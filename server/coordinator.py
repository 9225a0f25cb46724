"""The coordinator: Flower's SuperLink and SuperExec behind an nginx front door, started, watched
and stopped together; the provisioned hospitals' keys admitted; Flower's own CLI (``flwr run / ls /
log / stop``) to drive it.

Three processes, each in a process group of its own, supervised by ``ecgfl-coordinator start``:

- ``flower-superlink`` on 127.0.0.1 only (``superlink_port``), TLS, SuperNode authentication,
  ``--isolation process`` and a SuperExec secret: its Control and Runtime APIs are reachable from
  this host only, and only the holder of the secret may take ServerApp tasks;
- ``flower-superexec`` with that secret: it launches the ServerApp of every run;
- nginx on ``host:port`` (what the hospitals dial), forwarding only the Fleet API
  (server/front_door.py).

Everything lives in the configuration's ``state_dir``: the SuperLink's database (runs and
registered nodes survive a restart), the logs, the pid files, the SuperExec secret and the
FLWR_HOME whose ``config.toml`` holds the connection the ``flwr`` CLI uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from common import config, flower_process
from common.config import ConfigError
from common.errors import RunFailed
from common.flower_process import (
    answers,
    copy_plain,
    flower_env,
    is_running,
    private_secret,
    signal_ready,
    stop_process_group,
    tail,
    wait_ready,
    write_connection,
)
from common.preprocess import PipelineConfig
from server import front_door, runs

if TYPE_CHECKING:  # torch: loaded by the commands that run experiments
    from common.experiment import ExperimentConfig

log = logging.getLogger("ecgfl.coordinator")
CONNECTION = "ecgfl"  # the connection name in FLWR_HOME/config.toml
ALREADY_REGISTERED = "Public key already in use"  # flwr supernode register, key in the database
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
OPEN_FLAG = "--i-understand-the-control-api-is-open"
INSECURE_WARNING = (
    "\n" + "!" * 78 + "\n!! INSECURE: plaintext HTTP and NO hospital authentication. Anyone who can"
    " reach\n!! this port can join the federation and read the model. Never use this outside"
    " a test.\n" + "!" * 78
)
OPEN_WARNING = (
    "\n" + "!" * 78 + "\n!! OPEN CONTROL API: the SuperLink itself listens on {host}, without the"
    " front door.\n!! Anyone who reaches it can submit runs (code that runs here and at every"
    " hospital),\n!! register keys and read every run's log. Flower's open-source Control API has"
    " no login.\n" + "!" * 78
)


@dataclass
class CoordinatorConfig:
    """``coordinator.yaml``: where the coordinator listens and what it trusts.

    Relative paths are relative to the YAML file.
    """

    address: str  # HOST:PORT as the hospitals dial it (a name in the server certificate)
    host: str = "0.0.0.0"  # interface the front door (nginx) binds
    port: int = 8000  # the front door's port: the one the hospitals dial
    superlink_port: int | None = None  # the SuperLink's own port, on 127.0.0.1; None: port + 1
    ca_certificate: str = "ca.crt"
    certificate: str = "server.crt"
    private_key: str = "server.key"
    state_dir: str = "state"  # database, logs, pid files, SuperExec secret, FLWR_HOME
    hospitals: dict[str, str] = field(default_factory=dict)  # site -> its OpenSSH public key
    #: The federation's preprocessing: provisioning writes it into every hospital.yaml (each
    #: builds its cache at start) and init-experiment into every experiment.
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def validate(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"address={self.address!r}: expected HOST:PORT")
        if not 0 < self.port < 65536:
            raise ValueError(f"port={self.port}: expected 1..65535")
        if not 0 < self.internal_port < 65536 or self.internal_port == self.port:
            raise ValueError(
                f"superlink_port={self.internal_port}: expected 1..65535, not the front door's "
                f"port {self.port}"
            )

    @classmethod
    def load(cls, path: str | Path, resolve: bool = True) -> CoordinatorConfig:
        cfg = config.load(cls, path)
        if not resolve:
            return cfg

        def absolute(p: str, key: str) -> str:
            return config.relative_to_file(p, path, key)

        return replace(
            cfg,
            ca_certificate=absolute(cfg.ca_certificate, "ca_certificate"),
            certificate=absolute(cfg.certificate, "certificate"),
            private_key=absolute(cfg.private_key, "private_key"),
            state_dir=absolute(cfg.state_dir, "state_dir"),
            hospitals={site: absolute(k, f"hospitals.{site}") for site, k in cfg.hospitals.items()},
        )

    @property
    def internal_port(self) -> int:
        """The SuperLink's port on 127.0.0.1 behind the front door."""
        return self.port + 1 if self.superlink_port is None else self.superlink_port

    @property
    def state(self) -> Path:
        return Path(self.state_dir)

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr"

    @property
    def pid_file(self) -> Path:
        """The supervising ``ecgfl-coordinator start`` process."""
        return self.state / "coordinator.pid"

    @property
    def processes_file(self) -> Path:
        """The supervised processes: name -> pid, where it listens, its log."""
        return self.state / "processes.json"

    @property
    def log_file(self) -> Path:
        return self.state / "superlink.log"

    @property
    def secret_file(self) -> Path:
        return self.state / "superexec.secret"

    @property
    def nginx_dir(self) -> Path:
        return self.state / "nginx"


def check_exposure(insecure: bool, listen: str | None, open_control_api: bool) -> None:
    """Refuse to bind the SuperLink itself beyond loopback unless the operator says they know;
    say loudly what an insecure or open start gives away."""
    if listen is not None and listen not in LOOPBACK:
        if not open_control_api:
            raise ConfigError(
                f"--listen {listen}: the SuperLink itself would serve its Control API (flwr run, "
                "flwr supernode register; no login in open-source Flower) and its Runtime API on "
                f"{listen}, to anyone who can reach it. Leave out --listen to put the nginx front "
                f"door before it (Fleet API only), or pass {OPEN_FLAG}"
            )
        log.warning(OPEN_WARNING.format(host=listen))
    if insecure:
        log.warning(INSECURE_WARNING)


def superlink_bind(cfg: CoordinatorConfig, listen: str | None) -> tuple[str, int]:
    """Where the SuperLink binds: loopback behind the front door, or ``--listen`` on the port."""
    return ("127.0.0.1", cfg.internal_port) if listen is None else (listen, cfg.port)


def _dial(host: str, port: int) -> str:
    """Where this host reaches a bound address (the server certificate always names 127.0.0.1)."""
    return f"127.0.0.1:{port}" if host in WILDCARD or host in LOOPBACK else f"{host}:{port}"


def superlink_address(cfg: CoordinatorConfig, listen: str | None = None) -> str:
    """Where the ``flwr`` CLI and the SuperExec reach the SuperLink."""
    return _dial(*superlink_bind(cfg, listen))


def tls_files(cfg: CoordinatorConfig) -> tuple[str, str, str]:
    """(CA, certificate, key), each checked to exist."""
    files = (cfg.ca_certificate, cfg.certificate, cfg.private_key)
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such file (run ecgfl-coordinator provision first)")
    return files


def superlink_command(
    cfg: CoordinatorConfig, insecure: bool, listen: str | None = None
) -> list[str]:
    host, port = superlink_bind(cfg, listen)
    command = [
        "flower-superlink",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(cfg.state / "superlink.db"),
        "--log-file",
        str(cfg.log_file),
        "--disable-runtime-dependency-installation",
        "--isolation",
        "process",  # no SuperExec of its own: ours, with the secret, runs the ServerApps
        "--superexec-auth-secret-file",
        str(cfg.secret_file),
    ]
    if insecure:
        return [*command, "--insecure"]
    ca, cert, key = tls_files(cfg)
    return [
        *command,
        "--ssl-ca-certfile",
        ca,
        "--ssl-certfile",
        cert,
        "--ssl-keyfile",
        key,
        "--enable-supernode-auth",
    ]


def superexec_command(
    cfg: CoordinatorConfig, insecure: bool, listen: str | None = None
) -> list[str]:
    """Flower's SuperExec for the ServerApps; runtime dependency installation stays off."""
    command = [
        "flower-superexec",
        "--runtime-api-address",
        superlink_address(cfg, listen),
        "--superexec-auth-secret-file",
        str(cfg.secret_file),
    ]
    if insecure:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", tls_files(cfg)[0]]


def ensure_secret(cfg: CoordinatorConfig) -> Path:
    """The coordinator's SuperExec secret (common.flower_process.private_secret)."""
    return private_secret(cfg.secret_file)


def running_pid(cfg: CoordinatorConfig) -> int | None:
    """The supervising process's pid from the pid file, if it still runs.

    Started with ``--detach`` it leads a process group of its own; SIGTERM to it stops all three
    processes it supervises.
    """
    try:
        pid = int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if is_running(pid) else None


def processes(cfg: CoordinatorConfig) -> dict[str, dict]:
    """The supervised processes as the running coordinator recorded them."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads(cfg.processes_file.read_text())
    return {}


@dataclass
class StopRequest:
    """Set by SIGTERM/SIGINT in the supervisor and checked between steps, never raised into one,
    so no process is started without being recorded for stopping (a plain flag: a lock taken in a
    signal handler can deadlock)."""

    requested: bool = False

    def after(self, seconds: float) -> bool:
        """Sleep, then say whether a stop was asked for."""
        time.sleep(seconds)
        return self.requested


STOP = StopRequest()


class Stopping(Exception):
    """SIGTERM or SIGINT reached the supervisor while it was starting."""


def _stop(_signum: int, _frame) -> None:
    STOP.requested = True


@dataclass
class Child:
    """One supervised process: its own process group, its output in ``STATE/NAME.out``."""

    name: str
    proc: subprocess.Popen
    out: Path
    log: Path  # where its operator looks: its own log
    where: str

    def failed(self) -> ConfigError:
        return ConfigError(
            f"{self.name} exited ({self.proc.returncode}): {tail(self.out)} (see {self.log})"
        )


def spawn(
    cfg: CoordinatorConfig,
    children: list[Child],
    name: str,
    command: list[str],
    where: str,
    log_path: Path | None = None,
) -> Child:
    """Start ``command`` in a new session with Flower's environment; it joins ``children`` at
    once, so a start that fails later still stops it."""
    out = cfg.state / f"{name}.out"
    proc = subprocess.Popen(
        command,
        env=flower_env(cfg.flwr_home),
        cwd=cfg.state,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def copy() -> None:  # Flower colours its console output even into a file
        with open(out, "a") as fh:
            copy_plain(proc.stdout, fh)

    threading.Thread(target=copy, name=f"{name}-output", daemon=True).start()
    children.append(Child(name, proc, out, log_path or out, where))
    return children[-1]


def _pause(seconds: float) -> None:
    """Sleep between readiness polls; a stop request ends the start."""
    if STOP.after(seconds):
        raise Stopping


def wait_until(child: Child, ready: Callable[[], bool], limit_s: float = 60) -> None:
    """Poll ``ready`` until it holds; fail at once if the process exits."""
    wait_ready(child.proc, ready, child.name, child.log, limit_s, _pause)


def _probe(cfg: CoordinatorConfig, insecure: bool, address: str, path: str, success: bool):
    scheme, ca = ("http", None) if insecure else ("https", cfg.ca_certificate)
    return lambda: answers(f"{scheme}://{address}{path}", ca, success)


def start_superlink(
    cfg: CoordinatorConfig, insecure: bool, listen: str | None, children: list[Child]
) -> None:
    host, port = superlink_bind(cfg, listen)
    command = superlink_command(cfg, insecure, listen)
    where = f"on {host}:{port} (Fleet, Control and Runtime APIs)"
    child = spawn(cfg, children, "superlink", command, where, cfg.log_file)
    wait_until(child, _probe(cfg, insecure, superlink_address(cfg, listen), "/health", True))


def start_superexec(
    cfg: CoordinatorConfig, insecure: bool, listen: str | None, children: list[Child]
) -> None:
    command = superexec_command(cfg, insecure, listen)
    where = f"dialing {superlink_address(cfg, listen)} (runs each run's ServerApp)"
    spawn(cfg, children, "superexec", command, where)


def start_front_door(cfg: CoordinatorConfig, insecure: bool, children: list[Child]) -> None:
    """nginx on ``host:port``, forwarding the Fleet API to the loopback SuperLink."""
    state = cfg.nginx_dir
    tls = None if insecure else tls_files(cfg)
    conf = front_door.write_config(state, (cfg.host, cfg.port), cfg.internal_port, tls)
    command = front_door.nginx_command(front_door.find_nginx(), state, conf)
    where = f"on {cfg.host}:{cfg.port} (front door: Fleet API only)"
    child = spawn(cfg, children, "nginx", command, where, state / "error.log")
    wait_until(child, _probe(cfg, insecure, _dial(cfg.host, cfg.port), "/", False))


def _record(cfg: CoordinatorConfig, children: list[Child]) -> None:
    cfg.processes_file.write_text(
        json.dumps(
            {c.name: {"pid": c.proc.pid, "where": c.where, "log": str(c.log)} for c in children},
            indent=1,
        )
    )


def _start_all(
    cfg: CoordinatorConfig, insecure: bool, listen: str | None, children: list[Child]
) -> None:
    """SuperLink, SuperExec, hospitals' keys, then the front door: it opens when all is ready."""
    ensure_secret(cfg)
    ca = None if insecure else cfg.ca_certificate
    write_connection(cfg.flwr_home, CONNECTION, superlink_address(cfg, listen), ca)
    start_superlink(cfg, insecure, listen, children)
    start_superexec(cfg, insecure, listen, children)
    if not insecure:
        register_hospitals(cfg)
    if STOP.requested:
        raise Stopping
    if listen is None:
        start_front_door(cfg, insecure, children)
    _record(cfg, children)


def _watch(children: list[Child]) -> int:
    """Until one of them exits: then the coordinator stops (a service manager restarts it)."""
    while not STOP.after(0.5):
        for child in children:
            if child.proc.poll() is not None:
                log.error("%s; stopping the coordinator", child.failed())
                return 1
    log.info("stopping")
    return 0


def preflight(cfg: CoordinatorConfig, insecure: bool, listen: str | None) -> None:
    """What can be refused before anything starts."""
    if (pid := running_pid(cfg)) is not None:
        raise ConfigError(f"a coordinator already runs for this configuration (pid {pid})")
    if not insecure:
        tls_files(cfg)
    if listen is None:
        front_door.find_nginx()


def serve(
    cfg: CoordinatorConfig, insecure: bool, listen: str | None, ready_fd: int | None = None
) -> int:
    """Start the three processes and supervise them until SIGTERM/SIGINT or one of them exits."""
    preflight(cfg, insecure, listen)
    cfg.state.mkdir(parents=True, exist_ok=True)
    cfg.pid_file.write_text(f"{os.getpid()}\n")
    children: list[Child] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    try:
        _start_all(cfg, insecure, listen, children)
        log.info(
            "coordinator up: %s",
            "; ".join(f"{c.name} (pid {c.proc.pid}) {c.where}" for c in children),
        )
        signal_ready(ready_fd)
        return _watch(children)
    except Stopping:
        log.info("stopped while starting")
        return 0
    finally:
        for child in reversed(children):  # the front door first, the SuperLink last
            stop_process_group(child.proc)
        cfg.processes_file.unlink(missing_ok=True)
        cfg.pid_file.unlink(missing_ok=True)


def detach(cfg: CoordinatorConfig, argv: list[str], limit_s: float = 300) -> int:
    """Run ``ecgfl-coordinator ARGV`` (a foreground start) in a session of its own, output to
    ``state/coordinator.log``; return once it says it is up, or with its error."""
    log_path = cfg.state / "coordinator.log"
    proc, ready = flower_process.detach("server.cli", argv, log_path, cfg.state, limit_s)
    if ready:
        log.info("coordinator up (pid %d); log %s", proc.pid, log_path)
        return 0
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)  # it stops what it started
        proc.wait()
        print(f"the coordinator did not come up within {limit_s:.0f} s; see {log_path}")
    return proc.returncode or 1


def stop_coordinator(cfg: CoordinatorConfig, grace_s: float = 60) -> bool:
    """SIGTERM the supervisor (it stops its three processes); SIGKILL what is left after
    ``grace_s``."""
    pid = running_pid(cfg)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    leftover = [p["pid"] for p in processes(cfg).values() if is_running(p["pid"])]
    for child in leftover:  # each leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
    cfg.processes_file.unlink(missing_ok=True)
    cfg.pid_file.unlink(missing_ok=True)
    return pid is not None or bool(leftover)


def flwr(cfg: CoordinatorConfig, *args: str, timeout: float | None = 120) -> tuple[int, str]:
    """One ``flwr`` CLI command against this SuperLink; returns (exit code, output).

    It runs in the coordinator's FLWR_HOME: Flower reads the connection name as a project path
    when the working folder holds a folder of that name (a clone called ``ecgfl``)."""
    cfg.flwr_home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["flwr", *args],
        cwd=cfg.flwr_home,
        env=flower_env(cfg.flwr_home),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def advice(cfg: CoordinatorConfig, message: str) -> str | None:
    """What to do about an error Flower printed, where ecgfl knows it."""
    if "SuperLink is unavailable" in message:
        return (
            f"the coordinator's SuperLink (127.0.0.1:{cfg.internal_port}) does not answer: is the "
            "coordinator running? (ecgfl-coordinator status; start it with ecgfl-coordinator "
            f"start --config coordinator.yaml --detach; its log: {cfg.log_file})"
        )
    if "legacy usage" in message or "[tool.flwr.federations]" in message:
        return (
            f"Flower read the connection name {CONNECTION!r} as a project folder; run "
            f"ecgfl-coordinator from another folder and report this ({message.splitlines()[0]})"
        )
    return None


def explain(cfg: CoordinatorConfig, command: str, message: str) -> str:
    """Flower's error from ``flwr COMMAND`` as what the operator should do."""
    return advice(cfg, message) or f"flwr {command}: {message}"


def flwr_json(cfg: CoordinatorConfig, *args: str) -> dict:
    """``flwr ARGS --format json`` as data; its error (Flower exits 0 on some) as a ConfigError
    that says what to do."""
    code, out = flwr(cfg, *args, "--format", "json")
    try:
        data = json.loads(out)
    except ValueError:
        data = {"success": False, "error-message": out}
    if code != 0 or data.get("success") is False:
        raise RunFailed(explain(cfg, " ".join(args[:2]), str(data.get("error-message", out))))
    return data


def flower_runs(cfg: CoordinatorConfig) -> dict[int, str]:
    """Flower run id -> its status at the SuperLink (pending, running, finished:completed, ...)."""
    runs_listed = flwr_json(cfg, "ls", CONNECTION).get("runs", [])
    return {int(r["run-id"]): r["status"] for r in runs_listed}


def register_hospitals(cfg: CoordinatorConfig) -> None:
    """Admit every provisioned hospital key; keys the database already holds stay as they are.

    Flower names a node by a number; ``nodes.json`` remembers which site each number is, as
    learnt from its key, so a run can name a site even if it never answers.
    """
    names = node_names(cfg)
    for site, key_path in cfg.hospitals.items():
        if not Path(key_path).is_file():
            raise ConfigError(f"hospital {site}: public key {key_path} not found")
        _, out = flwr(
            cfg, "supernode", "register", key_path, CONNECTION, "--name", site, "--format", "json"
        )
        if ALREADY_REGISTERED in out:
            continue
        try:
            names[str(json.loads(out)["node-id"])] = site
        except (ValueError, KeyError) as exc:
            raise RunFailed(f"registering hospital {site} ({key_path}) failed: {out}") from exc
        log.info("registered hospital %s", site)
    (cfg.state / "nodes.json").write_text(json.dumps(names, indent=1))


def node_names(cfg: CoordinatorConfig) -> dict[str, str]:
    """Node id (as text) -> site, for the keys this coordinator registered."""
    path = cfg.state / "nodes.json"
    return json.loads(path.read_text()) if path.exists() else {}


def prepare_run(cfg: CoordinatorConfig, exp: ExperimentConfig | None, run_dir: Path) -> None:
    """Write the run directory's ``experiment.yaml``, ``sites.json`` (node id -> site) and
    ``run_config.toml``.

    A fresh run (``exp``) pins the experiment into the run directory (``min_sites`` defaulting
    to every provisioned hospital); a resumed one (``exp`` None) continues with exactly the
    settings pinned there.
    """
    pinned = run_dir / runs.EXPERIMENT
    resume = exp is None
    if resume:
        if not pinned.is_file():
            raise ConfigError(f"--resume {run_dir}: no experiment.yaml there (not a run directory)")
    else:
        if exp.federation.min_sites is None:
            exp.federation.min_sites = len(cfg.hospitals)
        if not exp.federation.min_sites:
            raise ConfigError("federation.min_sites is not set and no hospital is provisioned")
        if exp.pipeline != cfg.pipeline:
            log.warning(
                "the experiment's pipeline differs from the one provisioned to the hospitals "
                "(coordinator.yaml pipeline): each hospital builds a cache for it during round 1, "
                "within its own limits (policy max_fs, max_length_s)"
            )
        runs.pin_experiment(run_dir, exp)
    (run_dir / runs.SITES).write_text(json.dumps(node_names(cfg), indent=1))
    runs.write_run_config(run_dir, resume)


def _follow(run_dir: Path, done: threading.Event) -> None:
    """Print each new metrics entry until ``done`` (the ServerApp's own log says little)."""
    seen = len(runs.entries(run_dir))
    while not done.wait(1.0):
        found = runs.entries(run_dir)
        for entry in found[seen:]:
            print(runs.progress_line(entry), flush=True)
        seen = max(seen, len(found))


def submit(cfg: CoordinatorConfig, app: Path, run_dir: Path) -> int:
    """``flwr run --stream`` the prepared run; its log goes to the console and flower.log."""
    command = [
        "flwr",
        "run",
        str(app),
        CONNECTION,
        "--run-config",
        str(run_dir / runs.RUN_CONFIG),
        "--stream",
    ]
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(run_dir, done))
    follower.start()
    with open(run_dir / runs.FLOWER_LOG, "a") as out:
        proc = subprocess.Popen(
            command,
            cwd=cfg.flwr_home,  # see flwr(): never where a folder named like the connection is
            env=flower_env(cfg.flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            copy_plain(proc.stdout, sys.stdout, out)
            return proc.wait()
        finally:
            stop_process_group(proc)
            done.set()
            follower.join()
