"""Run the coordinator: the SuperLink on loopback, its SuperExec, and the nginx front door that
lets only the Fleet API through (foreground, for a service manager, or --detach)."""

from __future__ import annotations

import argparse
from pathlib import Path

from server import coordinator


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="coordinator.yaml")
    p.add_argument("--detach", action="store_true", help="return once everything is up")
    p.add_argument(
        "--insecure", action="store_true", help="plaintext, no node authentication: tests only"
    )
    p.add_argument(
        "--listen",
        metavar="HOST",
        help="no front door: the SuperLink itself binds HOST on the configured port. "
        "127.0.0.1 serves only this host; any other HOST opens the Control API and needs "
        f"{coordinator.OPEN_FLAG}",
    )
    p.add_argument(
        coordinator.OPEN_FLAG,
        dest="open_control_api",
        action="store_true",
        help="allow --listen on a non-loopback interface (anyone reaching it can submit runs)",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # set by --detach


def foreground_argv(args: argparse.Namespace) -> list[str]:
    """The same start, in the foreground: what --detach runs in a session of its own."""
    argv = [*(["-v"] if args.verbose else []), "start", "--config", str(args.config.resolve())]
    if args.insecure:
        argv.append("--insecure")
    if args.listen is not None:
        argv += ["--listen", args.listen]
    if args.open_control_api:
        argv.append(coordinator.OPEN_FLAG)
    return argv


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    coordinator.check_exposure(args.insecure, args.listen, args.open_control_api)
    if args.detach:
        coordinator.preflight(cfg, args.insecure, args.listen)
        return coordinator.detach(cfg, foreground_argv(args))
    return coordinator.serve(cfg, args.insecure, args.listen, args.ready_fd)
