"""The hospital daemon: check the site's data, prepare its cache, then keep a Flower SuperNode
connected to the coordinator, restarting it with backoff whenever it exits.

The SuperNode runs with ``--isolation process``: it executes no app code. The daemon's
``Launcher`` takes each task from it with the hospital's own SuperExec secret and starts the
hospital's ClientApp runner (``client.runner``), which runs only the installed ClientApp and only
for bundles the hospital approved. flower-supernode itself retries a lost connection; the daemon
covers what it gives up on (a coordinator down at start, a crash) and stops for good on what
cannot succeed by retrying (a certificate it must not trust, a key the coordinator refuses).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient

from client.audit import AUDIT_LOG_KEY
from client.node import PIPELINE_KEY
from client.policy import POLICY_KEY
from common import cpu, flower_process
from common.config import ConfigError
from common.errors import DataError
from common.flower_process import (
    copy_plain,
    flower_env,
    is_running,
    private_secret,
    signal_ready,
    stop_process_group,
)
from common.hospital import HospitalConfig
from common.preprocess import PipelineConfig

log = logging.getLogger("ecgfl.hospital")
STABLE_S = 60.0  # a SuperNode that ran this long resets the backoff
# flower-supernode logs its exit code (flwr.supercore.exit.ExitCode) but exits with 1
EXIT_CODE = re.compile(r"Exit Code: (\d+)")
FLOWER_ERROR = re.compile(r"\[code: \d+\][^\n]*")
FATAL_CODES = {302: "its private key is invalid", 303: "node authentication needs TLS"}
# What no retry can fix, by what the SuperNode logged (first match wins): the daemon stops.
FATAL_LOGS = (
    (
        "certificate has expired",
        "the coordinator's TLS certificate has expired (or this machine's clock is wrong): the "
        "coordinator must re-issue it",
    ),
    (
        "mismatch, certificate is not valid for",
        "the coordinator's TLS certificate does not name the address in hospital.yaml "
        "'superlink': wrong address, or not this federation's coordinator",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the coordinator's TLS certificate is not signed by this hospital's CA "
        "(root_certificates): wrong ca.crt, or not this federation's coordinator",
    ),
)
REFUSED_LOG = "[code: 2004]"  # the coordinator would not activate this site's key
ADMITTED = re.compile(r"SuperNode ID: \d+")  # logged once the coordinator admitted the key
# A key the coordinator admitted before can be refused while its last session still counts as
# online (a crash: two missed 30 s heartbeats); past this, it was unregistered.
REFUSED_GRACE_S = 150.0


def preflight(cfg: HospitalConfig, insecure: bool) -> None:
    """Refuse to start on what would only fail later: missing data, keys or certificates, or a
    daemon of this site that already runs."""
    if (pid := running_pid(cfg)) is not None:
        raise ConfigError(f"a daemon already runs for site {cfg.site} (pid {pid})")
    if not Path(cfg.data_dir).is_dir():
        raise ConfigError(
            f"data_dir {cfg.data_dir}: no such folder (edit data_dir in hospital.yaml)"
        )
    if insecure:
        return
    for what, path in (
        ("root_certificates", cfg.root_certificates),
        ("private_key", cfg.private_key),
    ):
        if not path or not Path(path).is_file():
            raise ConfigError(f"{what} {path or '(not set)'}: no such file")
    if Path(cfg.private_key).stat().st_mode & 0o077:
        raise ConfigError(f"{cfg.private_key}: readable by others; chmod 600 it")


def check_data(cfg: HospitalConfig) -> None:
    """Read every record as training would; stop if none is usable."""
    from common.labels import LabelSpace
    from common.sitecheck import check_site

    report = check_site(Path(cfg.data_dir), cfg.format, LabelSpace.load(cfg.labels))
    log.info(
        "data check: %d records found, %d readable, %d skipped",
        report.found,
        report.readable,
        len(report.skipped),
    )
    for s in report.skipped:
        log.warning("skipped %s: %s: %s", s["record_id"], s["path"], s["reason"])
    if report.readable == 0:
        raise DataError(f"data_dir {cfg.data_dir}: no readable ECG record")


def prepare(cfg: HospitalConfig) -> None:
    """Build the preprocessed cache now, so the first round does not pay for it."""
    from common.cache import SiteCache

    cache = SiteCache.prepare(
        Path(cfg.data_dir),
        Path(cfg.cache_dir),
        cfg.pipeline or PipelineConfig(),
        cfg.format,
        workers=cpu.available_cores(),
        progress=False,
    )
    log.info("cache ready: %s (%d records)", cache.path, len(cache))


def node_values(cfg: HospitalConfig) -> dict[str, str]:
    """What the ClientApp learns about this site (client.task reads these keys). The hospital's
    runner sets them on every task from ``hospital.yaml``."""
    values = {
        "site": cfg.site,
        "data-dir": cfg.data_dir,
        "cache-dir": cfg.cache_dir,
        "output-dir": cfg.output_dir,
        AUDIT_LOG_KEY: cfg.audit_log,
        POLICY_KEY: cfg.policy.to_json(),
        PIPELINE_KEY: (cfg.pipeline or PipelineConfig()).fingerprint,
    }
    if cfg.format:
        values["format"] = cfg.format
    return values


def hospital_secret(cfg: HospitalConfig) -> Path:
    """The secret that lets only this daemon take the SuperNode's tasks."""
    return private_secret(Path(cfg.state_dir) / "superexec.secret")


def supernode_command(cfg: HospitalConfig, insecure: bool) -> list[str]:
    command = [
        "flower-supernode",
        "--superlink",
        cfg.superlink,
        "--node-config",
        f'site="{cfg.site}"',
        "--host",
        "127.0.0.1",
        "--port",
        str(cfg.runtime_port),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(hospital_secret(cfg)),
    ]
    if insecure:
        return [*command, "--insecure"]
    return [
        *command,
        "--root-certificates",
        cfg.root_certificates,
        "--auth-supernode-private-key",
        cfg.private_key,
    ]


def exit_reason(log_tail: str) -> tuple[str, str]:
    """("fatal" | "refused" | "retry", explanation) from what the SuperNode logged before
    exiting: fatal when retrying cannot help, so the daemon stops instead of knocking forever."""
    codes = EXIT_CODE.findall(log_tail)
    code = int(codes[-1]) if codes else None
    detail = " ".join(FLOWER_ERROR.findall(log_tail))
    if code in FATAL_CODES:
        return "fatal", f"{FATAL_CODES[code]} {detail}".strip()
    for needle, reason in FATAL_LOGS:
        if needle in log_tail:
            return "fatal", reason
    if REFUSED_LOG in log_tail:
        return "refused", (
            "the coordinator refused this site's key: it is not registered there (the "
            "coordinator's operator provisions and registers each hospital)"
        )
    return "retry", f"exit code {code} {detail}".strip() if code else "it stopped unexpectedly"


class Launcher(threading.Thread):
    """Takes the SuperNode's ClientApp tasks with the hospital's SuperExec secret and starts the
    hospital's runner (``client.runner``) for each: Flower's ``flower-superexec`` would start
    ``flwr-clientapp``, which installs and runs whatever bundle the coordinator sent."""

    def __init__(self, cfg: HospitalConfig, config_path: Path, stopping: threading.Event) -> None:
        super().__init__(name="ecgfl-launcher", daemon=True)
        self.cfg, self.config_path, self.stopping = cfg, config_path, stopping
        self.address = f"127.0.0.1:{cfg.runtime_port}"
        self.tasks: list[subprocess.Popen] = []
        self.failed = False

    def _client(self) -> RuntimeHttpClient:
        invoker = make_simple_http_retry_invoker()
        invoker.max_tries = 1  # this loop retries itself, and must notice a stop
        secret = hospital_secret(self.cfg).read_bytes()
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,  # the SuperNode's Runtime API listens on loopback only
            root_certificates=None,
            interceptors=[
                SuperExecAuthHttpInterceptor(
                    master_secret=secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"}
                )
            ],
            retry_invoker=invoker,
        )

    def _launch(self, token: str) -> None:
        command = [
            sys.executable,
            "-m",
            "client.runner",
            "--config",
            str(self.config_path),
            "--runtime-api-address",
            self.address,
            "--token",
            token,
            "--parent-pid",
            str(os.getpid()),
        ]
        state = Path(self.cfg.state_dir)
        with open(self.cfg.log_file, "ab") as out:
            self.tasks.append(
                subprocess.Popen(
                    command,
                    env=flower_env(state / "flwr"),
                    cwd=state,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )

    def run(self) -> None:
        try:
            self._serve()
        except Exception:  # without a launcher no task runs: the daemon must not look healthy
            log.exception("the ClientApp launcher failed; stopping")
            self.failed = True
            self.stopping.set()

    def _serve(self) -> None:
        client = self._client()
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        try:
            while not self.stopping.wait(0.5):
                self.tasks = [t for t in self.tasks if t.poll() is None]
                try:
                    answer = client.AcquireTask(request)
                except Exception as exc:  # noqa: BLE001 - SuperNode (re)starting: try again
                    log.debug("no task from the SuperNode: %s", exc)
                    continue
                if answer.HasField("task") and answer.token:
                    log.info(
                        "task %d of run %d: starting the runner",
                        answer.task.task_id,
                        answer.task.run_id,
                    )
                    self._launch(answer.token)
        finally:
            client.close()
            for task in self.tasks:
                task.terminate()


class Daemon:
    """Runs flower-supernode until asked to stop; restarts it with exponential backoff."""

    def __init__(
        self, cfg: HospitalConfig, insecure: bool, config_path: Path, ready_fd: int | None = None
    ) -> None:
        self.cfg = cfg
        self.ready_fd = ready_fd  # told once the coordinator admitted this site (--detach)
        self.command = supernode_command(cfg, insecure)
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.launcher = Launcher(cfg, config_path, self.stopping)
        self.refused_since: float | None = None

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def _log_size(self) -> int:
        path = Path(self.cfg.log_file)
        return path.stat().st_size if path.exists() else 0

    def _log_since(self, offset: int) -> str:
        with open(self.cfg.log_file, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def _spawn(self) -> subprocess.Popen:
        """Start the SuperNode; its output goes to the log without Flower's colour codes."""
        state = Path(self.cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            self.command,
            env=flower_env(state / "flwr"),
            cwd=state,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

        def copy() -> None:
            with open(self.cfg.log_file, "a") as out:
                copy_plain(proc.stdout, out)

        self.copier = threading.Thread(target=copy, name="supernode-log", daemon=True)
        self.copier.start()
        return proc

    @property
    def _admitted_marker(self) -> Path:
        return Path(self.cfg.state_dir) / "admitted"

    def _watch(self, offset: int) -> None:
        """Wait for the SuperNode to exit; say once when the coordinator admitted this site."""
        connected = False
        while self.proc.poll() is None and not self.stopping.wait(0.5):
            if not connected and ADMITTED.search(self._log_since(offset)):
                connected = True
                log.info(
                    "connected to the coordinator %s as site %s", self.cfg.superlink, self.cfg.site
                )
                if not self._admitted_marker.exists():
                    self._admitted_marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
                signal_ready(self.ready_fd)
                self.ready_fd = None

    def _gives_up(self, verdict: str, reason: str) -> bool:
        """Stop for good on what retrying cannot fix. A refused key is final unless the
        coordinator admitted it before (its last session may still count as online)."""
        if verdict == "refused":
            now = time.monotonic()
            self.refused_since = self.refused_since or now
            if self._admitted_marker.exists() and now - self.refused_since < REFUSED_GRACE_S:
                return False
        elif verdict == "retry":
            self.refused_since = None
            return False
        log.error("SuperNode cannot run: %s; stopping (log: %s)", reason, self.cfg.log_file)
        self.stopping.set()
        return True

    def run(self) -> int:
        backoff = 1.0
        self.launcher.start()
        while not self.stopping.is_set():
            started, offset = time.monotonic(), self._log_size()
            self.proc = self._spawn()
            log.info(
                "SuperNode started (pid %d), connecting to %s", self.proc.pid, self.cfg.superlink
            )
            self._watch(offset)
            if self.stopping.is_set():
                break
            self.copier.join(timeout=10)  # all it wrote, before reading why it exited
            verdict, reason = exit_reason(self._log_since(offset))
            if self._gives_up(verdict, reason):
                self.launcher.join(timeout=10)
                return 1
            if time.monotonic() - started > STABLE_S:
                backoff = 1.0
            log.warning(
                "SuperNode exited: %s; restarting in %.0f s (log: %s)",
                reason,
                backoff,
                self.cfg.log_file,
            )
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, self.cfg.max_backoff_s)
        if self.proc is not None:
            stop_process_group(self.proc)
        self.launcher.join(timeout=10)
        log.info("stopped")
        return 1 if self.launcher.failed else 0


def start(
    cfg: HospitalConfig,
    config_path: Path,
    insecure: bool = False,
    check_records: bool = True,
    ready_fd: int | None = None,
) -> int:
    """Check, prepare, then serve until SIGTERM/SIGINT. The runner re-reads ``config_path`` for
    every task, so an approval takes effect without a restart."""
    handler = logging.FileHandler(cfg.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if insecure:
        log.warning("INSECURE: plaintext connection and no node authentication; test setups only")
    preflight(cfg, insecure)
    if check_records:
        check_data(cfg)
    prepare(cfg)
    daemon = Daemon(cfg, insecure, config_path.resolve(), ready_fd)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, daemon.stop)
    pid_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    pid_file(cfg).write_text(f"{os.getpid()}\n")
    try:
        return daemon.run()
    finally:
        pid_file(cfg).unlink(missing_ok=True)


def detach(cfg: HospitalConfig, argv: list[str], limit_s: float = 900) -> int:
    """Run ``ecgfl-hospital ARGV`` (a foreground start) in a session of its own; return once the
    coordinator admitted this site, with the reason if the daemon stopped first, or leave it
    trying after ``limit_s`` (a coordinator that is down is waited for, as in the foreground)."""
    out = Path(cfg.state_dir) / "daemon.out"
    proc, ready = flower_process.detach("client.cli", argv, out, Path(cfg.state_dir), limit_s)
    if ready:
        print(f"connected to the coordinator {cfg.superlink} as site {cfg.site} (pid {proc.pid})")
    elif proc.poll() is None:
        print(f"not connected after {limit_s:.0f} s; the daemon keeps trying (log: {cfg.log_file})")
    else:
        return proc.returncode or 1
    print(f"log: {cfg.log_file}; stop it with: ecgfl-hospital stop --config {argv[2]}")
    return 0


def pid_file(cfg: HospitalConfig) -> Path:
    return Path(cfg.state_dir) / "daemon.pid"


def running_pid(cfg: HospitalConfig) -> int | None:
    """The daemon's pid from its pid file, if that process still runs."""
    try:
        pid = int(pid_file(cfg).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_running(pid) else None


def stop(cfg: HospitalConfig, grace_s: float = 30.0) -> bool:
    """SIGTERM the running daemon (it stops its SuperNode and tasks) and wait for it to go."""
    pid = running_pid(cfg)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running_pid(cfg) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if running_pid(cfg) is not None:
        raise ConfigError(f"the daemon (pid {pid}) did not stop within {grace_s:.0f} s")
    return True
