"""Run the federated app on Flower's Simulation Engine: a private SuperLink, then ``flwr run``.

Each run gets its own SuperLink on a free loopback port, its own FLWR_HOME inside the run
directory, and runtime dependency installation off (no network, and the installed environment is
the one to use). Everything started here is stopped again, by process group, also on failure.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import tomli_w

from common.flower_process import (
    APP_DIR,
    answers,
    copy_plain,
    flower_env,
    stop_process_group,
    wait_ready,
    write_connection,
)

#: The ClientApp a simulation's sites run (the production one plus where each ran).
SITE_APP = "simulations.site_app:app"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def simulation_superlink(flwr_home: Path, ray_address: str | None = None) -> Iterator[str]:
    """A SuperLink in simulation mode for one run; yields the connection name for ``flwr run``.
    ``ray_address``: the simulation runs its sites on that Ray cluster (Ray reads RAY_ADDRESS
    where Flower starts it) instead of a private one."""
    port = _free_port()
    write_connection(flwr_home, "sim", f"127.0.0.1:{port}", None)
    log_path = flwr_home / "superlink.log"
    command = [
        "flower-superlink",
        "--simulation",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    env = flower_env(flwr_home)
    # A site given no GPU must not see one: Ray hides them from it only with this set (a
    # CPU-only run stays CPU-only, and numerically the same, on a GPU machine).
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "1"
    # A cluster only when asked for: left unset, Ray attaches to the machine's latest cluster
    # (/tmp/ray/ray_current_cluster), anyone's; "local" always starts a private one.
    env["RAY_ADDRESS"] = ray_address or "local"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=flwr_home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(
            proc, lambda: answers(f"http://127.0.0.1:{port}/health"), "flower-superlink", log_path
        )
        yield "sim"
    finally:
        stop_process_group(proc)


def app_dir(flwr_home: Path, clientapp: str) -> Path:
    """The Flower app to run: the project with another ClientApp ("module:attribute"). Its
    folder holds only the project's pyproject.toml with that one component changed; the code
    is the installed project's."""
    project = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    project["tool"]["flwr"]["app"]["components"]["clientapp"] = clientapp
    folder = flwr_home / "app"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def flwr_run(
    flwr_home: Path,
    connection: str,
    app: Path,
    run_config: Path,
    federation: str,
    log_path: Path,
    poll: Callable[[], None] | None = None,
) -> int:
    """``flwr run`` the app and wait for it to end, calling ``poll`` four times a second.
    ``federation`` is Flower's --federation-config (sites and their resources)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                "flwr",
                "run",
                str(app),
                connection,
                "--run-config",
                str(run_config),
                "--federation-config",
                federation,
                "--stream",
            ],
            env=flower_env(flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        copier = threading.Thread(target=copy_plain, args=(proc.stdout, log), daemon=True)
        copier.start()
        try:
            while proc.poll() is None:
                if poll is not None:
                    poll()
                time.sleep(0.25)
        finally:
            stop_process_group(proc)
            copier.join(timeout=10)
    if poll is not None:
        poll()
    return proc.returncode
