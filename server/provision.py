"""Provisioning a federation: its CA, the coordinator's TLS certificate, and one key per hospital.

The CA signs the SuperLink's certificate, so a hospital that holds ``ca.crt`` knows it talks to
this coordinator. Each hospital authenticates with its own ECDSA P-384 key in OpenSSH format (what
``flower-supernode --auth-supernode-private-key`` reads); the coordinator only admits the public
keys it registered. Running it again adds hospitals and keeps the CA: nothing that exists is
replaced without ``force``.

Layout written under ``out``::

    coordinator/  ca.crt ca.key server.crt server.key coordinator.yaml hospitals/<site>.pub
    hospitals/<site>/  ca.crt <site>.key hospital.yaml      (the bundle a hospital receives)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.config import ConfigError, from_dict, load_yaml
from common.hospital import HospitalConfig
from common.names import RULE, is_plain_name
from common.preprocess import PipelineConfig
from server.coordinator import CoordinatorConfig

# The front door, the flwr CLI and the SuperExec/ServerApp reach the SuperLink on loopback.
LOOPBACK = ("localhost", "127.0.0.1")
CA_DAYS, SERVER_DAYS = 3650, 825
DATA_DIR_PLACEHOLDER = "/EDIT/ME/folder-of-ecg-records"
RUNTIME_PORT = 9094  # the first bundle's local ClientApp API port; the next get 9095, ...
_CURVE = ec.SECP384R1()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_private(path: Path, data: bytes, force: bool) -> None:
    """Write a secret with mode 0600 from the start; an existing file is replaced only on force."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to replace it")
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ecgfl federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The federation's own certificate authority: it signs only the coordinator's certificate."""
    key = ec.generate_private_key(_CURVE)
    name = _name("ecgfl federation CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    write_private(directory / "ca.key", _pem_key(key), force=False)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / 'ca.key'}: expected an EC private key")
    return cert, key


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def server_sans(directory: Path) -> set[str]:
    """The names the existing server certificate is valid for."""
    cert = x509.load_pem_x509_certificate((directory / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def make_server_cert(
    directory: Path,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    sans: Iterable[str],
    force: bool,
) -> None:
    """The SuperLink's TLS certificate, valid for ``sans`` (DNS names and IP addresses)."""
    ca_cert, ca_key = ca
    names = sorted(set(sans))
    key = ec.generate_private_key(_CURVE)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    write_private(directory / "server.key", _pem_key(key), force)
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_node_key(private_path: Path, public_path: Path, site: str, force: bool) -> None:
    """A hospital's SuperNode key pair, OpenSSH format, as Flower's node authentication reads it."""
    key = ec.generate_private_key(_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(private_path, private, force)
    public_path.write_bytes(public + f" ecgfl-{site}\n".encode())


def _yaml(path: Path, data: dict, header: str) -> None:
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))


def _host(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT")
    return host.strip("[]")


def read_pipeline(path: Path) -> PipelineConfig:
    """A pipeline from a YAML file: an experiment's ``pipeline:`` section, or the bare mapping."""
    data = load_yaml(path)
    section = "pipeline" in data
    return from_dict(PipelineConfig, data["pipeline"] if section else data, f"{path}: pipeline")


def _coordinator_config(
    config_path: Path, address: str | None, listen: str, pipeline: PipelineConfig | None
) -> CoordinatorConfig:
    """The existing coordinator.yaml (whose address only an edit changes), or a new one."""
    if config_path.exists():
        cfg = CoordinatorConfig.load(config_path, resolve=False)
        if address and address != cfg.address:
            raise ConfigError(
                f"{config_path}: the federation's address is {cfg.address}; edit it there (and "
                "re-issue the server certificate with --force) rather than with --address"
            )
    else:  # a new federation: the caller chose the address
        port = int(str(address).rsplit(":", 1)[1])
        cfg = CoordinatorConfig(address=address, host=listen, port=port, superlink_port=port + 1)
    if pipeline is not None:
        cfg.pipeline = pipeline
    return cfg


def _server_certificate(coord: Path, cfg: CoordinatorConfig, sans: list[str], force: bool):
    """Issue the server certificate once (again with ``force``); refuse new names without it."""
    ca = load_ca(coord) if (coord / "ca.key").exists() else make_ca(coord)
    wanted = set(sans) | {_host(cfg.address), *LOOPBACK}
    if not (coord / "server.crt").exists() or force:
        make_server_cert(coord, ca, wanted, force)
    elif sans and wanted != server_sans(coord):
        raise ConfigError(
            f"{coord / 'server.crt'} is valid for {sorted(server_sans(coord))}, not "
            f"{sorted(wanted)}; pass --force to re-issue it (restart the coordinator afterwards)"
        )


def _hospital_bundle(out: Path, cfg: CoordinatorConfig, site: str, force: bool) -> None:
    """``out/hospitals/SITE``: its key, the CA, and a first hospital.yaml (never overwritten:
    it holds the hospital's own edits); the public key goes to the coordinator."""
    coord, bundle = out / "coordinator", out / "hospitals" / site
    bundle.mkdir(parents=True, exist_ok=True)
    make_node_key(bundle / f"{site}.key", coord / "hospitals" / f"{site}.pub", site, force)
    shutil.copyfile(coord / "ca.crt", bundle / "ca.crt")
    ordinal = list(cfg.hospitals).index(site) if site in cfg.hospitals else len(cfg.hospitals)
    hospital = HospitalConfig(
        site=site,
        superlink=cfg.address,
        root_certificates="ca.crt",
        private_key=f"{site}.key",
        data_dir=DATA_DIR_PLACEHOLDER,
        # distinct per bundle, so hospitals tried out on one host do not collide
        runtime_port=RUNTIME_PORT + ordinal,
        pipeline=cfg.pipeline,
    )
    if not (bundle / "hospital.yaml").exists():
        _yaml(
            bundle / "hospital.yaml",
            asdict(hospital),
            f"# ecgfl hospital {site}: edit data_dir (and format if detection fails), "
            "then run\n#   ecgfl-hospital start --config hospital.yaml\n"
            "# Relative paths are relative to this file. See docs/deployment.md.\n",
        )
    cfg.hospitals[site] = f"hospitals/{site}.pub"


def provision(
    out: Path,
    hospitals: list[str],
    sans: list[str],
    address: str | None = None,
    listen: str = "0.0.0.0",
    force: bool = False,
    pipeline: PipelineConfig | None = None,
) -> CoordinatorConfig:
    """Create (or extend) a federation under ``out``; returns the coordinator's configuration.

    ``pipeline`` (default: the built-in one, or the federation's when it exists) goes into
    coordinator.yaml and every new hospital.yaml, so hospitals build the right cache at start
    and nobody copies it by hand."""
    bad = [h for h in hospitals if not is_plain_name(h)]
    if bad or len(set(hospitals)) != len(hospitals):
        raise ConfigError(
            f"hospital names {hospitals}: each must be unique, {RULE} (it names the site in "
            "reports and on disk)"
        )
    coord = out / "coordinator"
    (coord / "hospitals").mkdir(parents=True, exist_ok=True)
    config_path = coord / "coordinator.yaml"
    if not config_path.exists() and not address:
        address = f"{(sans or ['localhost'])[0]}:8000"
    cfg = _coordinator_config(config_path, address, listen, pipeline)
    _server_certificate(coord, cfg, sans, force)
    for site in hospitals:
        _hospital_bundle(out, cfg, site, force)
    _yaml(
        config_path,
        asdict(cfg),
        "# ecgfl coordinator: ecgfl-coordinator start --config coordinator.yaml\n"
        "# Relative paths are relative to this file. See docs/deployment.md.\n",
    )
    return cfg
