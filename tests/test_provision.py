"""Provisioning, deployment configs, the commands they become, the audit log: no processes."""

import dataclasses
import json
import stat
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from client.audit import audit_mod
from client.daemon import exit_reason, node_values, supernode_command
from common.config import ConfigError
from common.hospital import HospitalConfig, SitePolicy
from common.models import MODELS
from server.coordinator import CoordinatorConfig, superlink_command
from server.provision import provision
from server.strategies import STRATEGIES


@pytest.fixture
def federation(tmp_path) -> Path:
    provision(tmp_path, ["H1", "H2"], ["ecg.example.org", "10.0.0.5"], "ecg.example.org:9443")
    return tmp_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_writes_the_coordinator_folder_and_one_bundle_per_hospital(federation):
    coord = federation / "coordinator"
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "coordinator.yaml"):
        assert (coord / name).is_file()
    for site in ("H1", "H2"):
        bundle = federation / "hospitals" / site
        assert {p.name for p in bundle.iterdir()} == {"ca.crt", f"{site}.key", "hospital.yaml"}
        assert (coord / "hospitals" / f"{site}.pub").is_file()
    assert not list((federation / "hospitals").glob("*/*.pub"))  # hospitals get their own only


def test_private_keys_are_readable_by_their_owner_only(federation):
    secrets = [federation / "coordinator" / n for n in ("ca.key", "server.key")]
    secrets += list((federation / "hospitals").glob("*/*.key"))
    assert len(secrets) == 4
    assert all(_mode(p) == 0o600 for p in secrets)


def test_server_certificate_is_signed_by_the_ca_for_the_given_names_and_loopback(federation):
    coord = federation / "coordinator"
    ca = x509.load_pem_x509_certificate((coord / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((coord / "server.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"ecg.example.org", "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "10.0.0.5",
        "127.0.0.1",
    }


def test_hospital_key_is_an_openssh_p384_key_matching_the_registered_public_key(federation):
    private = load_ssh_private_key((federation / "hospitals/H1/H1.key").read_bytes(), None)
    public = load_ssh_public_key((federation / "coordinator/hospitals/H1.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key() == public


def test_configs_load_with_paths_relative_to_their_file(federation):
    coord = CoordinatorConfig.load(federation / "coordinator" / "coordinator.yaml")
    assert coord.address == "ecg.example.org:9443" and coord.port == 9443
    assert coord.hospitals["H2"] == str(federation / "coordinator" / "hospitals" / "H2.pub")
    hospital = HospitalConfig.load(federation / "hospitals" / "H1" / "hospital.yaml")
    assert hospital.site == "H1" and hospital.superlink == "ecg.example.org:9443"
    assert hospital.private_key == str(federation / "hospitals" / "H1" / "H1.key")
    assert hospital.audit_log == str(federation / "hospitals" / "H1" / "audit.jsonl")


def test_an_existing_hospital_key_is_replaced_only_with_force(federation):
    key = federation / "hospitals" / "H1" / "H1.key"
    before = key.read_bytes()
    with pytest.raises(ConfigError, match="H1.key exists; pass --force"):
        provision(federation, ["H1"], [])
    assert key.read_bytes() == before
    provision(federation, ["H1"], [], force=True)  # key rotation
    assert key.read_bytes() != before and _mode(key) == 0o600


def test_adding_a_hospital_keeps_the_ca_server_certificate_and_other_hospitals(federation):
    coord = federation / "coordinator"
    kept = {p: p.read_bytes() for p in (coord / "ca.key", coord / "server.key")}
    provision(federation, ["H3"], [])
    assert all(p.read_bytes() == data for p, data in kept.items())
    cfg = CoordinatorConfig.load(coord / "coordinator.yaml")
    assert sorted(cfg.hospitals) == ["H1", "H2", "H3"]
    ports = [
        HospitalConfig.load(federation / "hospitals" / h / "hospital.yaml").runtime_port
        for h in ("H1", "H2", "H3")
    ]
    assert ports == [9094, 9095, 9096]  # hospitals tried on one host do not collide
    assert (federation / "hospitals" / "H3" / "ca.crt").read_bytes() == (
        coord / "ca.crt"
    ).read_bytes()


def test_new_server_names_need_force(federation):
    with pytest.raises(ConfigError, match="pass --force to re-issue"):
        provision(federation, [], ["other.example.org"])


def test_hospital_names_must_be_plain_and_unique(tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        provision(tmp_path, ["H1", "H1"], ["localhost"])
    with pytest.raises(ConfigError, match="A-Z a-z 0-9"):
        provision(tmp_path, ["../etc"], ["localhost"])


def test_config_errors_name_file_and_key(federation):
    path = federation / "hospitals" / "H1" / "hospital.yaml"
    path.write_text(path.read_text() + "data_dri: /x\n")
    with pytest.raises(ConfigError, match=r"hospital.yaml: unknown key\(s\) \['data_dri'\]"):
        HospitalConfig.load(path)
    path.write_text(path.read_text().replace("data_dri: /x\n", "").replace("9443", "x"))
    with pytest.raises(ConfigError, match="superlink='ecg.example.org:x': expected HOST:PORT"):
        HospitalConfig.load(path)


def test_superlink_runs_with_tls_node_auth_database_and_no_dependency_installation(federation):
    cfg = CoordinatorConfig.load(federation / "coordinator" / "coordinator.yaml")
    command = superlink_command(cfg, insecure=False)
    for flag in (
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--enable-supernode-auth",
        "--database",
        "--disable-runtime-dependency-installation",
        "--log-file",
    ):
        assert flag in command
    assert "--insecure" not in command
    insecure = superlink_command(cfg, insecure=True)
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_supernode_runs_no_app_code_and_only_the_hospitals_launcher_takes_its_tasks(federation):
    cfg = HospitalConfig.load(federation / "hospitals" / "H1" / "hospital.yaml")
    command = supernode_command(cfg, insecure=False)
    assert command[command.index("--root-certificates") + 1] == cfg.root_certificates
    assert command[command.index("--auth-supernode-private-key") + 1] == cfg.private_key
    assert command[command.index("--port") + 1] == "9094"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--isolation") + 1] == "process"
    secret = Path(command[command.index("--superexec-auth-secret-file") + 1])
    assert len(secret.read_text()) == 64 and secret.stat().st_mode & 0o077 == 0
    # the site's paths and policy reach the ClientApp from hospital.yaml through the runner
    node = node_values(cfg)
    assert node["data-dir"] == cfg.data_dir and node["output-dir"] == cfg.output_dir
    assert SitePolicy.from_json(node["policy"]) == cfg.policy


@pytest.mark.parametrize(
    ("tail", "verdict", "words"),
    [
        (
            "ERROR :     Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n"
            "[code: 2004] Failed to activate SuperNode.\n",
            "refused",
            "not registered",
        ),
        (
            "ERROR :     SSL/TLS handshake error detected.\nERROR :     Exit Code: 305\n[SSL: "
            "CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer "
            "certificate (_ssl.c:1006)\n",
            "fatal",
            "not signed by this hospital's CA",
        ),
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired",
            "fatal",
            "has expired",
        ),
        ("ERROR :     Exit Code: 302\n", "fatal", "private key is invalid"),
        ("Connection refused\n", "retry", "stopped unexpectedly"),
    ],
)
def test_each_supernode_failure_gets_its_own_explanation(tail, verdict, words):
    assert exit_reason(tail)[0] == verdict
    assert words in exit_reason(tail)[1]


def _train_message() -> Message:
    arrays = ArrayRecord({"w": Array(np.ones((3, 2), np.float32))})
    config = ConfigRecord({"server-round": 2, "run-name": "study-1"})
    content = RecordDict({"arrays": arrays, "config": config})
    return make_message(Metadata(7, "m1", 0, 5, "", "2", time.time(), 600, "train"), content)


def test_audit_log_records_each_message_and_the_shape_of_each_reply_never_values(tmp_path):
    log = tmp_path / "audit" / "audit.jsonl"
    weights = np.full((3, 2), 0.123456, np.float32)

    def handler(msg: Message, ctx: Context) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(weights)}),
                "metrics": MetricRecord({"num-examples": 31, "train-loss": 0.987654}),
                "site": ConfigRecord({"name": "H1"}),
            }
        )
        return Message(content, reply_to=msg)

    context = Context(7, 5, {"audit-log": str(log)}, RecordDict(), {})
    audit_mod(_train_message(), context, handler)
    received, sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert received["event"] == "received" and received["run_id"] == 7
    assert received["run"] == sent["run"] == "study-1"  # the run folder's name, as reports say
    assert received["message_type"] == "train" and received["server_round"] == 2
    records = sent["records"]
    assert records["arrays"]["arrays"]["w"]["shape"] == [3, 2]
    assert records["arrays"]["arrays"]["w"]["dtype"] == "float32"
    assert records["arrays"]["bytes"] >= weights.nbytes
    assert records["metrics"] == {"kind": "metrics", "keys": ["num-examples", "train-loss"]}
    assert records["site"] == {"kind": "config", "keys": ["name"]}
    # everything but the timestamps, whose milliseconds may spell any digits ("09:17:00.987")
    text = json.dumps([{k: v for k, v in e.items() if k != "time"} for e in (received, sent)])
    assert "0.98" not in text and "0.12" not in text and '"H1"' not in text
    # and the hospital reads it per run as a table
    hospital = tmp_path / "hospital.yaml"
    hospital.write_text(
        yaml.safe_dump({"site": "H1", "superlink": "c:1", "data_dir": "d", "audit_log": str(log)})
    )
    command = [Path(sys.executable).parent / "ecgfl-hospital", "audit", "--config", str(hospital)]
    table = subprocess.run(
        [*command, "--run", "study-1"], capture_output=True, text=True, timeout=60
    )
    rows = [r for r in table.stdout.splitlines() if "| study-1 |" in r]
    assert len(rows) == 1  # one row per message: what came in, what happened, what left
    asked, outcome, left = [c.strip() for c in rows[0].split("|")[5:8]]
    assert asked.startswith("arrays: 1 arrays, ") and "config:" in asked
    assert outcome == "answered"
    assert "arrays: 1 arrays, " in left and "train-loss" in left
    other = subprocess.run([*command, "--run", "other"], capture_output=True, text=True, timeout=60)
    assert "study-1" not in other.stdout


def test_audit_log_records_an_error_reply_and_without_a_path_does_nothing(tmp_path):
    log = tmp_path / "audit.jsonl"

    def failing(msg: Message, ctx: Context) -> Message:
        raise RuntimeError("patient 123 broke it")

    with pytest.raises(RuntimeError):
        audit_mod(
            _train_message(), Context(7, 5, {"audit-log": str(log)}, RecordDict(), {}), failing
        )
    sent = json.loads(log.read_text().splitlines()[-1])
    assert sent["event"] == "error" and sent["error"] == "RuntimeError"
    assert "patient" not in log.read_text()
    reply = audit_mod(
        _train_message(),
        Context(7, 5, {}, RecordDict(), {}),
        lambda m, c: Message(RecordDict(), reply_to=m),
    )
    assert reply is not None and len(log.read_text().splitlines()) == 2


def test_a_coordinators_run_is_named_after_the_experiments_name(tmp_path):
    from server.commands.run import run_name

    (tmp_path / "exp.yaml").write_text("name: study-1\n")
    assert run_name(tmp_path / "exp.yaml") == "study-1"
    (tmp_path / "unnamed.yaml").write_text("labels: seed6\n")
    assert run_name(tmp_path / "unnamed.yaml") == "unnamed"
    (tmp_path / "bad.yaml").write_text("name: ../escape\n")
    with pytest.raises(ConfigError, match="name '../escape'"):
        run_name(tmp_path / "bad.yaml")


def _all_keys(cls, prefix: str = "") -> set[str]:
    """Every setting of a config dataclass, nested ones as dotted paths."""
    keys = set()
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys |= _all_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def _yaml_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        nested = isinstance(v, dict) and k != "kwargs"
        keys |= _yaml_keys(v, f"{prefix}{k}.") if nested else {prefix + k}
    return keys


def test_the_federations_pipeline_is_provisioned_into_every_hospital_bundle(tmp_path):
    (tmp_path / "exp.yaml").write_text("pipeline: {fs: 50.0, length_s: 8.0, lowpass_hz: 20.0}\n")
    from server.provision import read_pipeline

    pipeline = read_pipeline(tmp_path / "exp.yaml")
    provision(tmp_path, ["H1"], ["localhost"], pipeline=pipeline)
    provision(tmp_path, ["H2"], [])  # a later hospital gets the federation's, not the default
    coord = CoordinatorConfig.load(tmp_path / "coordinator" / "coordinator.yaml")
    assert coord.pipeline == pipeline
    for site in ("H1", "H2"):
        hospital = HospitalConfig.load(tmp_path / "hospitals" / site / "hospital.yaml")
        assert hospital.pipeline == pipeline
        assert node_values(hospital)["pipeline-fingerprint"] == pipeline.fingerprint
    (tmp_path / "bad.yaml").write_text("fs: -3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: pipeline.fs: expected > 0"):
        read_pipeline(tmp_path / "bad.yaml")


def test_init_experiment_writes_every_key_with_the_federations_pipeline(tmp_path):
    from common.experiment import ExperimentConfig
    from server.cli import main

    (tmp_path / "p.yaml").write_text("fs: 50.0\nlength_s: 8.0\nlowpass_hz: 20.0\n")
    from server.provision import read_pipeline

    provision(tmp_path, ["H1", "H2"], ["localhost"], pipeline=read_pipeline(tmp_path / "p.yaml"))
    coord = tmp_path / "coordinator" / "coordinator.yaml"
    out = tmp_path / "study.yaml"
    argv = ["init-experiment", "--coordinator", str(coord), "--name", "study-1", "--rounds", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    exp = ExperimentConfig.load(out)  # loads and validates as a run would
    assert exp.name == "study-1" and exp.federation.rounds == 2
    assert exp.pipeline == CoordinatorConfig.load(coord).pipeline
    assert _all_keys(ExperimentConfig) == _yaml_keys(yaml.safe_load(text))
    # the choices it lists are the registries' own
    assert f"# one of: {', '.join(STRATEGIES)}" in text and f"# one of: {', '.join(MODELS)}" in text
    assert main([*argv, "--out", str(out)]) == 2  # never overwritten by accident
    assert main([*argv[:-3], "../x", "--out", str(tmp_path / "x.yaml")]) == 2


def test_run_says_to_start_the_coordinator_first(tmp_path, capsys):
    from server.cli import main

    provision(tmp_path, ["H1"], ["localhost"])
    coord = str(tmp_path / "coordinator" / "coordinator.yaml")
    (tmp_path / "e.yaml").write_text("name: e1\n")
    assert main(["run", "--coordinator", coord, "--config", str(tmp_path / "e.yaml")]) == 1
    err = capsys.readouterr().err
    assert "is not running: start it first (ecgfl-coordinator start --config" in err
    assert "Traceback" not in err and not (tmp_path / "coordinator" / "state" / "runs").exists()
    (tmp_path / "e.yaml").write_text("name: e1\nfederation: {strategy: fedsgd}\n")
    assert main(["run", "--coordinator", coord, "--config", str(tmp_path / "e.yaml")]) == 2
    err = capsys.readouterr().err
    assert "e.yaml: federation.strategy: 'fedsgd': expected one of fedavg" in err
