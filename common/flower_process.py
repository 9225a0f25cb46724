"""Starting and stopping Flower's own processes (SuperLink, SuperNode, ``flwr``) the same way
everywhere: this environment's binaries, runtime dependency installation off, no telemetry, a
FLWR_HOME of the caller's choosing, and a process group that is stopped as a whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from common import cpu
from common.config import ConfigError

APP_DIR = Path(__file__).resolve().parents[1]  # the project root: the Flower app's pyproject
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Flower colours its log lines whatever the output


def plain(text: str) -> str:
    """Text without terminal colour codes: logs and reports are read in files, not terminals."""
    return ANSI.sub("", text)


def copy_plain(stream: IO[str], *outputs: IO[str]) -> None:
    """Copy a process's output line by line, without colour codes, as it comes."""
    for line in stream:
        for out in outputs:
            out.write(plain(line))
            out.flush()


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a process's output, on one line, without terminal colours."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(plain(text).strip().splitlines()[-lines:])


def write_connection(flwr_home: Path, name: str, address: str, root_certificates: str | None):
    """FLWR_HOME/config.toml: the ``flwr`` CLI's one connection, ``name``, to the SuperLink at
    ``address``, verified with ``root_certificates`` (None: plain text, on loopback only)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    trust = (
        "insecure = true"
        if root_certificates is None
        else f"root-certificates = {json.dumps(root_certificates)}"
    )
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{trust}\n'
    )


def answers(url: str, ca: str | None = None, success: bool = True) -> bool:
    """Whether ``url`` answers (over TLS verified with ``ca`` for https; any status unless
    ``success``)."""
    import httpx  # 0.13 s to import: only the commands that start Flower's servers probe them

    verify: ssl.SSLContext | bool = False
    if ca:
        verify = ssl.create_default_context(cafile=ca)
        verify.check_hostname = False  # the chain is checked; the host may be any interface
    try:
        response = httpx.get(url, verify=verify, timeout=2)
    except httpx.HTTPError:
        return False
    return response.is_success or not success


def wait_ready(
    proc: subprocess.Popen,
    ready: Callable[[], bool],
    name: str,
    log: Path,
    limit_s: float = 60,
    pause: Callable[[float], None] = time.sleep,
) -> None:
    """Poll ``ready`` until it holds; a ConfigError naming ``log`` at once if the process exits,
    or after ``limit_s``. ``pause`` waits between polls (and may raise to give up)."""
    deadline = time.monotonic() + limit_s
    while not ready():
        if proc.poll() is not None:
            raise ConfigError(f"{name} exited ({proc.returncode}): {tail(log)} (see {log})")
        if time.monotonic() > deadline:
            raise ConfigError(f"{name} not ready after {limit_s:.0f} s; see {log}")
        pause(0.3)


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    if cpu.threads_from_policy:  # Ray gives each simulated site OMP_NUM_THREADS from its
        env.pop("OMP_NUM_THREADS", None)  # num_cpus where unset; ours would oversubscribe them
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONWARNINGS="ignore::FutureWarning",
    )
    bindir = str(Path(sys.executable).parent)  # flower-superlink & co. of this environment
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def private_secret(path: Path) -> Path:
    """A secret file (a SuperExec secret: who may take a SuperLink's or SuperNode's tasks; a
    dashboard's login token): made once, mode 0600, and refused if others can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: mode {mode:o}, readable by others; chmod 600 it (or delete it: a new one is "
            "made at start)"
        )
    return path


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process and everything it started, then SIGKILL what is left.

    Members can outlive the leader (Ray's agents do), so the whole group is waited for; and
    some descendants run in sessions of their own (Ray's raylet and its agents, under a
    simulation's SuperLink), so every process below the leader when it is stopped is too.
    """
    pgid = proc.pid  # started with start_new_session: its pid is the group id
    family = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    _signal_each(family, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (proc.poll() is None or _group_alive(pgid) or _signal_each(family, 0)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _signal_each(family, signal.SIGKILL)
    proc.wait()


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` now, with its start time (a pid reused later is not it)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parent, started[int(entry)] = int(fields[1]), fields[19]
            children.setdefault(parent, []).append(int(entry))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def _signal_each(processes: dict[int, str], signum: int) -> bool:
    """Send ``signum`` (0: none) to each of ``processes`` still running as itself (not a zombie,
    not a reused pid); whether any was."""
    any_running = False
    for pid, start in processes.items():
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and fields[19] == start:
                any_running = True
                os.kill(pid, signum)
    return any_running


def signal_ready(ready_fd: int | None) -> None:
    """Tell the ``detach`` that started this process that it is up."""
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)


def detach(
    module: str, argv: list[str], log_path: Path, cwd: Path, limit_s: float
) -> tuple[subprocess.Popen, bool]:
    """Run ``python -m MODULE ARGV --ready-fd N`` in a session of its own, output appended to
    ``log_path``, and wait up to ``limit_s`` until it calls ``signal_ready``.

    Returns the process and whether it said it is ready. A process that exited first has its
    output since the start copied to stderr (``process.returncode`` says how it ended).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    read_end, write_end = os.pipe()
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv, "--ready-fd", str(write_end)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=(write_end,),
            start_new_session=True,
            cwd=cwd,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        if select.select([ready], [], [], limit_s)[0] and ready.readline() == b"ready\n":
            return proc, True
    if proc.poll() is not None:
        proc.wait()
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            sys.stderr.write(plain(fh.read().decode(errors="replace")))
    return proc, False
