"""A simulation's exchanges keep a few messages in flight, not a round's hundred: Flower's
Simulation Engine scans every waiting message for every node, ten times a second."""

from types import SimpleNamespace

from server.inflight import InFlightLimit


class TwoWorkers:
    """The SuperLink as a Grid sees it, with an engine that answers two messages per pull."""

    def __init__(self, answers_per_pull: int = 2) -> None:
        self.waiting: list[str] = []
        self.most_waiting = 0
        self.answers = answers_per_pull
        self.pushed = 0

    def push_messages(self, messages):
        ids = [f"m{self.pushed + i}" for i in range(len(messages))]
        self.pushed += len(messages)
        self.waiting += ids
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        return ids

    def pull_messages(self, message_ids):
        done = [m for m in self.waiting if m in set(message_ids)][: self.answers]
        self.waiting = [m for m in self.waiting if m not in done]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in done]


def test_a_round_of_100_messages_keeps_at_most_the_limit_waiting_and_gets_every_reply():
    engine = TwoWorkers()
    replies = InFlightLimit(engine, 8).send_and_receive([object()] * 100, timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(
        f"m{i}" for i in range(100)
    )
    assert engine.most_waiting == 8


def test_messages_not_answered_within_the_timeout_have_no_reply():
    engine = TwoWorkers(answers_per_pull=0)  # an engine that never answers
    replies = InFlightLimit(engine, 8).send_and_receive([object()] * 20, timeout=0.3)
    assert replies == [] and engine.pushed == 8  # the other 12 were never sent
