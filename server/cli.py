"""``ecgfl-coordinator``: what the federation's coordinator operator runs."""

from __future__ import annotations

import sys

from common import cli

COMMANDS: dict[str, tuple[str, str]] = {
    "provision": ("server.commands.provision", "create the federation's CA, certificates and keys"),
    "start": (
        "server.commands.start",
        "run the SuperLink (loopback), its SuperExec and the nginx front door (Fleet API only)",
    ),
    "init-experiment": (
        "server.commands.init_experiment",
        "write an experiment file with every key, small safe defaults and comments",
    ),
    "run": ("server.commands.run", "submit a federated job and follow it to its report"),
    "status": ("server.commands.status", "the coordinator's processes, hospitals online, runs"),
    "logs": ("server.commands.logs", "a run's log"),
    "stop": ("server.commands.stop", "stop a run, or the whole coordinator"),
    "dashboard": ("server.commands.dashboard", "a read-only web dashboard of the runs"),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "ecgfl-coordinator", "What the federation's coordinator operator runs", COMMANDS, argv
    )


if __name__ == "__main__":
    sys.exit(main())
