"""docs/deployment.md runs as written: its ``sh`` blocks, in order, from a working folder that
holds a clone named ``ecgfl`` (the default clone name, which Flower's CLI once mistook for a
project), set up a coordinator and two hospitals on loopback, run a 2-round study with
fine-tuning, predict, export and stop. Only the front door's port is changed (to a free one).
"""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common.flower_process import APP_DIR
from server import front_door, runs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not front_door.DEBIAN_NGINX.is_file(),
        reason=f"the coordinator's front door needs nginx ({front_door.INSTALL_HINT})",
    ),
]
SITES = ("charite", "ukb")
GUIDE = APP_DIR / "docs" / "deployment.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
STOP = (
    "ecgfl-hospital stop --config federation/hospitals/charite/hospital.yaml; "
    "ecgfl-hospital stop --config federation/hospitals/ukb/hospital.yaml; "
    "ecgfl-coordinator stop --config federation/coordinator/coordinator.yaml"
)


def shell_blocks(text: str) -> list[str]:
    return SH_BLOCK.findall(text)


def free_port() -> int:
    """A port p with p + 1 free too (the SuperLink's default)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free consecutive ports")


def working_folder(root: Path) -> Path:
    """A folder that holds a clone of this project named ``ecgfl``, as the guide assumes."""
    if (APP_DIR / ".git").exists():
        subprocess.run(["git", "clone", "-q", str(APP_DIR), str(root / "ecgfl")], check=True)
    else:  # an unpacked release: what matters is a folder with a pyproject.toml
        (root / "ecgfl").mkdir()
        shutil.copy(APP_DIR / "pyproject.toml", root / "ecgfl")
    return root


def check_run(run_dir: Path) -> None:
    """Both hospitals trained and were evaluated in both rounds and fine-tuned; the fine-tuned
    models stayed at the hospitals."""
    log = runs.entries(run_dir)
    for rnd in (1, 2):
        for phase in ("train", "evaluate"):
            (entry,) = [e for e in log if e["round"] == rnd and e["phase"] == phase]
            assert set(entry["sites"]) == set(SITES) and entry["failed"] == []
    (ft,) = [e for e in log if e["phase"] == "finetune"]
    assert set(ft["sites"]) == set(SITES)
    report = (run_dir / "report.md").read_text()
    assert all(f"| {site} |" in report for site in SITES) and "| charite, ukb |" in report
    assert (run_dir / "checkpoints" / "round-0002.pt").exists()
    assert (run_dir / "global_model.pt").exists()
    assert set(json.loads((run_dir / "sites.json").read_text()).values()) == set(SITES)
    assert not list(run_dir.rglob("finetuned.pt"))


def check_audit_log(path: Path) -> None:
    """Every message is logged; only train replies carry weights, and only as shapes."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    received = [e["message_type"] for e in entries if e["event"] == "received"]
    assert received.count("train") == 2 and received.count("evaluate") == 2
    assert received.count("train.finetune") == 1
    for e in (e for e in entries if e["event"] == "sent" and e["message_type"] != "query"):
        kinds = {name: r["kind"] for name, r in e["records"].items()}
        if e["message_type"] == "train":
            assert kinds == {"arrays": "arrays", "metrics": "metrics", "site": "config"}
            arrays = e["records"]["arrays"]["arrays"].values()
            assert all(set(a) == {"shape", "dtype", "bytes"} for a in arrays)
        else:
            assert kinds == {"metrics": "metrics", "site": "config"}  # no weights leave


def test_the_guide_has_the_whole_walk_through():
    commands = " ".join(shell_blocks(GUIDE.read_text()))
    for step in (
        "ecgfl-coordinator provision",
        "ecgfl-coordinator start",
        "ecgfl-hospital start",
        "ecgfl-coordinator status",
        "ecgfl-coordinator init-experiment",
        "ecgfl-coordinator run",
        "ecgfl-coordinator logs",
        "ecgfl-hospital audit",
        "ecgfl-hospital predict",
        "ecgfl-hospital export",
        "ecgfl-hospital stop",
        "ecgfl-coordinator stop",
    ):
        assert step in commands, f"docs/deployment.md has no sh block with {step}"


def test_the_deployment_guide_runs_as_written(tmp_path):
    work = working_folder(tmp_path)
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    outputs: list[tuple[str, str]] = []
    try:
        for block in shell_blocks(GUIDE.read_text()):
            script = block.replace("localhost:8000", f"localhost:{port}")
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
            outputs.append((block, done.stdout + done.stderr))
            assert done.returncode == 0, f"{block}\nexited {done.returncode}:\n{outputs[-1][1]}"
    finally:
        subprocess.run(["bash", "-c", STOP], cwd=work, env=env, capture_output=True, timeout=180)

    def output_of(command: str) -> str:
        return next(out for block, out in outputs if command in block)

    status = output_of("ecgfl-coordinator status")
    for site in SITES:
        assert re.search(rf"^\| {site} \| connected \|", status, re.M), status
    logs = output_of("ecgfl-coordinator logs")
    assert re.search(r"round 2 train: charite, ukb$", logs, re.M), logs
    assert "report: " in logs and "study-1/report.md" in logs
    audit = output_of("ecgfl-hospital audit")
    rows = [r for r in audit.splitlines() if r.startswith("| 20")]
    messages = [r.split("|")[4].strip() for r in rows]
    assert messages.count("train") == 2 and messages.count("train.finetune") == 1, audit
    assert all("| answered |" in r for r in rows if "query" not in r), audit
    predicted = output_of("ecgfl-hospital predict")
    assert re.search(r"R000001.csv: .* \([\d.]+ s at \d+ Hz, \d+ windows?\)", predicted)
    assert re.search(r"NORM \d\.\d{3}.*AFIB \d\.\d{3}", predicted), predicted
    assert "ERROR" not in predicted, predicted
    charite = work / "federation" / "hospitals" / "charite"
    assert (charite / "output" / "study-1" / "finetuned.pt").is_file()
    assert stat.S_IMODE((work / "charite-study-1.onnx").stat().st_mode) == 0o600
    coordinator_state = work / "federation" / "coordinator" / "state"
    check_run(coordinator_state / "runs" / "study-1")
    check_audit_log(charite / "audit.jsonl")
    hospital_log = (charite / "supernode.log").read_text()
    assert "as site charite" in hospital_log and "fine-tuned model kept at" in hospital_log
    states = [coordinator_state]
    states += [work / "federation" / "hospitals" / s / "state" for s in SITES]
    logs_written = [charite / "supernode.log", charite / "audit.jsonl"]
    files = [p for f in states for p in [*f.rglob("*"), *logs_written] if p.is_file()]
    text = {p: p.read_bytes() for p in files}
    coloured = [p for p, data in text.items() if b"\x1b" in data and b"\x00" not in data]
    assert not coloured, f"terminal colour codes in {coloured}"
