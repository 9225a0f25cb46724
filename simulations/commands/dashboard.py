"""A read-only web dashboard over simulation run folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.dashboard import serve
from server import dashboard


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs",
        nargs="*",
        type=Path,
        default=[Path("runs")],
        metavar="RUN_DIR",
        help="run folders, or folders of runs (default: runs)",
    )
    p.add_argument("--host", default="127.0.0.1", help="other than loopback needs a token login")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument(
        "--token-file",
        type=Path,
        help="login token for other machines (default: dashboard.token in the first RUN_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    token = args.token_file or args.run_dirs[0] / "dashboard.token"
    return serve(dashboard.build(args.run_dirs, token), args.host, args.port, token)
