"""ecgfl's Flower ClientApp: a hospital trains, evaluates and fine-tunes on data kept on site."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client import audit, budget, node, task
from client.egress import egress_guard
from common import protocol
from common.experiment import ExperimentConfig
from common.site import SiteData
from common.transport import to_wire

#: Finds this node's data for a message's experiment.
SiteOpener = Callable[[Context, ExperimentConfig], SiteData]


def dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages of a run with client-side DP clipping."""
    config = msg.content.config_records.get(protocol.CONFIG_RECORD)
    if msg.metadata.message_type == protocol.TRAIN and config and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


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


def train(msg: Message, context: Context, open_site: SiteOpener) -> Message:
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    site = open_site(context, job.experiment)
    out = node.output_dir(context, site, job.run_name)
    own = budget.site_budget(context)  # a hospital's own lifetime DP-SGD budget, if it set one
    weights, metrics = task.train_on_site(job, site, msg.content[protocol.ARRAYS_RECORD], out, own)
    return _reply(msg, site.name, metrics, weights, job.experiment.federation.transport)


def evaluate(msg: Message, context: Context, open_site: SiteOpener) -> Message:
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    site = open_site(context, job.experiment)
    return _reply(
        msg, site.name, task.evaluate_on_site(job, site, msg.content[protocol.ARRAYS_RECORD])
    )


def finetune(msg: Message, context: Context, open_site: SiteOpener) -> Message:
    """The fine-tuned weights stay in the site's output folder; only scores go back."""
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    site = open_site(context, job.experiment)
    out = node.output_dir(context, site, job.run_name)
    metrics, _ = task.finetune_on_site(job, site, msg.content[protocol.ARRAYS_RECORD], out)
    return _reply(msg, site.name, metrics)


def identify(msg: Message, context: Context, open_site: SiteOpener) -> Message:
    """Which site this node is, so the coordinator can name it even if it never trains."""
    job = node.read_job(msg.content[protocol.CONFIG_RECORD], context)
    return _reply(msg, open_site(context, job.experiment).name, {})


def make_app(
    open_site: SiteOpener = node.open_site,
    inner_mods: Sequence[Mod] = (),
    outer_mods: Sequence[Mod] = (),
) -> ClientApp:
    """The ClientApp over the data ``open_site`` finds. The first mod sees the reply last: the
    egress guard checks what really leaves and the audit log records it, so ``inner_mods`` (a
    simulation's bad sites: simulations/attack_app.py) sit inside both; ``outer_mods`` (a
    simulation's own bookkeeping: simulations/site_app.py) see the reply after them."""
    mods = [*outer_mods, audit.audit_mod, egress_guard, *inner_mods, dp_clipping]
    client_app = ClientApp(mods=mods)
    client_app.train()(partial(train, open_site=open_site))
    client_app.evaluate()(partial(evaluate, open_site=open_site))
    client_app.train(protocol.FINETUNE_ACTION)(partial(finetune, open_site=open_site))
    client_app.query()(partial(identify, open_site=open_site))
    return client_app


#: What a hospital installs and runs (pyproject.toml: tool.flwr.app.components).
app = make_app()
