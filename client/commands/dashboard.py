"""A read-only web dashboard of this hospital: audit log, data check, fine-tuned models."""

from __future__ import annotations

import argparse
from pathlib import Path

from client import dashboard
from common.dashboard import serve
from common.hospital import HospitalConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="hospital.yaml")
    p.add_argument("--host", default="127.0.0.1", help="other than loopback needs a token login")
    p.add_argument("--port", type=int, default=8051)


def run(args: argparse.Namespace) -> int:
    cfg = HospitalConfig.load(args.config)
    token = Path(cfg.state_dir) / "dashboard.token"
    return serve(dashboard.build(cfg, token), args.host, args.port, token)
