"""A failing site is reported once, in one readable line, and a run that cannot stay comparable
stops with a reason naming the site."""

from flwr.common.constant import ErrorCode

from server.rounds import reason_line, stop_reason

TRACEBACK = (
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\n"
    "\x1b[91mException ClientAppException occurred.\x1b[0m\n"
    "Traceback (most recent call last):\n"
    '  File "/work/main/client/app.py", line 44, in train\n'
    "    weights, metrics = task.train_on_site(job, site, arrays, out, flip, budget)\n"
    "client.egress.EgressViolation: record 'leaked-ecg' of type ArrayRecord'>"
)


def test_a_traceback_becomes_its_last_line_without_colours():
    line = reason_line(TRACEBACK)
    assert line == "client.egress.EgressViolation: record 'leaked-ecg' of type ArrayRecord'>"
    assert reason_line("x" * 1000).endswith("...") and len(reason_line("x" * 1000)) == 240
    assert reason_line("") == "no reason given"


def _failed(
    site: str, reason: str = "ValueError: boom", code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION
):
    return {"site": site, "reason": reason, "code": code}


def _train(rnd: int, failed: list[dict]) -> dict:
    return {"round": rnd, "phase": "train", "sites": {}, "failed": failed}


def test_too_few_sites_stop_the_run_naming_who_failed_and_why():
    reason = stop_reason(1, {"A": {}}, [_failed("B")], 2, [], 3)
    assert reason == (
        "round 1: 1 site(s) trained, fewer than min_sites 2 (failed: B: ValueError: boom)"
    )


def test_a_site_with_the_same_error_since_round_one_stops_the_run_at_round_two():
    sites = {"A": {}, "C": {}}
    assert stop_reason(1, sites, [_failed("B")], 2, [], 3) is None  # it may be transient
    reason = stop_reason(2, sites, [_failed("B")], 2, [_train(1, [_failed("B")])], 3)
    assert reason == "site B failed the same way in every round since round 1: ValueError: boom"


def test_a_one_round_run_stops_at_once_on_a_site_error():
    assert "site B" in stop_reason(1, {"A": {}}, [_failed("B")], 1, [], 1)


def test_dropout_a_different_error_or_a_resumed_run_does_not_stop_it():
    gone = _failed("B", "no reply within 60 s", ErrorCode.NODE_UNAVAILABLE)
    sites = {"A": {}, "C": {}}
    assert stop_reason(2, sites, [gone], 2, [_train(1, [gone])], 3) is None
    other = _failed("B", "OSError: disk full")
    assert stop_reason(2, sites, [other], 2, [_train(1, [_failed("B")])], 3) is None
    assert stop_reason(4, sites, [_failed("B")], 2, [_train(3, [_failed("B")])], 5) is None


def test_a_sampled_round_needs_its_share_of_min_sites_not_all_of_them():
    replied = {f"tis-{i:04d}": {} for i in range(100)}
    assert stop_reason(1, replied, [], 1000, [], 5, fraction=0.1) is None
    fewer = dict(list(replied.items())[:80])
    assert stop_reason(1, fewer, [], 1000, [], 5, fraction=0.1) == (
        "round 1: 80 site(s) trained, fewer than 100 (min_sites 1000 x fraction_train 0.1) "
        "(failed: no reply)"
    )
