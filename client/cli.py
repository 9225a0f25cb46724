"""``ecgfl-hospital``: what a hospital's IT and data owner runs on site."""

from __future__ import annotations

import sys

from common import cli

COMMANDS = {
    "check": ("client.commands.check", "check a folder of ECG records without modifying it"),
    "prepare": ("client.commands.prepare", "preprocess a site's records into its local cache"),
    "start": ("client.commands.start", "connect this site to the federation and serve it"),
    "approve": ("client.commands.approve", "review a coordinator's app bundle and approve it"),
    "audit": ("client.commands.audit", "what was asked of this site and what left it, per run"),
    "stop": ("client.commands.stop", "stop this site's running daemon"),
    "finetune": ("client.commands.finetune", "fine-tune a model on this site's data and keep it"),
    "predict": ("client.commands.predict", "per-label probabilities for ECG record files"),
    "evaluate": (
        "client.commands.evaluate",
        "score a model on this site's labelled records: AUC with CI, F1, calibration",
    ),
    "export": ("client.commands.export", "export a model to ONNX, verified with onnxruntime"),
    "dashboard": ("client.commands.dashboard", "a read-only web page of audit log, data, models"),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "ecgfl-hospital", "What a hospital's IT and data owner runs on site", COMMANDS, argv
    )


if __name__ == "__main__":
    sys.exit(main())
