"""The hospital daemon: check the site's data, prepare its cache, then keep a Flower SuperNode
connected to the coordinator, restarting it with backoff whenever it exits.

flower-supernode itself retries a lost connection (no retry limit by default); the daemon covers
what it gives up on: a coordinator that is down when the node starts, a refused key, a crash.
Everything the SuperNode's ClientApp needs comes from ``hospital.yaml`` through its node config.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from client.audit import AUDIT_LOG_KEY
from client.task import DP_BUDGET_KEY
from common import config
from common.config import ConfigError
from common.flower_process import flower_env, stop_process_group
from common.preprocess import PipelineConfig

log = logging.getLogger("ecgfl.hospital")
STABLE_S = 60.0  # a SuperNode that ran this long resets the backoff
# flower-supernode logs its exit code (flwr.supercore.exit.ExitCode) but exits with 1
EXIT_CODE = re.compile(r"Exit Code: (\d+)")
FLOWER_ERROR = re.compile(r"\[code: \d+\][^\n]*")
FATAL = {302: "its private key is invalid", 303: "node authentication needs TLS"}
REFUSED = 305  # the SuperLink answered but would not admit this node


@dataclass
class HospitalConfig:
    """``hospital.yaml``: this site, its coordinator, and where its files live.

    Relative paths are relative to the YAML file.
    """

    site: str
    superlink: str  # the coordinator's HOST:PORT
    data_dir: str  # folder of ECG records (read only; never modified)
    root_certificates: str = "ca.crt"  # the federation's CA: proves the coordinator is ours
    private_key: str = ""  # this site's OpenSSH key: proves to the coordinator we are this site
    format: str | None = None  # detected when omitted
    cache_dir: str = "cache"
    output_dir: str = "output"  # fine-tuned models: they stay here
    audit_log: str = "audit.jsonl"
    log_file: str = "supernode.log"
    state_dir: str = "state"  # the SuperNode's working directory and FLWR_HOME
    runtime_port: int = 9094  # local ClientApp API; distinct per SuperNode on one host
    labels: str = "seed6"  # label space the data check reports on
    pipeline: PipelineConfig | None = None  # the federation's; None = the default pipeline
    max_backoff_s: float = 300.0
    # This hospital's own DP-SGD budget per run: set, it trains only under DP-SGD and never past
    # this epsilon, whatever budget (or none) the coordinator's run asks for.
    dp_max_epsilon: float | None = None

    def validate(self) -> None:
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"superlink={self.superlink!r}: expected HOST:PORT")
        if not 0 < self.runtime_port < 65536 or self.max_backoff_s < 1:
            raise ValueError("runtime_port must be 1..65535 and max_backoff_s at least 1")
        quoted = [
            k
            for k in ("site", "data_dir", "cache_dir", "output_dir", "audit_log")
            if '"' in getattr(self, k)
        ]
        if quoted:
            raise ValueError(f"{quoted}: a double quote cannot pass through Flower's node config")
        if self.dp_max_epsilon is not None and self.dp_max_epsilon <= 0:
            raise ValueError("dp_max_epsilon must be > 0 (or omitted)")

    @classmethod
    def load(cls, path: str | Path) -> HospitalConfig:
        cfg = config.load(cls, path)
        base = Path(path).resolve().parent

        def absolute(p: str) -> str:
            return str(base / Path(p).expanduser()) if p else p

        return replace(
            cfg,
            **{
                k: absolute(getattr(cfg, k))
                for k in (
                    "data_dir",
                    "root_certificates",
                    "private_key",
                    "cache_dir",
                    "output_dir",
                    "audit_log",
                    "log_file",
                    "state_dir",
                )
            },
        )


def check(cfg: HospitalConfig, insecure: bool) -> None:
    """Refuse to start on what would only fail later: missing data, keys or certificates."""
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
        raise ConfigError(f"data_dir {cfg.data_dir}: no readable ECG record")


def prepare(cfg: HospitalConfig) -> None:
    """Build the preprocessed cache now, so the first round does not pay for it."""
    from common.cache import SiteCache

    cache = SiteCache.prepare(
        Path(cfg.data_dir),
        Path(cfg.cache_dir),
        cfg.pipeline or PipelineConfig(),
        cfg.format,
        workers=os.cpu_count() or 1,
        progress=False,
    )
    log.info("cache ready: %s (%d records)", cache.path, len(cache))


def node_config(cfg: HospitalConfig) -> str:
    """What the ClientApp learns about this site (client.task.open_site reads these keys)."""
    values = {
        "site": cfg.site,
        "data-dir": cfg.data_dir,
        "cache-dir": cfg.cache_dir,
        "output-dir": cfg.output_dir,
        AUDIT_LOG_KEY: cfg.audit_log,
    }
    if cfg.format:
        values["format"] = cfg.format
    if cfg.dp_max_epsilon is not None:
        values[DP_BUDGET_KEY] = str(cfg.dp_max_epsilon)
    return " ".join(f'{k}="{v}"' for k, v in values.items())


def supernode_command(cfg: HospitalConfig, insecure: bool) -> list[str]:
    command = [
        "flower-supernode",
        "--superlink",
        cfg.superlink,
        "--node-config",
        node_config(cfg),
        "--host",
        "127.0.0.1",
        "--port",
        str(cfg.runtime_port),
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


def exit_reason(log_tail: str) -> tuple[int | None, str]:
    """Flower's exit code and its explanation, from what the SuperNode logged before exiting."""
    codes = EXIT_CODE.findall(log_tail)
    code = int(codes[-1]) if codes else None
    detail = " ".join(FLOWER_ERROR.findall(log_tail))
    if code in FATAL:
        return code, f"{FATAL[code]} {detail}".strip()
    if code == REFUSED:
        return code, f"the coordinator refused this site (is its key registered?) {detail}".strip()
    return code, f"exit code {code} {detail}".strip() if code else "it stopped unexpectedly"


class Daemon:
    """Runs flower-supernode until asked to stop; restarts it with exponential backoff."""

    def __init__(self, cfg: HospitalConfig, insecure: bool) -> None:
        self.cfg = cfg
        self.command = supernode_command(cfg, insecure)
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None

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
        state = Path(self.cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        with open(self.cfg.log_file, "ab") as out:
            return subprocess.Popen(
                self.command,
                env=flower_env(state / "flwr"),
                cwd=state,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def run(self) -> int:
        backoff = 1.0
        while not self.stopping.is_set():
            started, offset = time.monotonic(), self._log_size()
            self.proc = self._spawn()
            log.info(
                "SuperNode started (pid %d), connecting to %s", self.proc.pid, self.cfg.superlink
            )
            while self.proc.poll() is None and not self.stopping.wait(0.5):
                pass
            if self.stopping.is_set():
                break
            code, reason = exit_reason(self._log_since(offset))
            if code in FATAL:
                log.error("SuperNode cannot run: %s; see %s", reason, self.cfg.log_file)
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
        log.info("stopped")
        return 0


def start(cfg: HospitalConfig, insecure: bool = False, check_records: bool = True) -> int:
    """Check, prepare, then serve until SIGTERM/SIGINT."""
    handler = logging.FileHandler(cfg.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if insecure:
        log.warning("INSECURE: plaintext connection and no node authentication; test setups only")
    check(cfg, insecure)
    if check_records:
        check_data(cfg)
    prepare(cfg)
    daemon = Daemon(cfg, insecure)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, daemon.stop)
    return daemon.run()
