"""``hospital.yaml``: a hospital's own settings and limits.

In common/ because two sides write it: the coordinator's provisioning makes the first one of
every bundle, and the hospital edits and loads it (its daemon, its ClientApp runner, its
commands). Only the hospital's code ever reads it: nothing here comes from a coordinator's
message.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common import config
from common.labels import builtin_spaces
from common.preprocess import PipelineConfig


@dataclass
class SitePolicy:
    """``hospital.yaml: policy``: what this site agrees to run. The defaults are safe for the
    models and pipelines ecgfl ships; a site raises a limit deliberately."""

    max_rounds: int = 200  # federation.rounds and any server round
    max_epochs: int = 50  # local epochs per round, and fine-tuning epochs
    max_batch_size: int = 1024
    max_length_s: float = 60.0  # pipeline.length_s
    max_fs: float = 1000.0  # pipeline.fs, Hz
    max_model_parameters: int = 20_000_000
    label_spaces: list[str] = field(default_factory=builtin_spaces)  # as installed here
    # Set: this site trains only under DP-SGD and never past this epsilon at delta 1e-5, counted
    # over every run for the site's lifetime.
    dp_max_epsilon: float | None = None
    trust_installed_release: bool = True  # accept bundles whose Python code equals ours
    approved_apps: dict[str, str] = field(default_factory=dict)  # bundle sha256 -> note

    def validate(self) -> None:
        positive = ("max_rounds", "max_epochs", "max_batch_size", "max_length_s", "max_fs")
        if any(getattr(self, k) <= 0 for k in (*positive, "max_model_parameters")):
            raise ValueError(f"{', '.join(positive)} and max_model_parameters must be positive")
        if self.dp_max_epsilon is not None and self.dp_max_epsilon <= 0:
            raise ValueError("dp_max_epsilon must be > 0 (or omitted)")
        unknown = sorted(set(self.label_spaces) - set(builtin_spaces()))
        if unknown:
            raise ValueError(f"label_spaces {unknown}: not installed here ({builtin_spaces()})")
        bad = [h for h in self.approved_apps if not re.fullmatch(r"[0-9a-f]{64}", h)]
        if bad:
            raise ValueError(f"approved_apps {bad}: expected SHA-256 hex digests")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SitePolicy:
        return config.from_dict(cls, json.loads(text), "hospital policy")


@dataclass
class HospitalConfig:
    """``hospital.yaml``: this site, its coordinator, and where its files live.

    Relative paths are relative to the YAML file.
    """

    site: str
    superlink: str  # the coordinator's HOST:PORT
    data_dir: str  # folder of ECG records (read only; never modified)
    root_certificates: str = "ca.crt"  # the federation's CA: proves the coordinator is ours
    private_key: str = ""  # this site's OpenSSH key: proves to the coordinator we are this site
    format: str | None = None  # detected when omitted
    cache_dir: str = "cache"
    output_dir: str = "output"  # fine-tuned models: they stay here
    audit_log: str = "audit.jsonl"
    log_file: str = "supernode.log"
    state_dir: str = "state"  # the SuperNode's working directory and FLWR_HOME
    runtime_port: int = 9094  # local ClientApp API; distinct per SuperNode on one host
    labels: str = "seed6"  # label space the data check reports on
    pipeline: PipelineConfig | None = None  # the federation's; None = the default pipeline
    max_backoff_s: float = 300.0
    policy: SitePolicy = field(default_factory=SitePolicy)  # what this site agrees to run

    def validate(self) -> None:
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"superlink={self.superlink!r}: expected HOST:PORT")
        if not 0 < self.runtime_port < 65536 or self.max_backoff_s < 1:
            raise ValueError("runtime_port must be 1..65535 and max_backoff_s at least 1")
        quoted = [
            k
            for k in ("site", "data_dir", "cache_dir", "output_dir", "audit_log")
            if '"' in getattr(self, k)
        ]
        if quoted:
            raise ValueError(f"{quoted}: a double quote cannot pass through Flower's node config")

    @classmethod
    def load(cls, path: str | Path) -> HospitalConfig:
        cfg = config.load(cls, path)
        return replace(
            cfg,
            **{
                k: config.relative_to_file(getattr(cfg, k), path, k) if getattr(cfg, k) else ""
                for k in (
                    "data_dir",
                    "root_certificates",
                    "private_key",
                    "cache_dir",
                    "output_dir",
                    "audit_log",
                    "log_file",
                    "state_dir",
                )
            },
        )
