"""The egress guard: whatever a site's code tries to send besides weights shaped like the model,
short numeric metrics and its name does not leave."""

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from test_simulation import entries, tiny_config

from client.egress import EgressViolation, check_reply, egress_guard, label_limit
from common.errors import RunFailed
from common.models import ModelConfig
from common.personalise import batchnorm_keys
from common.protocol import LABEL_SPACE
from simulations import run as sim
from simulations.attack_app import ATTACK_APP, Attack

SECRET = "patient 4711, born 1950-01-01"


@pytest.fixture(scope="module")
def model() -> ArrayRecord:
    net = ModelConfig(kwargs={"width": 0.125}, input_length=500, fs=50.0).build(n_classes=7)
    return ArrayRecord(net.state_dict())


def received(model: ArrayRecord) -> RecordDict:
    space = {
        "name": "seed6",
        "labels": ["NORM", "1AVB", "CRBBB", "CLBBB", "SBRAD", "STACH", "AFIB"],
    }
    return RecordDict({"arrays": model, "config": ConfigRecord({LABEL_SPACE: json.dumps(space)})})


def honest(model: ArrayRecord, **metrics) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(a.numpy().copy()) for k, a in model.items()}),
            "metrics": MetricRecord(
                {"num-examples": 120, "train-loss": 0.4, "positives": [3.0] * 7, **metrics}
            ),
            "site": ConfigRecord({"name": "tis-H01"}),
        }
    )


def check(model: ArrayRecord, reply: RecordDict, message_type: str = "train", **kw) -> None:
    got = received(model)
    check_reply(got, reply, message_type, max_list=label_limit(got), **kw)


def test_an_honest_train_reply_passes(model):
    check(model, honest(model), site="tis-H01")


def test_an_extra_array_is_refused(model):
    reply = honest(model)
    reply["arrays"]["leak"] = Array(np.frombuffer(SECRET.encode(), np.uint8).copy())
    with pytest.raises(EgressViolation, match="extra"):
        check(model, reply)


def test_a_body_without_the_head_passes_and_a_reordered_or_empty_one_does_not(model):
    """FedRep/FedPer/FedBABU keep the head at the site: a subset in the model's order."""
    reply = honest(model)
    for key in [k for k in reply["arrays"] if k.startswith("head.")]:
        del reply["arrays"][key]
    check(model, reply)
    keys = list(reply["arrays"])
    reply["arrays"] = ArrayRecord({k: reply["arrays"][k] for k in [keys[-1], *keys[:-1]]})
    with pytest.raises(EgressViolation, match="order"):
        check(model, reply)
    reply["arrays"] = ArrayRecord()
    with pytest.raises(EgressViolation, match="empty"):
        check(model, reply)


def test_a_model_without_its_batchnorm_layers_passes(model):
    """FedBN keeps every BatchNorm layer at the site: a subset with gaps, in the model's order."""
    net = ModelConfig(kwargs={"width": 0.125}, input_length=500, fs=50.0).build(n_classes=7)
    reply = honest(model)
    for key in batchnorm_keys(net):
        del reply["arrays"][key]
    assert 0 < len(reply["arrays"]) < len(model)
    check(model, reply)


def test_a_second_array_record_is_refused(model):
    reply = honest(model)
    reply["more-arrays"] = ArrayRecord({"x": Array(np.zeros(3, np.float32))})
    with pytest.raises(EgressViolation, match="record"):
        check(model, reply)


def test_a_reshaped_parameter_is_refused(model):
    reply = honest(model)
    key = next(k for k, a in model.items() if len(a.shape) == 3)
    flat = reply["arrays"][key].numpy()
    reply["arrays"][key] = Array(flat.reshape(flat.shape[0], -1).copy())
    with pytest.raises(EgressViolation, match="shaped"):
        check(model, reply)


def test_a_parameter_in_a_wider_dtype_is_refused(model):
    reply = honest(model)
    key = next(iter(model.keys()))
    reply["arrays"][key] = Array(reply["arrays"][key].numpy().astype(np.float64))
    with pytest.raises(EgressViolation, match="wider"):
        check(model, reply)


def test_float16_transport_passes(model):
    reply = honest(model)
    for key, array in list(reply["arrays"].items()):
        if array.dtype == "float32":
            reply["arrays"][key] = Array(array.numpy().astype(np.float16))
    check(model, reply)


def test_a_signal_inside_a_long_metric_list_is_refused(model):
    ecg = np.random.default_rng(0).normal(size=500).tolist()
    with pytest.raises(EgressViolation, match="list of 500"):
        check(model, honest(model, positives=ecg))
    with pytest.raises(EgressViolation, match="list of 8"):  # one more than the 7 labels
        check(model, honest(model, positives=[1.0] * 8))


def test_data_in_metric_names_or_many_metrics_is_refused(model):
    with pytest.raises(EgressViolation, match="not a plain metric name") as info:
        check(model, honest(model, **{SECRET: 1.0}))
    assert "4711" not in str(info.value)  # the refusal does not carry the secret either
    many = {f"m{i}": float(i) for i in range(40)}
    with pytest.raises(EgressViolation, match="at most"):
        check(model, honest(model, **many))


def test_a_string_in_the_config_record_is_refused(model):
    reply = honest(model)
    reply["site"]["note"] = SECRET
    with pytest.raises(EgressViolation, match="only 'name'"):
        check(model, reply)
    reply = honest(model)
    reply["site"]["name"] = SECRET
    with pytest.raises(EgressViolation, match="plain name") as info:
        check(model, reply)
    assert "4711" not in str(info.value)
    reply = honest(model)
    reply["config"] = ConfigRecord({"name": "x"})
    with pytest.raises(EgressViolation, match="record 'config'"):
        check(model, reply)


def test_the_site_name_must_be_the_nodes_own(model):
    with pytest.raises(EgressViolation, match="differs"):
        check(model, honest(model), site="tis-H02")


def test_weights_leave_only_in_a_train_reply(model):
    for message_type in ("evaluate", "train.finetune"):
        with pytest.raises(EgressViolation, match="only train sends weights"):
            check(model, honest(model), message_type)


def _message(model: ArrayRecord, message_type: str = "train") -> Message:
    meta = Metadata(1, "m1", 0, 5, "", "1", time.time(), 600, message_type)
    return make_message(meta, received(model))


def _context(**node) -> Context:
    return Context(1, 5, node, RecordDict(), {})


def test_the_mod_raises_so_the_reply_becomes_an_error(model):
    msg = _message(model)

    def smuggler(m: Message, ctx: Context) -> Message:
        content = honest(model)
        content["arrays"]["leak"] = Array(np.zeros(4, np.float32))
        return Message(content, reply_to=m)

    with pytest.raises(EgressViolation):
        egress_guard(msg, _context(site="tis-H01"), smuggler)

    def good(m: Message, ctx: Context) -> Message:
        return Message(honest(model), reply_to=m)

    assert egress_guard(msg, _context(site="tis-H01"), good).content["metrics"]["num-examples"]


@pytest.fixture(scope="module")
def exfiltrating_run(tmp_path_factory):
    """A tiny simulation in which virtual site 1 adds an extra array to every train reply."""
    cfg = tiny_config(rounds=2)
    cfg.experiment.model = replace(cfg.experiment.model, norm="group")
    cfg.baselines.local_only = cfg.baselines.centralized = False
    run_dir = tmp_path_factory.mktemp("egress") / "run"
    run_dir.mkdir()
    Attack("exfiltrate", (1,), 1.0).write(run_dir)
    with pytest.raises(RunFailed) as stopped:
        sim.run(cfg, run_dir, progress=False, clientapp=ATTACK_APP)
    return run_dir, str(stopped.value)


@pytest.mark.e2e
def test_end_to_end_an_exfiltrating_site_sends_nothing_and_stops_the_run(exfiltrating_run):
    """Its train reply is refused by its own guard; every virtual site must take part
    (min_sites), so the run stops in round 1 naming it, instead of finishing without it as if
    the federation were the one asked for."""
    run_dir, message = exfiltrating_run
    manifest = json.loads((run_dir / "partition" / "sites.json").read_text())
    names = [s["name"] for s in manifest["sites"]]
    (stop,) = [e for e in entries(run_dir) if e["phase"] == "stopped"]
    (failed,) = stop["failed"]
    assert failed["site"] == names[1] and "\n" not in failed["reason"]
    assert "arrays differ from the model" in failed["reason"] and "leaked-ecg" in failed["reason"]
    assert stop["round"] == 1 and f"failed: {names[1]}: " in stop["reason"]
    assert message.startswith("the federation stopped: round 1: 2 site(s) trained, fewer than")
    assert "\n" not in message and "\x1b" not in message
    assert not [e for e in entries(run_dir) if e["phase"] in ("train", "finetune")]
    assert "The run stopped" in (run_dir / "report.md").read_text()
    assert "\x1b[" not in (run_dir / "flower.log").read_text()
    assert "leaked-ecg" in (run_dir / "failures.log").read_text()


def test_the_coordinators_tracking_address_does_not_travel_to_the_sites():
    from common.experiment import ExperimentConfig, TrackingSettings
    from common.protocol import EXPERIMENT, Job

    experiment = ExperimentConfig(tracking=TrackingSettings(mlflow="http://mlflow.internal:5000"))
    record = Job.for_run(experiment, "study-1").to_record()
    assert "mlflow.internal" not in str(record[EXPERIMENT])
    assert Job.from_record(record).experiment.tracking == TrackingSettings()
