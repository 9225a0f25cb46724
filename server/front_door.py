"""The coordinator's front door: Debian's nginx on the public address, forwarding only the Fleet
API to the SuperLink on loopback.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one port, and its open-source Control API
accepts every caller. The hospitals need only the Fleet API, so nginx terminates TLS with the
federation's server certificate and forwards exactly the paths of Flower's own Fleet router (read
from ``flwr.superlink.routers.fleet.router`` when the configuration is written), each to that same
path on the SuperLink, whose certificate it verifies with the federation's CA. Every other path
(``/v1/control/*``, ``/v1/runtime/*``, anything unknown) ends at nginx with 403 or 404.

nginx runs in the foreground (``daemon off``) under the coordinator's supervision, with its
configuration, pid file, logs and temporary folders in ``STATE_DIR/nginx``, so it needs no root.
"""

from __future__ import annotations

import json
import logging
import shutil
import string
from importlib.resources import files
from pathlib import Path

from common.config import ConfigError

# Importing Flower's routers sets up its database layer, whose migration tool logs at INFO.
logging.getLogger("alembic").setLevel(logging.WARNING)

INSTALL_HINT = "apt-get install nginx"
DEBIAN_NGINX = Path("/usr/sbin/nginx")  # not on a normal user's PATH on Debian
# Flower pushes and pulls one object per request; arrays travel in chunks of 5 MiB
# (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE), so 64 MiB leaves room for larger chunks and metadata.
MAX_BODY = "64m"
# The SuperNode's own HTTP timeout is 30 s; these only cut connections that are truly stuck.
TIMEOUT = "300s"
UPSTREAM_NAME = "localhost"  # the name nginx checks in the SuperLink's certificate (always in it)
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def find_nginx() -> str:
    """The nginx binary, or a ConfigError that says how to install it."""
    found = shutil.which("nginx") or (str(DEBIAN_NGINX) if DEBIAN_NGINX.is_file() else None)
    if found is None:
        raise ConfigError(
            f"nginx not found: the coordinator's front door needs it ({INSTALL_HINT}); or start "
            "with --listen 127.0.0.1 to serve only this host, without a front door"
        )
    return found


def fleet_routes() -> list[tuple[str, list[str]]]:
    """(path, methods) of every route in Flower's Fleet router: what the SuperNodes call."""
    from fastapi.routing import APIRoute
    from flwr.superlink.routers.fleet.router import router

    routes = [(r.path, sorted(r.methods)) for r in router.routes if isinstance(r, APIRoute)]
    if not routes or any(not path.startswith("/v1/fleet/") for path, _ in routes):
        raise ConfigError(f"unexpected Fleet routes in this Flower version: {routes}")
    return routes


def routine_paths() -> frozenset[str]:
    """The polling paths Flower's own access log leaves out when they succeed (every few seconds
    per hospital); the front door's access log does the same."""
    from flwr.supercore.http_logging import ROUTINE_ACCESS_PATHS

    return frozenset(ROUTINE_ACCESS_PATHS)


def _q(path: Path | str) -> str:
    """A path as an nginx string (quoted: a state folder may contain spaces)."""
    return json.dumps(str(path))


def _listen(host: str, port: int) -> str:
    """nginx's listen address; ``::`` takes IPv4 too, like the SuperLink's own wildcard."""
    host = host.strip("[]")
    if host == "::":
        return f"[::]:{port} ipv6only=off"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _location(path: str, methods: list[str], scheme: str) -> str:
    """One exact path, forwarded to the same path (never the client's own spelling of it)."""
    return (
        f"        location = {path} {{\n"
        f"            limit_except {' '.join(methods)} {{ deny all; }}\n"
        f"            proxy_pass {scheme}://superlink{path};\n"
        "        }\n"
    )


class _Template(string.Template):
    delimiter = "@"  # nginx's own variables start with $


def _tls_lines(tls: tuple[str, str, str] | None) -> dict[str, str]:
    """The front door's certificate, and how it verifies the SuperLink's."""
    if not tls:
        return {"server_tls": "", "upstream_tls": ""}
    ca, cert, key = tls
    return {
        "server_tls": (
            f"        ssl_certificate {_q(cert)};\n        ssl_certificate_key {_q(key)};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        ),
        "upstream_tls": (
            f"        proxy_ssl_trusted_certificate {_q(ca)};\n        proxy_ssl_verify on;\n"
            f"        proxy_ssl_verify_depth 2;\n        proxy_ssl_name {UPSTREAM_NAME};\n"
            "        proxy_ssl_protocols TLSv1.2 TLSv1.3;\n"
        ),
    }


def nginx_config(
    state: Path,
    listen: tuple[str, int],
    superlink_port: int,
    tls: tuple[str, str, str] | None,
    routes: list[tuple[str, list[str]]],
    quiet: frozenset[str] = frozenset(),
) -> str:
    """nginx.conf for the front door, from ``nginx.conf.template``.

    ``tls`` is (ca_certificate, certificate, private_key), or None for plaintext (``--insecure``,
    tests only). ``routes`` are the Fleet paths to forward; everything else is refused. Successful
    requests to ``quiet`` paths stay out of the access log.
    """
    scheme = "https" if tls else "http"
    template = _Template(files("server").joinpath("nginx.conf.template").read_text())
    return template.substitute(
        pid=_q(state / "nginx.pid"),
        error_log=_q(state / "error.log"),
        access_log=_q(state / "access.log"),
        routine="".join(f"        {path} 1;\n" for path, _ in routes if path in quiet),
        temp_paths="".join(
            f"    {name}_temp_path {_q(state / 'tmp' / name)};\n" for name in TEMP_PATHS
        ),
        superlink_port=superlink_port,
        listen=_listen(*listen) + (" ssl" if tls else ""),
        max_body=MAX_BODY,
        timeout=TIMEOUT,
        scheme=scheme,
        locations="".join(_location(path, methods, scheme) for path, methods in routes),
        **_tls_lines(tls),
    )


def write_config(
    state: Path,
    listen: tuple[str, int],
    superlink_port: int,
    tls: tuple[str, str, str] | None,
) -> Path:
    """Write ``state/nginx.conf`` (and its temporary folders) from Flower's Fleet router."""
    for name in TEMP_PATHS:
        (state / "tmp" / name).mkdir(parents=True, exist_ok=True)
    path = state / "nginx.conf"
    path.write_text(
        nginx_config(state, listen, superlink_port, tls, fleet_routes(), routine_paths())
    )
    return path


def nginx_command(nginx: str, state: Path, conf: Path) -> list[str]:
    """nginx with its own prefix and error log, so nothing outside ``state`` is touched."""
    return [nginx, "-p", f"{state}/", "-c", str(conf), "-e", str(state / "error.log")]
