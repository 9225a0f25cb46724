"""ecgfl's Flower ClientApp: a hospital trains, evaluates and fine-tunes on data kept on site."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client import attack, audit, budget, node, task
from client.egress import egress_guard
from common import protocol
from common.transport import to_wire


def dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages of a run with client-side DP clipping."""
    config = msg.content.config_records.get(protocol.CONFIG_RECORD)
    if msg.metadata.message_type == protocol.TRAIN and config and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


# The first mod sees the reply last: the egress guard checks what really leaves, and the audit
# log records it.
app = ClientApp(mods=[audit.audit_mod, egress_guard, attack.attack_mod, dp_clipping])


def _reply(
    msg: Message, site: str, metrics: dict, arrays: dict | None = None, transport: str = "float32"
) -> Message:
    content = RecordDict(
        {
            protocol.METRICS_RECORD: MetricRecord(metrics),
            protocol.SITE_RECORD: ConfigRecord({protocol.SITE_NAME: site}),
        }
    )
    if arrays is not None:
        content[protocol.ARRAYS_RECORD] = to_wire(ArrayRecord(arrays), transport)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    site = node.open_site(context, job.experiment)
    flip = attack.flips_labels(context)  # simulated bad sites only
    out = node.output_dir(context, site, job.run_name)
    own = budget.site_budget(context)  # a hospital's own lifetime DP-SGD budget, if it set one
    weights, metrics = task.train_on_site(
        job, site, msg.content[protocol.ARRAYS_RECORD], out, flip, own
    )
    return _reply(msg, site.name, metrics, weights, job.experiment.federation.transport)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    site = node.open_site(context, job.experiment)
    out = node.output_dir(context, site, job.run_name)
    metrics = task.evaluate_on_site(job, site, msg.content[protocol.ARRAYS_RECORD], out)
    return _reply(msg, site.name, metrics)


@app.train(protocol.FINETUNE_ACTION)
def finetune(msg: Message, context: Context) -> Message:
    """The fine-tuned weights stay in the site's output folder; only scores go back."""
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    site = node.open_site(context, job.experiment)
    out = node.output_dir(context, site, job.run_name)
    metrics, _ = task.finetune_on_site(job, site, msg.content[protocol.ARRAYS_RECORD], out)
    return _reply(msg, site.name, metrics)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Which site this node is, so the coordinator can name it even if it never trains."""
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    return _reply(msg, node.open_site(context, job.experiment).name, {})
