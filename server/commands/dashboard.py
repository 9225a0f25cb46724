"""A read-only web dashboard over the coordinator's runs (``state_dir/runs``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.dashboard import serve
from server import coordinator, dashboard


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("coordinator.yaml"))
    p.add_argument("--host", default="127.0.0.1", help="other than loopback needs a token login")
    p.add_argument("--port", type=int, default=8050)


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    token = cfg.state / "dashboard.token"
    federation = dashboard.Federation(cfg).start()
    app = dashboard.build([cfg.state / "runs"], token, federation)
    return serve(app, args.host, args.port, token)
