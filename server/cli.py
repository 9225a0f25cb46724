"""``ecgfl-coordinator``: what the federation's coordinator operator runs."""

from __future__ import annotations

import sys

from common import cli

COMMANDS: dict[str, tuple[str, str]] = {
    "provision": ("server.commands.provision", "create the federation's CA, certificates and keys"),
    "start": ("server.commands.start", "run the SuperLink with TLS and hospital authentication"),
    "run": ("server.commands.run", "submit a federated job and follow it to its report"),
    "status": ("server.commands.status", "SuperLink, connected hospitals and runs"),
    "logs": ("server.commands.logs", "a run's log"),
    "stop": ("server.commands.stop", "stop a run, or the SuperLink"),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "ecgfl-coordinator", "What the federation's coordinator operator runs", COMMANDS, argv
    )


if __name__ == "__main__":
    sys.exit(main())
