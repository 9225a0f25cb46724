"""The hospital's model commands: fine-tune on the site's folder, predict record files, export."""

import contextlib
import io
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import brier_score_loss

from client import cli
from common.checkpoint import load_checkpoint, save_checkpoint
from common.errors import DataError
from common.labels import LabelSpace
from common.models import ModelConfig
from common.preprocess import PipelineConfig
from common.site import SiteData
from common.training import evaluate
from simulations.synth import PtbxlLikeSpec, write_ptbxl_like
from simulations.synth.writers import write_tis_record

SPACE = LabelSpace.load("seed6")
PIPELINE = PipelineConfig(fs=50.0, length_s=10.0, lowpass_hz=20.0)


def hospital(*argv: str) -> tuple[int, str]:
    """Run ``ecgfl-hospital`` and return its exit code and standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue()


def tis_csv(path, seconds: float, fs: int = 500):
    t = np.arange(int(seconds * fs)) / fs
    signal = np.stack([np.sin(2 * np.pi * (1 + k / 12) * t) for k in range(12)]).astype(np.float32)
    header = {"sampling_rate": fs, "hospital": "H01", "patient_id": "P1", "diagnosis": "1.1"}
    write_tis_record(path, signal, header)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hospital")


@pytest.fixture(scope="module")
def site(workdir):
    root = workdir / "site"
    write_ptbxl_like(PtbxlLikeSpec(n_records=60, n_sites=1, seed=4), root, progress=False)
    return root


@pytest.fixture(scope="module")
def global_model(workdir):
    """An untrained 'federated' model: the commands' behaviour, not its accuracy, is tested."""
    cfg = PIPELINE
    model_cfg = ModelConfig(kwargs={"width": 0.125}, input_length=cfg.length, fs=cfg.fs)
    torch.manual_seed(0)
    model = model_cfg.build(n_classes=len(SPACE))
    return save_checkpoint(
        workdir / "global.pt", model, model_cfg, SPACE, cfg.fingerprint, cfg.to_dict(), round=3
    )


@pytest.fixture(scope="module")
def finetuned(workdir, site, global_model):
    out = workdir / "finetuned.pt"
    code, printed = hospital(
        "finetune", "--model", global_model, "--data", site, "--cache", workdir / "cache",
        "--epochs", 1, "--batch-size", 16, "--out", out,
    )  # fmt: skip
    assert code == 0
    return out, printed


def test_finetune_saves_a_checkpoint_and_prints_test_scores_before_and_after(finetuned):
    path, printed = finetuned
    assert "before and after fine-tuning" in printed and f"saved {path}" in printed
    assert "macro AUC" in printed and "AFIB" in printed
    ckpt = load_checkpoint(path)
    assert ckpt.space == SPACE and ckpt.pipeline_fingerprint == PIPELINE.fingerprint
    assert set(ckpt.meta["thresholds"]) == set(SPACE.labels)  # chosen on validation
    assert ckpt.meta["finetune"]["mode"] == "full" and ckpt.meta["site"] == "site"
    assert {"before", "after", "history"} <= set(ckpt.meta)


def test_finetune_refuses_a_model_trained_on_another_pipeline(workdir, site, global_model):
    ckpt = load_checkpoint(global_model)
    other = save_checkpoint(
        workdir / "other.pt",
        ckpt.build_model(),
        ckpt.model_cfg,
        SPACE,
        "0123456789abcdef",
        ckpt.pipeline_config,
    )
    code, _ = hospital("finetune", "--model", other, "--data", site, "--cache", workdir / "cache")
    assert code == DataError.exit_code  # the data, not a setting, is what does not fit


def test_predict_real_ptbxl_and_cinc_files_with_the_stored_thresholds(
    finetuned, ptbxl_sample, cinc_sample
):
    records = [
        ptbxl_sample / "records100/00000/00001_lr.hea",
        ptbxl_sample / "records500/00000/00001_hr",  # a WFDB record by name, no extension
        cinc_sample / "E07500.mat",
    ]
    code, printed = hospital("predict", "--model", finetuned[0], *records, "--json")
    assert code == 0
    report = json.loads(printed)
    assert report["threshold_source"] == "per-class thresholds stored in the checkpoint"
    assert [r["source"] for r in report["records"]] == ["ptbxl", "ptbxl", "cinc"]
    for r in report["records"]:
        assert list(r["probabilities"]) == list(SPACE.labels)
        assert all(0 <= p <= 1 for p in r["probabilities"].values())
        assert r["windows"] == 1 and r["duration_s"] == 10


def test_a_bad_record_is_reported_and_the_others_are_still_predicted(workdir, global_model):
    good = tis_csv(workdir / "long.csv", seconds=25)
    short = tis_csv(workdir / "short.csv", seconds=1)
    corrupt = workdir / "corrupt.csv"
    corrupt.write_text("sampling_rate: 500\nthis is not an ECG\n")
    code, printed = hospital("predict", "--model", global_model, corrupt, good, short, "--json")
    assert code == 1
    corrupt_r, good_r, short_r = json.loads(printed)["records"]
    assert corrupt_r["error"].endswith(
        "corrupt.csv: line 2: expected 'key: value' - record corrupt skipped"
    )
    assert "1.00 s long" in short_r["error"]
    # 25 s in 10 s windows half a window apart: 0-10, 5-15, 10-20, 15-25.
    assert good_r["windows"] == 4 and good_r["source"] == "tis"


def test_predict_without_stored_thresholds_says_it_uses_one_half(workdir, global_model):
    record = tis_csv(workdir / "plain.csv", seconds=10)
    code, printed = hospital("predict", "--model", global_model, record)
    assert code == 0
    assert "no thresholds: 0.5 for every label" in printed and "plain.csv:" in printed


def test_export_writes_onnx_that_matches_pytorch(workdir, finetuned):
    out = workdir / "model.onnx"
    code, printed = hospital("export", "--model", finetuned[0], "--onnx", out)
    assert code == 0 and "verified: onnxruntime matches PyTorch within 0.0001" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.zeros((3, 12, PIPELINE.length), np.float32)
    assert session.run(None, {"ecg": x})[0].shape == (3, len(SPACE))
    # the file says what its outputs are and how to preprocess, without the checkpoint
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["ecgfl.labels"]) == list(SPACE.labels)
    assert json.loads(props["ecgfl.pipeline"])["fs"] == PIPELINE.fs
    thresholds = json.loads(props["ecgfl.thresholds"])
    assert set(thresholds) <= set(SPACE.labels) and thresholds


def test_a_truncated_wfdb_signal_file_is_a_per_record_error(workdir, global_model, ptbxl_sample):
    cut = workdir / "cut"
    cut.mkdir()
    for ext in (".hea", ".dat"):
        shutil.copy(ptbxl_sample / f"records100/00000/00001_lr{ext}", cut)
    data = (cut / "00001_lr.dat").read_bytes()
    (cut / "00001_lr.dat").write_bytes(data[: len(data) // 2])
    code, printed = hospital("predict", "--model", global_model, cut / "00001_lr.hea", "--json")
    assert code == 1 and "truncated" in json.loads(printed)["records"][0]["error"]


def hospital_err(*argv: str) -> tuple[int, str, str]:
    """``ecgfl-hospital`` with its exit code, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def evaluated(workdir, site, finetuned):
    out = workdir / "evaluation"
    code, printed = hospital(
        "evaluate", "--model", finetuned[0], "--data", site, "--cache", workdir / "cache",
        "--split", "all", "--out", out,
    )  # fmt: skip
    assert code == 0
    return out, printed, json.loads((out / "evaluation.json").read_text())


def test_evaluate_prints_per_label_support_auc_with_interval_f1_and_brier(evaluated):
    _, printed, result = evaluated
    assert result["records"] == 60 and result["split"] == "all"
    assert result["threshold_source"] == "per-class thresholds stored in the checkpoint"
    m = result["metrics"]
    for label in SPACE.labels:
        c = m["per_class"][label]
        row = next(line for line in printed.splitlines() if line.startswith(label + " "))
        assert row.split()[1:3] == [str(c["positives"]), str(c["annotated"])]
        if c["auc"] is None:
            assert label in result["unscored"] and label in printed.split("not scored")[1]
        elif label in result["few_cases"]:  # scored on a handful of cases: named, no interval
            assert c["auc_ci"] is None and label in printed.split("too few cases")[1]
        else:
            assert c["auc_ci"][0] <= c["auc"] <= c["auc_ci"][1] and c["f1"] is not None
    assert m["macro_auc_ci"][0] <= m["macro_auc"] <= m["macro_auc_ci"][1]
    assert "macro AUC" in printed and "Brier" in printed


def test_evaluate_brier_scores_are_sklearns_over_annotated_records(workdir, site, evaluated):
    ckpt = load_checkpoint(workdir / "finetuned.pt")
    data = SiteData.from_folder(site.name, site, workdir / "cache", PIPELINE)
    probs, y, mask = evaluate(ckpt.build_model(), data.dataset("all", SPACE))
    result = evaluated[2]
    for k, label in enumerate(SPACE.labels):
        keep = mask[:, k] > 0
        expected = brier_score_loss(y[keep, k], probs[keep, k]) if keep.any() else None
        assert result["metrics"]["per_class"][label]["brier"] == pytest.approx(expected)
    keep = mask > 0
    assert result["brier"] == pytest.approx(brier_score_loss(y[keep], probs[keep]))


def test_evaluate_writes_a_reliability_diagram_png(evaluated):
    png = (evaluated[0] / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert "all labels" in evaluated[2]["reliability"]


def test_evaluate_without_stored_thresholds_says_it_uses_one_half(workdir, site, global_model):
    code, printed = hospital(
        "evaluate", "--model", global_model, "--data", site, "--cache", workdir / "cache",
        "--out", workdir / "eval-global",
    )  # fmt: skip
    assert code == 0
    assert "no thresholds: 0.5 for every label (NOT tuned on this site)" in printed


def test_evaluate_names_a_skipped_record_and_scores_the_rest(workdir, site, global_model):
    folder = workdir / "site-one-bad"
    shutil.copytree(site, folder)
    for dat in folder.glob("records*/*/00001_*.dat"):  # record 1, at both rates: cut in half
        dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])
    code, printed, err = hospital_err(
        "evaluate", "--model", global_model, "--data", folder, "--split", "all",
        "--out", workdir / "eval-one-bad",
    )  # fmt: skip
    assert code == 0 and "skipped 1:" in err and "00001_" in err and "truncated" in err
    assert "59 records of split 'all'" in printed


@pytest.mark.parametrize("case", ["no data", "data is a file", "not a checkpoint", "out a file"])
def test_evaluate_on_a_missing_or_hostile_path_is_one_line(workdir, global_model, case):
    junk = workdir / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    model, data, out = global_model, workdir / "site", workdir / "eval-hostile"
    if case == "no data":
        data = workdir / "missing"
    elif case == "data is a file":
        data = junk
    elif case == "not a checkpoint":
        model = junk
    else:
        out = junk
    code, printed, err = hospital_err(
        "evaluate", "--model", model, "--data", data, "--out", out, "--cache", workdir / "cache"
    )
    assert code in (2, 3) and printed == ""
    assert err.count("\n") == 1 and err.startswith("ecgfl-hospital evaluate: error: ")
