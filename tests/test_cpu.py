"""The thread policy: cores from affinity and quota, OpenMP settings, what Flower's children get."""

import json
import os
import subprocess
import sys

import pytest

from common import cpu


def _child(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (its own environment and affinity) and read its JSON."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.e2e  # a fresh interpreter each: real processes
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_cores_follow_the_process_affinity_not_the_machine():
    got = _child(
        "import json, os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from common import cpu; print(json.dumps({'cores': cpu.available_cores(), "
        "'machine': os.cpu_count()}))"
    )
    assert got["cores"] == 1 and got["machine"] >= 1


@pytest.mark.parametrize(("text", "expected"), [("150000 100000", 1), ("max 100000", None)])
def test_a_cgroup_quota_caps_the_cores(tmp_path, monkeypatch, text, expected):
    (tmp_path / "cpu.max").write_text(text + "\n")
    monkeypatch.setattr(cpu, "_CGROUP_V2", tmp_path / "cpu.max")
    affinity = len(os.sched_getaffinity(0))
    assert cpu.available_cores() == (min(expected, affinity) if expected else affinity)


@pytest.mark.e2e
def test_the_policy_sets_threads_and_passive_waiting_but_keeps_a_users_own():
    code = (
        "import json, os; from common import cpu; n = cpu.apply(); import torch; "
        "from common.flower_process import flower_env; env = flower_env(__import__('pathlib')"
        ".Path('.')); print(json.dumps({'n': n, 'torch': torch.get_num_threads(), "
        "'wait': os.environ['OMP_WAIT_POLICY'], 'child': env.get('OMP_NUM_THREADS'), "
        "'worker': (cpu.apply(1), torch.get_num_threads())[1]}))"
    )
    ours = _child(code)
    assert ours["n"] == cpu.available_cores() == ours["torch"] and ours["wait"] == "PASSIVE"
    assert ours["worker"] == 1  # a pool's worker: asked for one thread, it gets one
    assert ours["child"] is None  # Ray sets each simulated site's own from its num_cpus
    users = _child(code, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert users == {"n": 1, "torch": 1, "wait": "ACTIVE", "child": "1", "worker": 1}
