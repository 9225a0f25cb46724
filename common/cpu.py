"""How many cores a process may use, and the one thread policy every computing process follows.

The machine's core count (``os.cpu_count()``) is not what a process gets: its CPU affinity and a
container's CPU quota can give it fewer. And when processes share cores, OpenMP threads that
spin while they wait for each other burn the cores the other processes need: on 2 cores beside
a 2-thread load, the pooled baseline (one process, two spinning threads) ran 10x slower, while
the federation's one-thread workers slowed 1.3x. So every CLI, worker and benchmark sets its
threads from ``available_cores`` and lets waiting threads sleep.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")


def _quota() -> float | None:
    """CPUs a cgroup CPU quota allows (a container's ``--cpus``), or None when unlimited."""
    try:
        if _CGROUP_V2.exists():
            quota, period = _CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if _CGROUP_V1.exists():
            quota = int(_CGROUP_V1.read_text())
            period = int(_CGROUP_V1.with_name("cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def available_cores() -> int:
    """The cores this process may run on: its affinity, capped by a cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _quota()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


#: Whether this process's OMP_NUM_THREADS is the policy's (not the user's): children that get
#: their own thread count (Ray's workers) must not inherit it.
threads_from_policy = False


def apply(threads: int | None = None) -> int:
    """Set this process's policy (before torch starts its thread pool where possible; a user's
    own OMP_* settings win) and return its thread count."""
    global threads_from_policy
    if threads is not None or "OMP_NUM_THREADS" not in os.environ:
        threads_from_policy = True
        os.environ["OMP_NUM_THREADS"] = str(threads or available_cores())
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        n = max(1, int(os.environ["OMP_NUM_THREADS"].split(",")[0]))
    except ValueError:  # a malformed user setting: OpenMP ignores it too
        n = available_cores()
    if "torch" in sys.modules:  # loaded already: its pool follows set_num_threads from now on
        sys.modules["torch"].set_num_threads(n)
    return n
