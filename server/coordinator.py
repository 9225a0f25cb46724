"""The coordinator's Flower SuperLink: start and stop it, admit the provisioned hospitals' keys, and
drive it with Flower's own CLI (``flwr run / ls / log / stop``).

Everything the SuperLink keeps lives in the configuration's ``state_dir``: its database (runs and
registered nodes survive a restart), its log, its pid file and the FLWR_HOME whose
``config.toml`` holds the connection the ``flwr`` CLI uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import yaml

from common import config
from common.config import ConfigError
from common.flower_process import flower_env, stop_process_group

log = logging.getLogger("ecgfl.coordinator")
CONNECTION = "ecgfl"  # the connection name in FLWR_HOME/config.toml
ALREADY_REGISTERED = "Public key already in use"  # flwr supernode register, key in the database
INSECURE_WARNING = (
    "\n" + "!" * 78 + "\n!! INSECURE: plaintext HTTP and NO hospital authentication. Anyone who can"
    " reach\n!! this port can join the federation and read the model. Never use this outside"
    " a test.\n" + "!" * 78
)


@dataclass
class CoordinatorConfig:
    """``coordinator.yaml``: where the SuperLink listens and what it trusts.

    Relative paths are relative to the YAML file.
    """

    address: str  # HOST:PORT as the hospitals dial it (a name in the server certificate)
    host: str = "0.0.0.0"  # interface the SuperLink binds
    port: int = 8000
    ca_certificate: str = "ca.crt"
    certificate: str = "server.crt"
    private_key: str = "server.key"
    state_dir: str = "state"  # database, log, pid file, FLWR_HOME
    hospitals: dict[str, str] = field(default_factory=dict)  # site -> its OpenSSH public key

    def validate(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"address={self.address!r}: expected HOST:PORT")
        if not 0 < self.port < 65536:
            raise ValueError(f"port={self.port}: expected 1..65535")

    @classmethod
    def load(cls, path: str | Path, resolve: bool = True) -> CoordinatorConfig:
        cfg = config.load(cls, path)
        if not resolve:
            return cfg
        base = Path(path).resolve().parent

        def absolute(p: str) -> str:
            return str(base / Path(p).expanduser())

        return replace(
            cfg,
            ca_certificate=absolute(cfg.ca_certificate),
            certificate=absolute(cfg.certificate),
            private_key=absolute(cfg.private_key),
            state_dir=absolute(cfg.state_dir),
            hospitals={site: absolute(key) for site, key in cfg.hospitals.items()},
        )

    @property
    def state(self) -> Path:
        return Path(self.state_dir)

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr"

    @property
    def pid_file(self) -> Path:
        return self.state / "superlink.pid"

    @property
    def log_file(self) -> Path:
        return self.state / "superlink.log"

    @property
    def local_address(self) -> str:
        """Where this host reaches the SuperLink (the server certificate always names 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "127.0.0.1") else self.host
        return f"{host}:{self.port}"


def write_connection(cfg: CoordinatorConfig, insecure: bool) -> None:
    """The ``flwr`` CLI's connection to this SuperLink, in the coordinator's own FLWR_HOME."""
    cfg.flwr_home.mkdir(parents=True, exist_ok=True)
    trust = (
        "insecure = true" if insecure else f"root-certificates = {json.dumps(cfg.ca_certificate)}"
    )
    (cfg.flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{cfg.local_address}"\n{trust}\n'
    )


def superlink_command(cfg: CoordinatorConfig, insecure: bool) -> list[str]:
    command = [
        "flower-superlink",
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--database",
        str(cfg.state / "superlink.db"),
        "--log-file",
        str(cfg.log_file),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        return [*command, "--insecure"]
    for path in (cfg.ca_certificate, cfg.certificate, cfg.private_key):
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such file (run ecgfl-coordinator provision first)")
    return [
        *command,
        "--ssl-ca-certfile",
        cfg.ca_certificate,
        "--ssl-certfile",
        cfg.certificate,
        "--ssl-keyfile",
        cfg.private_key,
        "--enable-supernode-auth",
    ]


def running_pid(cfg: CoordinatorConfig) -> int | None:
    """The SuperLink's pid from the pid file, if that process still runs."""
    try:
        pid = int(cfg.pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def wait_healthy(
    cfg: CoordinatorConfig, proc: subprocess.Popen, insecure: bool, limit_s: float = 60
) -> None:
    scheme = "http" if insecure else "https"
    verify: ssl.SSLContext | bool = (
        False if insecure else ssl.create_default_context(cafile=cfg.ca_certificate)
    )
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise ConfigError(f"flower-superlink exited ({proc.returncode}); see {cfg.log_file}")
        with contextlib.suppress(httpx.HTTPError):
            url = f"{scheme}://{cfg.local_address}/health"
            if httpx.get(url, verify=verify, timeout=2).is_success:
                return
        if time.monotonic() > deadline:
            raise ConfigError(f"flower-superlink not healthy after {limit_s:.0f} s; see log")
        time.sleep(0.3)


def start_superlink(cfg: CoordinatorConfig, insecure: bool, detach: bool) -> subprocess.Popen:
    """Start the SuperLink in its own process group, wait until it answers, write the pid file."""
    if (pid := running_pid(cfg)) is not None:
        raise ConfigError(f"a SuperLink already runs for this coordinator (pid {pid})")
    if insecure:
        log.warning(INSECURE_WARNING)
    cfg.state.mkdir(parents=True, exist_ok=True)
    write_connection(cfg, insecure)
    output = open(cfg.state / "superlink.out", "ab") if detach else None  # noqa: SIM115
    proc = subprocess.Popen(
        superlink_command(cfg, insecure),
        env=flower_env(cfg.flwr_home),
        cwd=cfg.state,
        stdout=output,
        stderr=subprocess.STDOUT if detach else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if output is not None:
        output.close()
    cfg.pid_file.write_text(f"{proc.pid}\n")
    try:
        wait_healthy(cfg, proc, insecure)
    except BaseException:
        stop_process_group(proc)
        cfg.pid_file.unlink(missing_ok=True)
        raise
    log.info("SuperLink up on %s:%d (pid %d, log %s)", cfg.host, cfg.port, proc.pid, cfg.log_file)
    return proc


def flwr(cfg: CoordinatorConfig, *args: str, timeout: float | None = 120) -> tuple[int, str]:
    """One ``flwr`` CLI command against this SuperLink; returns (exit code, output)."""
    done = subprocess.run(
        ["flwr", *args],
        env=flower_env(cfg.flwr_home),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


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
            raise ConfigError(f"registering hospital {site} ({key_path}) failed: {out}") from exc
        log.info("registered hospital %s", site)
    (cfg.state / "nodes.json").write_text(json.dumps(names, indent=1))


def node_names(cfg: CoordinatorConfig) -> dict[str, str]:
    """Node id (as text) -> site, for the keys this coordinator registered."""
    path = cfg.state / "nodes.json"
    return json.loads(path.read_text()) if path.exists() else {}


def serve(cfg: CoordinatorConfig, insecure: bool, detach: bool) -> int:
    """Run the SuperLink until it stops (or, detached, return once it is up)."""
    proc = start_superlink(cfg, insecure, detach)
    try:
        if not insecure:
            register_hospitals(cfg)
    except BaseException:
        stop_process_group(proc)
        cfg.pid_file.unlink(missing_ok=True)
        raise
    if detach:
        return 0

    def forward(signum: int, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = proc.wait()
    stop_process_group(proc)  # what it started, once it is gone
    cfg.pid_file.unlink(missing_ok=True)
    log.info("SuperLink exited (%d)", code)
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def stop_superlink(cfg: CoordinatorConfig, grace_s: float = 15) -> bool:
    """SIGTERM the SuperLink's process group from its pid file, SIGKILL after ``grace_s``."""
    pid = running_pid(cfg)
    if pid is None:
        cfg.pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running_pid(cfg) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    cfg.pid_file.unlink(missing_ok=True)
    return True


def prepare_run(
    cfg: CoordinatorConfig, experiment: Path | None, run_dir: Path, resume: bool
) -> None:
    """Write the run directory's ``experiment.yaml``, ``sites.json`` (node id -> site) and
    ``run_config.toml``.

    A fresh run pins the experiment into the run directory (``min_sites`` defaulting to every
    provisioned hospital), so a resumed run continues with exactly the same settings.
    """
    from common.experiment import ExperimentConfig  # torch: only for this command

    pinned = run_dir / "experiment.yaml"
    if resume:
        if not pinned.is_file():
            raise ConfigError(f"--resume {run_dir}: no experiment.yaml there (not a run directory)")
    else:
        exp = ExperimentConfig.load(experiment)
        if exp.federation.min_sites is None:
            exp.federation.min_sites = len(cfg.hospitals)
        if not exp.federation.min_sites:
            raise ConfigError("federation.min_sites is not set and no hospital is provisioned")
        run_dir.mkdir(parents=True, exist_ok=True)
        pinned.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    (run_dir / "sites.json").write_text(json.dumps(node_names(cfg), indent=1))
    toml = run_dir / "run_config.toml"
    toml.write_text(
        f"run-dir = {json.dumps(str(run_dir))}\nexperiment = {json.dumps(str(pinned))}\n"
        f"resume = {'true' if resume else 'false'}\n"
    )


def progress_line(entry: dict) -> str:
    """One metrics.jsonl entry as the console shows it."""
    failed = ", ".join(f"{f['site']} ({f['reason']})" for f in entry.get("failed", []))
    sites = ", ".join(sorted(entry.get("sites", {})))
    return f"[ecgfl] round {entry['round']} {entry['phase']}: {sites or 'no site'}" + (
        f"; failed: {failed}" if failed else ""
    )


def _follow(metrics: Path, done: threading.Event) -> None:
    """Print each new metrics entry until ``done`` (the ServerApp's own log says little)."""
    seen = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    while not done.wait(1.0):
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        for line in lines[seen:]:
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                print(progress_line(json.loads(line)), flush=True)
        seen = max(seen, len(lines))


def submit(cfg: CoordinatorConfig, app: Path, run_dir: Path) -> int:
    """``flwr run --stream`` the prepared run; its log goes to the console and flower.log."""
    command = [
        "flwr",
        "run",
        str(app),
        CONNECTION,
        "--run-config",
        str(run_dir / "run_config.toml"),
        "--stream",
    ]
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(run_dir / "metrics.jsonl", done))
    follower.start()
    with open(run_dir / "flower.log", "a") as out:
        proc = subprocess.Popen(
            command,
            env=flower_env(cfg.flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                out.write(line)
                out.flush()
            return proc.wait()
        finally:
            stop_process_group(proc)
            done.set()
            follower.join()
