"""A hospital runs only code it approved, under limits it owns: bundle review and approval, the
hospital's runner refusing what it did not approve, and its policy against the coordinator's job."""

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord, Context, Metadata, RecordDict
from flwr.app.message.message import make_message

from client import bundle, runner
from client.policy import PolicyViolation, check_job, plain_name
from common.config import from_dict
from common.experiment import ExperimentConfig
from common.flower_process import APP_DIR, flower_env
from common.hospital import HospitalConfig, SitePolicy
from common.labels import LabelSpace
from common.protocol import Job

EVIL = b"""
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):
    index = open(str(context.node_config["data-dir"]) + "/index.csv").readline()
    return Message(RecordDict({"site": ConfigRecord({"name": index})}), reply_to=msg)
"""


def build_fab(app_dir: Path, out: Path) -> Path:
    """``flwr build`` of an app folder: the bundle ``flwr run`` would send."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [Path(sys.executable).parent / "flwr", "build", "--app", str(app_dir)],
        cwd=out,
        env=flower_env(out / "flwr"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    (fab,) = out.glob("*.fab")
    return fab


def with_file(fab: bytes, path: str, content: bytes | None) -> bytes:
    """The same bundle with one file replaced (or removed, for None)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if item.filename != path:
                dst.writestr(item, src.read(item))
        if content is not None:
            dst.writestr(path, content)
    return out.getvalue()


@pytest.fixture(scope="module")
def release_fab(tmp_path_factory) -> bytes:
    return build_fab(APP_DIR, tmp_path_factory.mktemp("fab")).read_bytes()


def test_the_installed_releases_own_bundle_is_recognised(release_fab):
    found = bundle.review(release_fab)
    assert found.is_installed_release and found.clientapp == "client.app:app"
    assert found.name.startswith("ecgfl/ecgfl ")
    assert bundle.approval(SitePolicy(), found) == "identical to the installed release"
    assert bundle.approval(SitePolicy(trust_installed_release=False), found) is None


def test_a_changed_clientapp_is_refused_and_its_diff_shown(release_fab):
    rogue = with_file(release_fab, "client/app.py", EVIL)
    found = bundle.review(rogue)
    assert not found.is_installed_release and list(found.changed) == ["client/app.py"]
    assert bundle.approval(SitePolicy(), found) is None
    text = bundle.describe(found)
    assert found.sha256 in text and "+    index = open(" in text
    # approving exactly these bytes admits them, and nothing else
    approved = SitePolicy(approved_apps={found.sha256: "reviewed"})
    assert bundle.approval(approved, found).startswith("approved by this hospital")
    other = bundle.review(with_file(rogue, "client/task.py", b"# another change\n"))
    assert bundle.approval(approved, other) is None


@pytest.mark.parametrize(
    ("path", "content", "field"),
    [
        ("client/evil.py", b"print(1)\n", "added"),
        ("common/config.py", None, "missing"),
        ("pyproject.toml", b'[tool.flwr.app.components]\nclientapp = "x:app"\n', "clientapp"),
    ],
)
def test_added_missing_or_redirected_code_is_not_the_release(release_fab, path, content, field):
    found = bundle.review(with_file(release_fab, path, content))
    assert not found.is_installed_release
    assert getattr(found, field) in ([path], "x:app")


def test_what_is_not_a_bundle_is_an_error_not_a_crash():
    with pytest.raises(bundle.BundleError, match="not a Flower app bundle"):
        bundle.review(b"PK\x03\x04 this is no zip")


def test_refused_bundles_are_kept_for_review_newest_first_and_bounded(release_fab, tmp_path):
    found = bundle.review(release_fab)
    path = bundle.keep_refused(tmp_path, release_fab, found, run_id=7)
    bundle.keep_refused(tmp_path, release_fab, found, run_id=9)
    assert bundle.refused_for_run(tmp_path, 7) == path == bundle.refused_for_run(tmp_path, 9)
    assert bundle.refused_for_run(tmp_path, 8) is None
    for i in range(bundle.KEEP + 3):
        other = with_file(release_fab, "README.md", f"{i}".encode())
        bundle.keep_refused(tmp_path, other, bundle.review(other), run_id=100 + i)
        os.utime(tmp_path / f"{bundle.review(other).sha256}.fab", (i + 1e9, i + 1e9))
    assert len(list(tmp_path.glob("*.fab"))) == bundle.KEEP


# --- the hospital's runner ------------------------------------------------------------------


@pytest.fixture
def hospital(tmp_path) -> tuple[Path, HospitalConfig]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "index.csv").write_text("record_id,patient 4711\n")
    path = tmp_path / "hospital.yaml"
    path.write_text(
        "# the hospital's own comment\n"
        + yaml.safe_dump({"site": "H1", "superlink": "coordinator:8000", "data_dir": "data"})
    )
    return path, HospitalConfig.load(path)


def _message(experiment: ExperimentConfig, run_name: str = "run-1", kind: str = "train"):
    config = Job.for_run(experiment, run_name).to_record()
    config["server-round"] = 1
    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    meta = Metadata(7, "m1", 0, 5, "", "1", time.time(), 600, kind)
    return make_message(meta, RecordDict({"arrays": arrays, "config": config}))


def _context() -> Context:
    return Context(7, 5, {"data-dir": "/nowhere"}, RecordDict(), {})


def _audit(cfg: HospitalConfig) -> list[dict]:
    return [json.loads(line) for line in Path(cfg.audit_log).read_text().splitlines()]


def test_an_unapproved_bundle_gets_a_refusal_an_audit_line_and_nothing_else(release_fab, hospital):
    _, cfg = hospital
    rogue = with_file(release_fab, "client/app.py", EVIL)
    reply = runner.handle(cfg, _message(ExperimentConfig()), _context(), rogue)
    assert reply.has_error() and not reply.has_content()
    sha = bundle.review(rogue).sha256
    assert reply.error.reason == f"app not approved by this hospital (bundle sha256 {sha})"
    (line,) = _audit(cfg)
    assert line["event"] == "refused" and line["bundle_sha256"] == sha
    assert "4711" not in Path(cfg.audit_log).read_text()
    assert (Path(cfg.state_dir) / "bundles" / f"{sha}.fab").read_bytes() == rogue


@pytest.mark.e2e  # the approve command in a real process
def test_approve_records_the_hash_in_hospital_yaml_and_the_next_task_is_accepted(
    release_fab, hospital
):
    path, cfg = hospital
    rogue = with_file(release_fab, "client/app.py", EVIL)
    runner.handle(cfg, _message(ExperimentConfig()), _context(), rogue)  # refused, kept
    approve = [Path(sys.executable).parent / "ecgfl-hospital", "approve", "--config", str(path)]
    listed = subprocess.run(approve, capture_output=True, text=True, timeout=60)
    assert bundle.review(rogue).sha256 in listed.stdout and "runs [7]" in listed.stdout
    refused = subprocess.run(
        [*approve, "--run", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 2 and "--yes" in refused.stderr  # no silent approval
    done = subprocess.run(
        [*approve, "--run", "7", "--yes", "--note", "reviewed by IT"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "+    index = open(" in done.stdout  # the diff against the installed release was shown
    assert path.read_text().startswith("# the hospital's own comment\n")
    policy = HospitalConfig.load(path).policy
    assert "reviewed by IT" in policy.approved_apps[bundle.review(rogue).sha256]
    assert bundle.approval(policy, bundle.review(rogue)) is not None


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ""])
def test_a_run_name_that_would_leave_the_output_folder_is_refused(name):
    with pytest.raises(PolicyViolation, match="run-name is not a plain name"):
        plain_name(name, "run-name")


def _experiment(**changes) -> ExperimentConfig:
    """The default experiment with ``section__key=value`` changes, validated as loaded."""
    data = ExperimentConfig().to_dict()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for p in parents:
            target = target[p]
        target[leaf] = value
    return from_dict(ExperimentConfig, data, "test")


@pytest.mark.parametrize(
    ("changes", "limit"),
    [
        # within what any run config may ask (common.config's resource caps), past the site's own
        ({"federation__rounds": 1000}, "max_rounds"),
        ({"local__epochs": 500}, "max_epochs"),
        ({"local__batch_size": 4096}, "max_batch_size"),
        ({"pipeline__length_s": 300.0}, "max_length_s"),
        ({"pipeline__fs": 5000.0, "pipeline__lowpass_hz": None}, "max_fs"),
        ({"model__kwargs": {"width": 2.5}}, "max_model_parameters"),
    ],
)
def test_a_job_past_a_hospital_limit_is_refused_with_the_limit_named(changes, limit):
    experiment = _experiment(**changes)
    space = LabelSpace.load("seed6")
    started = time.monotonic()
    with pytest.raises(PolicyViolation, match=limit):
        check_job(SitePolicy(), experiment, [space], "run-1", 1)
    assert time.monotonic() - started < 10  # refused before anything is allocated


def test_only_installed_label_spaces_the_hospital_allows_pass():
    space = LabelSpace.load("seed6")
    check_job(SitePolicy(), ExperimentConfig(), [space], "run-1", 1)
    with pytest.raises(PolicyViolation, match="label space 'seed6'"):
        check_job(SitePolicy(label_spaces=["superclasses"]), ExperimentConfig(), [space], "r", 1)
    forged = LabelSpace.from_dict({**space.to_dict(), "labels": [*space.labels, "LEAK"]})
    with pytest.raises(PolicyViolation, match="as installed here"):
        check_job(SitePolicy(), ExperimentConfig(), [forged], "run-1", 1)


def test_a_hospital_with_its_own_dp_budget_refuses_a_run_without_dp_sgd():
    with pytest.raises(PolicyViolation, match="only with DP-SGD"):
        check_job(
            SitePolicy(dp_max_epsilon=3.0),
            ExperimentConfig(),
            [LabelSpace.load("seed6")],
            "run-1",
            1,
        )


@pytest.mark.parametrize(
    ("experiment", "run_name", "words"),
    [
        (_experiment(federation__rounds=1000), "run-1", "max_rounds"),
        (ExperimentConfig(), "../../escape", "run-name is not a plain name"),
    ],
)
def test_the_runner_refuses_a_job_past_the_policy_and_says_which_limit(
    release_fab, hospital, experiment, run_name, words
):
    _, cfg = hospital
    reply = runner.handle(cfg, _message(experiment, run_name), _context(), release_fab)
    assert reply.has_error() and words in reply.error.reason
    assert reply.error.reason.startswith("refused by this hospital")
    assert not (Path(cfg.output_dir).parent / "escape").exists()
    assert [e["event"] for e in _audit(cfg)] == ["received", "error"]
