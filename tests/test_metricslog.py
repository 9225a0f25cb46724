"""metrics.jsonl stays one short line per round and phase however many sites reply: their
metrics go to site_metrics.jsonl, and every reader gets the entries back whole."""

import json

from server import runs
from server.metricslog import MetricsLog, site_file


def _site(i: int) -> dict:
    return {
        "num-examples": 16 + i % 5,
        "train-loss": 0.5 + (i % 100) / 1000,
        "positives": [1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 3.0],
        "bytes-up": 123_456,
    }


def _train(rnd: int, n_sites: int) -> dict:
    names = [f"tis-{i:04d}" for i in range(1, n_sites + 1)]
    return {
        "round": rnd,
        "phase": "train",
        "sites": {n: _site(i) for i, n in enumerate(names)},
        "failed": [{"site": "tis-9999", "reason": "no reply within 600 s"}],
        "aggregate": {"train-loss": 0.55},
        "placement": {n: {"ray-node": "abc", "gpus": ""} for n in names},
    }


def test_a_round_of_1000_sites_is_one_short_line_and_its_sites_are_read_back_whole(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    written = [_train(rnd, 1000) for rnd in (1, 2)]
    for entry in written:
        log.write(entry)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(len(line) < 1000 for line in lines)
    line = json.loads(lines[0])
    assert line["n_sites"] == 1000 and "sites" not in line and "placement" not in line
    assert line["per_site"]["train-loss"] == {"min": 0.5, "median": 0.5495, "max": 0.599}
    assert "positives" not in line["per_site"]  # lists are not summarised
    assert line["failed"] == written[0]["failed"]
    assert len(site_file(log.path).read_text().splitlines()) == 2000
    for got, want in zip(log.read(), written, strict=True):
        assert got["sites"] == want["sites"] and got["placement"] == want["placement"]
    assert runs.entries(tmp_path)[1]["sites"]["tis-0500"] == _site(499)


def test_resuming_forgets_later_rounds_in_both_files(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for rnd in (1, 2, 3):
        log.write(_train(rnd, 60))
    log.write({"round": 3, "phase": "finetune", "sites": {"tis-0001": {"x": 1.0}}, "failed": []})
    log.truncate_after(2)
    assert [e["round"] for e in log.read()] == [1, 2]
    site_rounds = {json.loads(x)["round"] for x in site_file(log.path).read_text().splitlines()}
    assert site_rounds == {1, 2}


def test_lines_that_hold_their_sites_and_a_line_being_written_are_read_as_before(tmp_path):
    old = {"round": 1, "phase": "train", "sites": {"A": {"train-loss": 0.4}}, "failed": []}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(old) + "\n" + '{"round": 2, "pha')
    assert runs.entries(tmp_path) == [{**old, "aggregate": None}]
    assert MetricsLog(tmp_path / "metrics.jsonl").read() == [old]


def test_site_lines_of_a_phase_not_yet_logged_are_not_shown(tmp_path):
    """Site lines are written before their phase's line: until it is there, they wait."""
    orphan = {"round": 1, "phase": "evaluate", "site": "A", "metrics": {"macro-auc": 0.7}}
    site_file(tmp_path / "metrics.jsonl").write_text(json.dumps(orphan) + "\n")
    assert runs.entries(tmp_path) == []


def test_a_phase_in_which_no_site_replied_reads_back_with_no_sites(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({**_train(1, 0), "failed": [{"site": "A", "reason": "boom"}]})
    assert log.read()[0]["sites"] == {} and runs.entries(tmp_path)[0]["sites"] == {}


def test_the_console_line_names_a_few_sites_but_counts_1000():
    few = {**_train(3, 2), "failed": [{"site": "tis-9999", "reason": "no reply"}]}
    assert runs.progress_line(few) == (
        "[ecgfl] round 3 train: tis-0001, tis-0002; failed: tis-9999 (no reply)"
    )
    down = [{"site": f"tis-{i}", "reason": "no reply within 600 s"} for i in range(2000, 2012)]
    line = runs.progress_line({**_train(3, 1000), "failed": down})
    assert line.startswith("[ecgfl] round 3 train: 1000 sites; 12 failed: tis-2000 (no reply")
    assert line.endswith("tis-2009 (no reply within 600 s) and 2 more (all reasons: failures.log)")
    assert "tis-0001" not in line and "tis-2010" not in line and len(line) < 600
    one = runs.progress_line(_train(3, 1000))
    assert one == "[ecgfl] round 3 train: 1000 sites; 1 failed: tis-9999 (no reply within 600 s)"
