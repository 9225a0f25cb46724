"""The ClientApp of a simulation's virtual sites: the production one (client.app.make_app: the
same handlers, audit log, egress guard and DP mods) plus a record of where each site ran.

On Flower's Simulation Engine every site is a Ray actor; on a Ray cluster (``ray_address``)
they spread over its nodes, and each reply says which node ran it and which GPUs Ray gave it
(``placement_mod``, outside the egress guard, which lets nothing but the protocol leave a
hospital). The coordinator keeps it in metrics.jsonl (``placement``: site -> node, GPUs).
"""

from __future__ import annotations

import ray
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.app import make_app
from common import protocol


def placement() -> dict[str, str] | None:
    """The Ray node this process runs on and the GPUs Ray gave it ("" for none), or None
    outside a Ray worker."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    gpus = context.get_accelerator_ids().get("GPU", [])
    return {protocol.RAY_NODE: context.get_node_id(), protocol.GPUS: ",".join(map(str, gpus))}


def placement_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Add where the site ran to every reply that is not an error."""
    reply = call_next(msg, context)
    where = placement()
    if where is not None and not reply.has_error():
        reply.content[protocol.PLACEMENT_RECORD] = ConfigRecord(where)
    return reply


app = make_app(outer_mods=(placement_mod,))
