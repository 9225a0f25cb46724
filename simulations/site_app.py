"""The ClientApp of a simulation's virtual sites: the production one (client.app.make_app: the
same handlers, audit log, egress guard and DP mods) plus a record of where each site ran.

On Flower's Simulation Engine every site is a Ray actor; on a Ray cluster (``ray_address``)
they spread over its nodes, and each reply says which node ran it (``placement_mod``, outside
the egress guard, which lets nothing but the protocol leave a hospital). The coordinator keeps
it in metrics.jsonl (``placement``: site -> Ray node id).
"""

from __future__ import annotations

import ray
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.app import make_app
from common import protocol


def ray_node() -> str | None:
    """The Ray node this process runs on, or None outside a Ray worker."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def placement_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Add the Ray node id to every reply that is not an error."""
    reply = call_next(msg, context)
    node = ray_node()
    if node is not None and not reply.has_error():
        reply.content[protocol.PLACEMENT_RECORD] = ConfigRecord({protocol.RAY_NODE: node})
    return reply


app = make_app(outer_mods=(placement_mod,))
