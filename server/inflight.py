"""A Grid that keeps at most ``limit`` messages of an exchange in flight: a simulation's.

Flower 1.42's Simulation Engine finds work by asking, every 100 ms, for each node's next
message, and each ask scans every stored message (``vce_api.add_messages_to_queue``,
``InMemoryLinkState.get_message_ins``): a sweep costs nodes x messages waiting. With 1,000 virtual
sites and a sampled round's 100 messages waiting, one sweep took 215 ms on the 2-core machine
(3 ms at 100 sites and 10 messages): most of a core, under the state's lock, while the engine
runs two sites at a time. A few more messages in flight than the engine runs at once keep its
workers busy and the sweep short. A deployment's coordinator sends every message at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.1  # Flower's InMemoryGrid's own


class InFlightLimit(Grid):
    """``grid``, whose ``send_and_receive`` pushes the next message only while fewer than
    ``limit`` wait for their reply."""

    def __init__(self, grid: Grid, limit: int) -> None:
        self.grid, self.limit = grid, limit

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Every reply, or those that came within ``timeout`` (messages not pushed by then are
        never sent: like unanswered ones, they have no reply)."""
        queued, waiting, replies = list(messages), set(), []
        end = None if timeout is None else time.monotonic() + timeout
        while queued or waiting:
            room = self.limit - len(waiting)
            if room > 0 and queued:
                waiting.update(self.grid.push_messages(queued[:room]))
                queued = queued[room:]
            got = list(self.grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if end is not None and time.monotonic() >= end:
                break
            if not got:
                time.sleep(PULL_INTERVAL_S)
        return replies

    # The rest of Grid's API is the wrapped grid's.
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content: RecordDict, *args, **kwargs) -> Message:
        return self.grid.create_message(content, *args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)
