"""A simulation stopped by SIGTERM (a batch scheduler, `timeout`, `kill`) stops what it started."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_simulation import TINY

from common.flower_process import is_running

SIMULATE = Path(sys.executable).with_name("ecgfl-simulate")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().startswith("ray::")
    except OSError:
        return False


@pytest.mark.e2e
def test_sigterm_during_the_federation_stops_the_superlink_and_ray(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "baselines": {"local_only": False}}))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [str(SIMULATE), "run", "--quiet", "--config", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    started: set[int] = set()
    while not any(ray_worker(p) for p in started):  # the federation's sites have started
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no Ray worker started within 240 s"
        time.sleep(0.5)
        started = descendants(proc.pid)  # the SuperLink, the ServerApp, Ray and its workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while any(is_running(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in started if is_running(p)]
    assert not left, f"still running after SIGTERM: {left}"
