"""The shape of ecgfl's three command-line tools: named subcommands, each a module.

A subcommand module exposes ``configure(parser)`` and ``run(args) -> int``; it is imported only
when chosen, so ``--help`` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from common import cpu
from common.errors import EcgflError


def main(prog: str, description: str, commands: dict[str, tuple[str, str]], argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand; an ``EcgflError`` ends it with its one-line
    message and its kind's exit code."""
    cpu.apply()  # before a command imports torch: its thread pool follows the policy
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in (argv if argv is not None else sys.argv[1:]) if a in commands), None)
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    # SIGTERM (a scheduler's stop, `timeout`, `kill`) ends a command as Ctrl-C does, through its
    # finally blocks, which stop the SuperLink, Ray and whatever else it started in sessions of
    # their own; Python's default ends only this process and leaves them running. Daemons set
    # their own handler.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return importlib.import_module(commands[args.command][0]).run(args)
    except EcgflError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame) -> None:
    raise SystemExit(128 + signum)
