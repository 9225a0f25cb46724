"""What travels between the coordinator and a site, defined once: message types, record and key
names, metric names, and the job a site is given.

Both sides import this module (the ServerApp never imports the ClientApp): the coordinator
writes a ``Job`` into every message with ``Job.to_record`` and a site decodes it with
``Job.from_record``. A reply holds at most three records: ``arrays`` (train only), ``metrics``
and ``site`` (``{"name": SITE}``); the hospital's egress guard refuses anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord

from common import config
from common.labels import LabelSpace

if TYPE_CHECKING:  # readers of metric names (reports, the dashboard) need no torch
    from common.experiment import ExperimentConfig

# Message types. "train" and "evaluate" are Flower's; the others are ecgfl's.
TRAIN, EVALUATE, QUERY = "train", "evaluate", "query"
FINETUNE_ACTION = "finetune"
FINETUNE = f"{TRAIN}.{FINETUNE_ACTION}"  # a train message with an action: @app.train("finetune")

# The run config that starts a run (``flwr run --run-config run_config.toml``; written by
# server.runs.write_run_config, declared with defaults in pyproject's [tool.flwr.app.config]).
RUN_DIR = "run-dir"  # absolute: checkpoints, metrics, report
EXPERIMENT_FILE = "experiment"  # the run's pinned experiment.yaml; empty = defaults
SITE_MANIFEST = "site-manifest"  # simulation: the virtual sites (docs/formats.md)
RESUME = "resume"  # continue from the last complete round in RUN_DIR
MAX_IN_FLIGHT = "max-in-flight"  # simulation: messages an exchange keeps in flight; 0 = all

# Records of a message or a reply.
CONFIG_RECORD, ARRAYS_RECORD, METRICS_RECORD = "config", "arrays", "metrics"
SITE_RECORD, SITE_NAME = "site", "name"  # every reply names its site: {"site": {"name": ...}}
# Simulation only (simulations/site_app.py; a hospital's egress guard lets nothing else out):
# where a virtual site ran (its Ray node, the GPUs Ray gave it), added to its reply after the guard.
PLACEMENT_RECORD, RAY_NODE, GPUS = "placement", "ray-node", "gpus"

# Keys of the coordinator's config record.
EXPERIMENT = "experiment"  # the experiment as JSON
LABEL_SPACE = "label-space"  # the label space as JSON (it may exist only at the coordinator)
FINETUNE_LABEL_SPACE = "finetune-label-space"  # the space fine-tuning grows/shrinks the head to
RUN_NAME = "run-name"  # the run folder's name: also the run's folder at every site
RUN_ID = "run-id"  # drawn when the run starts, kept on resume: whose files a site reads
SERVER_ROUND = "server-round"  # added by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # added by Flower's FedProx

# Metric names of the replies.
NUM_EXAMPLES = "num-examples"  # the weight of a site's reply in aggregation (Flower's key)
TRAIN_LOSS, VAL_LOSS = "train-loss", "val-loss"
MACRO_AUC, MICRO_AUC = "macro-auc", "micro-auc"
POSITIVES, ANNOTATED = "positives", "annotated"  # per label, of the training split
TRAIN_EXAMPLES = "train-examples"
BEFORE_MACRO_AUC, BEFORE_MACRO_F1 = "before-macro-auc", "before-macro-f1"  # fine-tuning
AFTER_MACRO_AUC, AFTER_MACRO_F1 = "after-macro-auc", "after-macro-f1"
# ... the macro AUCs' 95 % bootstrap intervals ([low, high]) and bootstrap standard errors, computed
# at the site over its test split, and the test split's per-label counts (fine-tuning's labels).
BEFORE_MACRO_AUC_CI, AFTER_MACRO_AUC_CI = "before-macro-auc-ci", "after-macro-auc-ci"
BEFORE_MACRO_AUC_SE, AFTER_MACRO_AUC_SE = "before-macro-auc-se", "after-macro-auc-se"
TEST_POSITIVES, TEST_ANNOTATED = "test-positives", "test-annotated"
# finetune.mode auto: per candidate method, candidate_metric(method, one of these).
CANDIDATE_VAL_AUC, CANDIDATE_TEST_AUC, CANDIDATE_PICKED = "val-auc", "test-auc", "picked"
DP_EPSILON = "dp-epsilon"  # DP-SGD: what the site has spent in this run so far
DP_EPSILON_NEXT = "dp-epsilon-next"  # ... and would have spent after one more round
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
# Added by the coordinator in metrics.jsonl: what travelled (bytes of arrays) each way.
BYTES_UP, BYTES_DOWN = "bytes-up", "bytes-down"


def candidate_metric(method: str, what: str) -> str:
    """``full-val-auc``, ``ditto-picked``: what an ``auto`` site reports of each candidate."""
    return f"{method}-{what}"


class Phase(StrEnum):
    """What one line of a run's metrics.jsonl records (its ``phase``); equal to its text, so
    lines read back from JSON compare with these directly."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    FINETUNE = "finetune"
    STOPPED = "stopped"  # the run stopped: sites failed past what it can go on without
    PRIVACY_STOP = "privacy-stop"  # the next round would spend past the privacy budget


@dataclass
class Job:
    """The coordinator's instructions for one message."""

    experiment: ExperimentConfig
    space: LabelSpace
    finetune_space: LabelSpace
    run_name: str
    run_id: str = ""
    server_round: int = 0
    proximal_mu: float = 0.0

    @classmethod
    def for_run(cls, experiment: ExperimentConfig, run_name: str, run_id: str = "") -> Job:
        """The job of a run, as the coordinator composes it once."""
        space = LabelSpace.load(experiment.labels)
        labels = experiment.finetune.labels
        ft_space = LabelSpace.load(labels) if labels else space
        return cls(experiment, space, ft_space, run_name, run_id)

    def to_record(self) -> ConfigRecord:
        """What the coordinator sends; Flower's strategies add the round (and FedProx's mu)."""
        return ConfigRecord(
            {
                EXPERIMENT: json.dumps(self.site_experiment()),
                LABEL_SPACE: json.dumps(self.space.to_dict()),
                FINETUNE_LABEL_SPACE: json.dumps(self.finetune_space.to_dict()),
                RUN_NAME: self.run_name,
                RUN_ID: self.run_id,
            }
        )

    def site_experiment(self) -> dict:
        """The experiment as sites receive it: without the coordinator's own ``tracking``
        (where it reports the run, an address sites have no business knowing)."""
        data = self.experiment.to_dict()
        data.pop("tracking", None)
        return data

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Job:
        """A site's reading of a message. The experiment and label spaces are validated once per
        process (a simulation's ClientApp process answers many messages of the same run)."""
        experiment, space, ft_space = _decode(
            str(record[EXPERIMENT]), str(record[LABEL_SPACE]), str(record[FINETUNE_LABEL_SPACE])
        )
        return cls(
            experiment=experiment,
            space=space,
            finetune_space=ft_space,
            run_name=str(record.get(RUN_NAME, "run")),
            run_id=str(record.get(RUN_ID, "")),
            server_round=int(record.get(SERVER_ROUND, 0)),
            proximal_mu=float(record.get(PROXIMAL_MU, 0.0)),
        )


@lru_cache(maxsize=4)
def _decode(experiment: str, space: str, ft_space: str):
    """The coordinator's experiment and label spaces from their JSON, checked as if loaded from
    a file (the objects are shared by the messages that carry the same text: never mutate)."""
    from common.experiment import ExperimentConfig

    return (
        config.from_dict(ExperimentConfig, json.loads(experiment), "coordinator's experiment"),
        LabelSpace.from_dict(json.loads(space), "coordinator's labels"),
        LabelSpace.from_dict(json.loads(ft_space), "coordinator's fine-tuning labels"),
    )
