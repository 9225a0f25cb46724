"""``ecgfl-coordinator``: what the federation's coordinator operator runs."""

from __future__ import annotations

import sys

from common import cli

COMMANDS: dict[str, tuple[str, str]] = {}


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "ecgfl-coordinator", "What the federation's coordinator operator runs", COMMANDS, argv
    )


if __name__ == "__main__":
    sys.exit(main())
