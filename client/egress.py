"""The egress guard: a ClientApp mod that lets a reply leave the site only if it holds what the
protocol allows, whatever code produced it.

Allowed in a reply (anything else raises, so the reply becomes an error and nothing else leaves):
- ``train`` only: one ArrayRecord whose arrays are those of the model the coordinator sent in the
  same message (all of them, or some in the same order: a personalisation method may keep part
  of the model at the site), same names and shapes, numeric and no wider than what was received;
- one MetricRecord of at most ``MAX_METRICS`` entries, short plain keys, each value a number or a
  per-class list no longer than the label space (at most ``MAX_LIST``);
- one ConfigRecord ``site`` holding only ``name``: a short plain name, the node's own when its node
  config names it.
Error messages name what was wrong but never echo a refused value, so they carry nothing out.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from common import protocol
from common.names import is_plain_name

log = logging.getLogger("ecgfl.client")
MAX_LIST = 64
MAX_METRICS = 32
ALLOWED_RECORDS = {
    protocol.ARRAYS_RECORD: ArrayRecord,
    protocol.METRICS_RECORD: MetricRecord,
    protocol.SITE_RECORD: ConfigRecord,
}
_KEY = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_NUMERIC = {"float16", "float32", "float64", "int32", "int64"}


class EgressViolation(Exception):
    """A reply held something the protocol does not allow; it was not sent."""


def _name(key: str) -> str:
    """A refused key for an error message: itself if plain, else only its length."""
    return repr(key) if _KEY.fullmatch(key) else f"a {len(key)}-character key"


def check_reply(
    received: RecordDict,
    reply: RecordDict,
    message_type: str,
    *,
    max_list: int = MAX_LIST,
    site: str | None = None,
) -> None:
    """Raise ``EgressViolation`` unless ``reply`` is an allowed answer to ``received``."""
    for key, record in reply.items():
        allowed = ALLOWED_RECORDS.get(key)
        if allowed is None or not isinstance(record, allowed):
            raise EgressViolation(f"record {_name(key)} of type {type(record).__name__}")
    if "arrays" in reply:
        if message_type != "train":
            raise EgressViolation(f"arrays in a {message_type} reply: only train sends weights")
        _check_arrays(received, reply[protocol.ARRAYS_RECORD])
    if "metrics" in reply:
        _check_metrics(reply["metrics"], max_list)
    if protocol.SITE_RECORD in reply:
        _check_site(reply[protocol.SITE_RECORD], site)


def _check_arrays(received: RecordDict, sent: ArrayRecord) -> None:
    models = list(received.array_records.values())
    if len(models) != 1:
        raise EgressViolation("arrays in a reply to a message that sent no single model")
    model = models[0]
    if list(sent.keys()) != [k for k in model if k in sent]:
        extra = [_name(k) for k in sent if k not in model][:3]
        raise EgressViolation(
            f"arrays differ from the model's: extra {extra or '-'}"
            + ("" if extra else ", or out of the model's order")
        )
    if not len(sent):
        raise EgressViolation("an empty ArrayRecord: a train reply sends the model or its body")
    for key, array in sent.items():
        expected = model[key]
        if tuple(array.shape) != tuple(expected.shape):
            raise EgressViolation(f"array {key!r} is shaped {array.shape}, not {expected.shape}")
        # float16/float32 are the two transports, and FedAvg returns integer buffers (BatchNorm's
        # counter) as float64: any numeric dtype, no wider than the one received (or 4 bytes).
        width = max(np.dtype(expected.dtype).itemsize, 4)
        if array.dtype not in _NUMERIC or np.dtype(array.dtype).itemsize > width:
            raise EgressViolation(
                f"array {key!r} is {array.dtype}, wider than the {expected.dtype} received"
            )


def _check_metrics(metrics: MetricRecord, max_list: int) -> None:
    if len(metrics) > MAX_METRICS:
        raise EgressViolation(f"{len(metrics)} metrics; at most {MAX_METRICS} may leave")
    for key, value in metrics.items():
        if not _KEY.fullmatch(key):
            raise EgressViolation(f"metric {_name(key)}: not a plain metric name")
        if isinstance(value, list) and len(value) > max_list:
            raise EgressViolation(
                f"metric {key!r} is a list of {len(value)}; per-class lists hold at most {max_list}"
            )


def _check_site(record: ConfigRecord, site: str | None) -> None:
    if list(record.keys()) != [protocol.SITE_NAME]:
        raise EgressViolation(f"the site record may hold only {protocol.SITE_NAME!r}")
    name = record[protocol.SITE_NAME]
    if not is_plain_name(name):
        raise EgressViolation("the site name is not a short plain name")
    if site is not None and name != site:
        raise EgressViolation("the site name differs from this node's configured site")


def label_limit(received: RecordDict) -> int:
    """Per-class lists may be as long as the larger label space of the job, at most MAX_LIST."""
    sizes = []
    for config in received.config_records.values():
        for key in (protocol.LABEL_SPACE, protocol.FINETUNE_LABEL_SPACE):
            if key in config:
                sizes.append(len(json.loads(str(config[key]))["labels"]))
    return min(MAX_LIST, max(sizes)) if sizes else MAX_LIST


def egress_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: check every reply against ``check_reply``; first in ``mods`` so that it
    sees the reply last, after every other mod."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    site = context.node_config.get("site")
    try:
        check_reply(
            msg.content,
            reply.content,
            msg.metadata.message_type,
            max_list=label_limit(msg.content),
            site=str(site) if site is not None else None,
        )
    except EgressViolation as exc:
        log.error("egress guard: reply to %s refused: %s", msg.metadata.message_type, exc)
        raise
    return reply
