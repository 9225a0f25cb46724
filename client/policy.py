"""A hospital's own limits on what a coordinator may ask of it, enforced in the hospital's installed
ClientApp whatever the run config says.

The policy comes from ``hospital.yaml`` (section ``policy``) and reaches the ClientApp through the
node config that the hospital's own ClientApp runner writes (``client.runner``), never through the
coordinator's messages. A message that asks for more is refused with the limit it broke named.
"""

from __future__ import annotations

from common import protocol
from common.experiment import ExperimentConfig
from common.hospital import SitePolicy
from common.labels import LabelSpace
from common.names import RULE, is_plain_name

POLICY_KEY = "policy"  # node config key: the policy as JSON


class PolicyViolation(Exception):
    """The coordinator asked for something this hospital's policy does not allow."""


def plain_name(value: str, what: str) -> str:
    """A coordinator-sent name that becomes a folder: one plain path component, nothing else."""
    if not is_plain_name(value):
        raise PolicyViolation(f"{what} is not a plain name ({RULE}; no separators)")
    return value


def model_parameters(experiment: ExperimentConfig, n_classes: int) -> int:
    """Parameters of the requested model, counted on the meta device: nothing is allocated, so a
    hostile width costs nothing to refuse."""
    try:
        return experiment.model_config().check_size(n_classes)
    except ValueError as exc:
        raise PolicyViolation(f"the run's model: {exc}") from exc


def check_job(
    policy: SitePolicy,
    experiment: ExperimentConfig,
    spaces: list[LabelSpace],
    run_name: str,
    server_round: int,
) -> None:
    """Raise ``PolicyViolation`` naming the first limit the coordinator's job breaks."""
    plain_name(run_name, protocol.RUN_NAME)
    fed, pipe = experiment.federation, experiment.pipeline
    checks = [
        ("max_rounds", max(fed.rounds, server_round), policy.max_rounds),
        (
            "max_epochs",
            max(experiment.local.epochs, experiment.finetune.train.epochs),
            policy.max_epochs,
        ),
        (
            "max_batch_size",
            max(experiment.local.batch_size, experiment.finetune.train.batch_size),
            policy.max_batch_size,
        ),
        ("max_length_s", pipe.length_s, policy.max_length_s),
        ("max_fs", pipe.fs, policy.max_fs),
    ]
    for name, asked, limit in checks:
        if asked > limit:
            raise PolicyViolation(
                f"the run asks for {asked:g}, past this hospital's {name} {limit}"
            )
    for space in spaces:
        if space.name not in policy.label_spaces or space != LabelSpace.load(space.name):
            raise PolicyViolation(
                f"label space {space.name!r} is not one this hospital allows as installed here "
                f"(label_spaces: {policy.label_spaces})"
            )
    n = model_parameters(experiment, max(len(s) for s in spaces))
    if n > policy.max_model_parameters:
        raise PolicyViolation(
            f"the model has {n:,} parameters, past this hospital's max_model_parameters "
            f"{policy.max_model_parameters:,}"
        )
    if policy.dp_max_epsilon is not None and not fed.dp_sgd.enabled:
        raise PolicyViolation(
            f"this hospital trains only with DP-SGD (dp_max_epsilon {policy.dp_max_epsilon}) and "
            "the run has federation.dp_sgd off"
        )
