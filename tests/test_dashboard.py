"""The run dashboard in a real browser (headless Chromium): what an operator or researcher sees
of finished, failing and running runs, live updates, and who may look."""

import base64
import json
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_provision import _train_message
from test_simulation import tiny_config

from server import dashboard, sitesummary
from server.rounds import MetricsLog
from server.runs import entries as run_entries
from simulations import run as sim

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_CHROMIUM = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"


def needs_chromium(test):
    """A browser test: e2e, skipped with the reason when there is no Chromium."""
    return pytest.mark.e2e(pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=NO_CHROMIUM)(test))


def fake_run(path: Path, rounds: int, done: int, sites: list[str], failing: str | None = None):
    """A coordinator run folder after ``done`` of ``rounds`` rounds, written by the real
    MetricsLog; ``failing`` fails every round with a reason."""
    path.mkdir(parents=True)
    (path / "experiment.yaml").write_text(yaml.safe_dump({"federation": {"rounds": rounds}}))
    log = MetricsLog(path / "metrics.jsonl")
    for rnd in range(1, done + 1):
        add_round(log, rnd, sites, failing)
    return log


def add_round(log: MetricsLog, rnd: int, sites: list[str], failing: str | None = None) -> None:
    failed = [{"site": failing, "reason": f"cache of {failing} is stale (round {rnd})"}]
    train = {s: {"num-examples": 50, "train-loss": 1 / (rnd + i)} for i, s in enumerate(sites)}
    evaluate = {s: {"val-loss": 0.5, "macro-auc": 0.5 + rnd / 100} for s in sites}
    log_round(log, rnd, train, evaluate, failed if failing else [], 0.5 + rnd / 100, privacy=None)


def log_round(
    log: MetricsLog,
    rnd: int,
    train: dict,
    evaluate: dict,
    failed: list[dict],
    macro_auc: float,
    **train_fields,
) -> None:
    """A round's train and evaluate entries as the coordinator writes them (train loss: the
    sites' mean)."""
    loss = sum(m["train-loss"] for m in train.values()) / len(train)
    log.write(
        {
            "round": rnd,
            "phase": "train",
            "sites": train,
            "failed": failed,
            "aggregate": {"train-loss": loss},
            "seconds": 1.5,
            **train_fields,
        }
    )
    log.write(
        {
            "round": rnd,
            "phase": "evaluate",
            "sites": evaluate,
            "failed": failed,
            "aggregate": {"macro-auc": macro_auc, "val-loss": 0.5},
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A coordinator run with a failing site, and one in progress."""
    root = tmp_path_factory.mktemp("dashboard") / "runs"
    fake_run(root / "flaky", 3, 3, ["alpha", "beta"], failing="gamma")
    fake_run(root / "live", 5, 2, ["alpha", "beta"])
    return root


@pytest.fixture(scope="module")
def simulated(runs) -> Path:
    """The same folder with a finished tiny simulation (2 rounds, 3 sites) added."""
    cfg = tiny_config(rounds=2)
    cfg.baselines.local_only = cfg.baselines.centralized = False
    sim.run(cfg, runs / "tiny-sim", progress=False)
    return runs


MANY = 200  # sites of the large run: summarised (sitesummary.SUMMARY_ABOVE is 50)


def many_sites_run(path: Path, rounds: int = 3) -> None:
    """A finished run of MANY sites written by the real MetricsLog: each round asks half of them
    (odd, even, odd), the first asked fails; every site fine-tunes but the last; a partition.
    Site ``site-i`` scores grow with i: the top sites are the last, the bottom the first."""
    names = [f"site-{i:03d}" for i in range(MANY)]
    log = fake_run(path, rounds, 0, [])
    for rnd in range(1, rounds + 1):
        down, *up = names[rnd % 2 :: 2]
        failed = [{"site": down, "reason": f"no reply within 600 s (round {rnd})"}]
        train = {s: {"train-loss": 1 / rnd + int(s[5:]) / 1000, "bytes-up": 1000} for s in up}
        evaluate = {
            s: {"val-loss": 0.5, "macro-auc": 0.5 + rnd / 100 + int(s[5:]) / 1000} for s in up
        }
        log_round(log, rnd, train, evaluate, failed, 0.6)
    tuned = {
        s: {
            "train-examples": 80,
            "num-examples": 20,
            "before-macro-auc": 0.6,
            "before-macro-f1": 0.3,
            "after-macro-auc": 0.6 + i / 1000,
            "after-macro-f1": 0.4,
        }
        for i, s in enumerate(names[:-1])
    }
    broken = [{"site": names[-1], "reason": "too few records to fine-tune"}]
    log.write({"round": rounds, "phase": "finetune", "sites": tuned, "failed": broken})
    counts = {s: {"records": 100 + i, "NORM": 50, "AFIB": i % 20} for i, s in enumerate(names)}
    (path / "partition").mkdir()
    (path / "partition" / "partition.json").write_text(json.dumps(counts))


def failing_sites_run(path: Path) -> None:
    """A later run of 150 of the MANY sites (site-000 to site-149) whose first round 60 fail in
    both phases: 40 time out, 15 run out of memory, 5 with a cache stale in its own words; the
    error replies' full reasons in failures.log."""
    names = [f"site-{i:03d}" for i in range(150)]
    reasons = ["no reply within 600 s"] * 40 + ["CUDA out of memory"] * 15
    reasons += [f"cache of {s} is stale" for s in names[55:60]]
    failed = [{"site": s, "reason": r} for s, r in zip(names, reasons, strict=False)]
    log = fake_run(path, 2, 0, [])
    for phase, key in (("train", "train-loss"), ("evaluate", "macro-auc")):
        sites = {s: {key: 0.7} for s in names[60:]}
        log.write({"round": 1, "phase": phase, "sites": sites, "failed": failed})
    full = [f"--- 2026-12-01 04:00:00 train {f['site']}\n{f['reason']}\n" for f in failed[40:]]
    (path / "failures.log").write_text("".join(full))


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A folder of runs holding one run of MANY sites, and a later one where many fail."""
    root = tmp_path_factory.mktemp("many") / "runs"
    many_sites_run(root / "many")
    failing_sites_run(root / "many-failing")
    return root


def site_names(components) -> set[str]:
    return set(re.findall(r"site-\d{3}", str(components)))


class Served:
    def __init__(self, runs: Path, host: str, token_file: Path | None = None) -> None:
        from werkzeug.serving import make_server

        self.server = make_server(host, 0, dashboard.build([runs], token_file).server, True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def site(runs):
    served = Served(runs, "127.0.0.1")
    yield f"http://127.0.0.1:{served.port}"
    served.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip(NO_CHROMIUM)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, css: str, text: str = "", timeout: float = 15):
    """The element once it holds ``text`` (the page is drawn by a callback after load)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        found = d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and text in found[0].text else False

    return WebDriverWait(driver, timeout).until(ready)


def shot(driver, tmp_path: Path, name: str) -> None:
    """A screenshot of the whole page, looked at while developing the pages."""
    time.sleep(0.5)  # plotly draws after the table
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True})
    (tmp_path / f"{name}.png").write_bytes(base64.b64decode(png["data"]))


def requested_urls(driver) -> list[str]:
    return driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


@needs_chromium
def test_the_run_list_shows_a_finished_simulation_and_fetches_nothing_outside(
    site, browser, simulated, tmp_path
):
    browser.get(site + "/")
    table = wait_for(browser, "#runs", "tiny-sim")
    row = next(r for r in table.text.splitlines() if r.startswith("tiny-sim"))
    assert "finished" in row and "2 of 2" in row
    assert "flaky" in table.text and "live" in table.text
    seen = browser.find_element("css selector", "#seen").text
    assert "gamma flaky round 3 evaluate (failed)" in seen.splitlines()
    shot(browser, tmp_path, "list")
    urls = requested_urls(browser)
    assert urls and all(u.startswith(site + "/") for u in urls), urls


@needs_chromium
def test_a_run_page_shows_every_round_and_site_of_its_metrics(site, browser, simulated, tmp_path):
    entries = run_entries(simulated / "tiny-sim")
    sites = {s for e in entries for s in e["sites"]}
    assert len(sites) == 3
    browser.get(site + "/run/tiny-sim")
    rounds = wait_for(browser, "#rounds", "val macro AUC")
    numbers = [r.split()[0] for r in rounds.text.splitlines()[1:]]
    phases = ("train", "evaluate")
    assert numbers == [
        str(r) for r in sorted({e["round"] for e in entries if e["phase"] in phases})
    ]
    table = browser.find_element("css selector", "#sites").text
    assert all(s in table for s in sites)
    finetune = browser.find_element("css selector", "#finetune").text
    assert all(s in finetune for s in sites)
    assert "finished" in browser.find_element("css selector", "#status").text
    assert browser.find_elements("css selector", ".js-plotly-plot")  # curves and partition
    assert "Partition" in browser.page_source
    urls = requested_urls(browser)  # plotly.js included: served from the wheels
    assert any("plotly" in u for u in urls) and all(u.startswith(site + "/") for u in urls), urls
    shot(browser, tmp_path, "run")
    browser.get(site + "/files/tiny-sim/report.md")
    assert "# Federated run tiny-sim" in browser.page_source


@needs_chromium
def test_a_run_of_200_sites_shows_their_summary(many, browser, tmp_path):
    served = Served(many, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{served.port}"
        browser.get(url + "/run/many")
        top = wait_for(browser, "#sites-top", "site-199")
        assert len(top.text.splitlines()) == 1 + sitesummary.SHOWN
        assert "200 sites answered or failed" in browser.page_source
        assert "tuned AUC 199" in browser.find_element("css selector", "#finetune").text
        rounds = browser.find_element("css selector", "#rounds").text.splitlines()[1:]
        assert [r.split()[:2] for r in rounds] == [["1", "99"], ["2", "99"], ["3", "99"]]
        partition = browser.find_element("css selector", "#partition").text
        assert "records per site 200 200 100 150 200 249 299" in partition  # n, mean, min, ...
        time.sleep(0.5)
        traces = browser.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot')].map(g => g.data.length)"
        )
        assert traces == [5, 4, 1], traces  # band + aggregates twice, the partition's heatmap
        legend = browser.find_element("css selector", ".js-plotly-plot .legend").text
        assert legend.index("train loss (mean)") < legend.index("median of 198 sites train")
        shot(browser, tmp_path, "many")
        browser.find_element("css selector", "a[href='/files/many/site_metrics.jsonl']").click()
        assert '"site": "site-150"' in browser.page_source
    finally:
        served.close()


@needs_chromium
def test_a_failed_sites_reason_appears(site, browser, tmp_path):
    browser.get(site + "/run/flaky")
    failures = wait_for(browser, "#failures", "gamma")
    assert "cache of gamma is stale (round 3)" in failures.text
    sites = browser.find_element("css selector", "#sites").text.splitlines()
    assert "gamma 0 3 - - - - round 3: cache of gamma is stale (round 3)" in sites
    shot(browser, tmp_path, "failed")


@needs_chromium
def test_two_runs_are_overlaid_on_one_chart(site, browser, simulated, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(site + "/")
    wait_for(browser, "#pick", "flaky")
    for label in browser.find_elements(By.CSS_SELECTOR, "#pick label"):
        if label.text.strip() in ("tiny-sim", "flaky"):
            label.click()
    link = wait_for(browser, "#compare-link", "compare")
    deadline = time.monotonic() + 5
    while "flaky" not in (link.get_attribute("href") or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    link.click()
    wait_for(browser, "#compare", "flaky")
    time.sleep(0.5)
    traces = browser.execute_script(
        "return [...document.querySelectorAll('.js-plotly-plot')].map(g => g.data.map(t => t.name))"
    )
    assert traces and all(set(t) == {"tiny-sim", "flaky"} for t in traces), traces
    shot(browser, tmp_path, "compare")


@needs_chromium
def test_a_run_in_progress_gains_a_round_without_reload(site, browser, runs, tmp_path):
    browser.get(site + "/run/live")
    rounds = wait_for(browser, "#rounds", "val macro AUC")
    assert len(rounds.text.splitlines()) == 1 + 2
    assert "running" in browser.find_element("css selector", "#status").text
    browser.execute_script("window.notReloaded = true")
    add_round(MetricsLog(runs / "live" / "metrics.jsonl"), 3, ["alpha", "beta", "delta"])
    wait_for(browser, "#rounds", "\n3 ", timeout=10)
    assert "delta" in browser.find_element("css selector", "#sites").text
    assert "round 3 of 5" in browser.find_element("css selector", "#status").text
    assert browser.execute_script("return window.notReloaded") is True
    shot(browser, tmp_path, "live")


def test_a_malformed_metrics_line_leaves_the_page_up(tmp_path):
    bad = tmp_path / "bad"
    fake_run(bad, 2, 1, ["alpha"])
    with open(bad / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 2, "phase": "train", "sites": [1]}\n{"round": 2, "pha\n\xff\n')
    (bad / "partition").mkdir()
    (bad / "partition" / "partition.json").write_text('{"alpha": {"records": "many"}}')
    page = dashboard.run_page("bad", dashboard.RunFolder(bad))
    assert "alpha" in str(page) and "Partition" not in str(page)


def test_the_privacy_budget_is_drawn_per_round_with_the_stop(tmp_path):
    log = fake_run(tmp_path / "dp", 5, 0, [])
    for rnd in (1, 2):
        spent = {"epsilon": 1.5 * rnd, "delta": 1e-5, "releases": rnd, "max-epsilon": 4.0}
        sites = {"alpha": {"train-loss": 0.5, "dp-epsilon": 0.7 * rnd}}
        log.write({"round": rnd, "phase": "train", "sites": sites, "failed": [], "privacy": spent})
    log.write({"round": 3, "phase": "privacy-stop", "reason": "round 3 would take epsilon past 4"})
    section = dashboard.privacy_section("dp", dashboard.run_entries(tmp_path / "dp"))
    (graph,) = [c for c in section if isinstance(c, dashboard.dcc.Graph)]
    traces = {t["name"]: t["y"] for t in graph.figure["data"]}
    assert traces == {"central DP": [1.5, 3.0], "budget": [4.0, 4.0], "alpha DP-SGD": [0.7, 1.4]}
    assert "round 3 would take epsilon past 4" in str(section)


def test_many_sites_draw_as_median_and_band_with_the_aggregate(many):
    entries = run_entries(many / "many")
    rows = dashboard.rounds_table(entries)
    loss, auc = dashboard.curves("many", entries, rows).children
    names = [t["name"] for t in loss.figure["data"]]
    assert names == [
        "sites' Q1 train",
        "sites' Q1-Q3 train",
        "median of 198 sites train",
        "train loss (mean)",
        "val loss (mean)",
    ]
    assert all(t["x"] == [1, 2, 3] for g in (loss, auc) for t in g.figure["data"]), (
        "a point a round"
    )
    median = loss.figure["data"][2]
    assert median["text"] == [99, 99, 99]  # the sites that replied in each round
    # round 1: odd sites 3..199 replied, loss 1 + i/1000: their median is site-101's
    assert median["y"][0] == pytest.approx(1.101)
    assert [t["name"] for t in auc.figure["data"]][-1] == "global"
    assert not site_names([loss.figure, auc.figure])


def test_many_sites_tables_show_their_spread_and_only_the_top_and_bottom_sites(many):
    folder = dashboard.RunFolder(many / "many")
    entries = run_entries(folder.path)
    shown = 2 * sitesummary.SHOWN
    sites = dashboard.sites_section(entries, "many", folder)
    assert "200 sites answered or failed" in str(sites)
    top, bottom = (
        c.children for c in sites if getattr(c, "id", "") in ("sites-top", "sites-bottom")
    )
    assert top.index("site-199") < top.index("site-197") < top.index("site-198")  # 198: round 2
    assert "site-002" in bottom and "site-000" not in str(sites)  # never replied: no AUC
    assert len(site_names(sites)) == shown
    spread = next(c for c in sites if getattr(c, "id", "") == "sites").children
    assert "<td>rounds trained</td><td>200</td>" in spread
    assert "/files/many/site_metrics.jsonl" in str(sites)

    finetune = dashboard.finetune_section(entries, "many", folder)
    assert "199 sites fine-tuned, 1 failed." in str(finetune)
    assert "<td>tuned AUC</td><td>199</td><td>0.699</td>" in str(finetune)  # n and mean
    assert "1 site(s): too few records to fine-tune (site-199)" in str(finetune)
    assert len(site_names(finetune)) == shown + 1 and "site-100" not in str(finetune)

    (partition,) = dashboard.partition_section("many", folder)[-1:]
    heatmap = partition.figure["data"][0]
    assert heatmap["y"][0] == "site-199 (n=299)" and heatmap["y"][-1] == "site-000 (n=100)"
    assert len(heatmap["y"]) == shown and len(heatmap["z"]) == shown

    rounds = dashboard.rounds_section(dashboard.rounds_table(entries))[-1].children
    assert "<td>99</td>" in rounds and site_names(rounds) == {"site-000", "site-001"}  # failed
    page = dashboard.run_page("many", folder)
    assert len(str(page)) < 60_000, "no row or point per site"


def test_many_failures_are_grouped_by_reason_with_a_few_sites_each(many):
    folder = dashboard.RunFolder(many / "many-failing")
    section = dashboard.failures_section(run_entries(folder.path), "many-failing", folder)
    text = str(section)
    assert "120 failed replies from 60 sites in 1 round(s)" in text
    assert "40 site(s): no reply within 600 s (site-000, site-001, site-002 and 37 more)" in text
    assert "15 site(s): CUDA out of memory (site-040, site-041, site-042 and 12 more)" in text
    assert "1 site(s): cache of site-055 is stale (site-055)" in text
    assert "and 2 other reasons" in text  # failure_summary shows 5 of the 7
    assert "/files/many-failing/failures.log" in text
    examples = [0, 1, 2, 40, 41, 42, 55, 56, 57]
    assert site_names(section) == {f"site-{i:03d}" for i in examples}, "no row per failure"
    page = dashboard.run_page("many-failing", folder)
    assert len(str(page)) < 60_000, "no row or point per site"


def test_the_run_list_counts_many_sites_and_shows_only_the_first_failing_ones(many):
    folders = {r: dashboard.RunFolder(many / r) for r in ("many", "many-failing")}  # oldest first
    page = dashboard.list_page(folders, [many])
    title = "Sites: the last round each answered or failed"
    section = page[[getattr(c, "children", "") for c in page].index(title) :]
    (seen,) = [c for c in section if getattr(c, "id", "") == "seen"]
    text = str(section)
    # site-150 to site-199 were last seen in "many" (site-199 failing to fine-tune), the others
    # in "many-failing", where site-000 to site-059 failed
    assert "200 sites: 139 answered when last asked, 61 failed." in text
    assert "40 site(s): no reply within 600 s (site-000, site-001, site-002 and 37 more)" in text
    assert "and 3 other reasons" in text  # failure_summary shows 5 of the 8
    rows = re.findall(r"<tr><td>(site-\d{3})</td><td>([^<]*)</td>", seen.children)
    assert rows == [(f"site-{i:03d}", "many-failing round 1 evaluate (failed)") for i in range(10)]
    examples = [*range(sitesummary.SHOWN), 40, 41, 42, 55, 56, 57]
    assert site_names(section) == {f"site-{i:03d}" for i in examples}, "no row per site"
    assert re.search(r"/run/many'.*50 sites.*/run/many-failing'.*150 sites", text)
    assert "/files/many-failing/site_metrics.jsonl" in text
    assert len(str(page)) < 6_000, "no row per site"


def test_fifty_sites_are_still_listed_one_by_one_on_the_run_list(tmp_path):
    names = [f"site-{i:03d}" for i in range(sitesummary.SUMMARY_ABOVE)]
    fake_run(tmp_path / "fifty", 1, 1, names[:-1], failing=names[-1])
    page = dashboard.list_page({"fifty": dashboard.RunFolder(tmp_path / "fifty")}, [tmp_path])
    assert page[-2].children == "Sites: the last round each answered or failed"
    assert site_names(page[-1]) == set(names) and page[-1].children.count("<tr>") == 1 + 50
    assert "<td>site-049</td><td>fifty round 1 evaluate (failed)</td>" in page[-1].children


def test_fifty_failed_replies_are_still_a_row_each(tmp_path):
    names = [f"site-{i:03d}" for i in range(sitesummary.SUMMARY_ABOVE // 2)]
    log = fake_run(tmp_path / "fifty", 1, 0, [])
    failed = [{"site": s, "reason": "no reply within 600 s"} for s in names]
    for phase in ("train", "evaluate"):
        log.write({"round": 1, "phase": phase, "sites": {}, "failed": failed})
    folder = dashboard.RunFolder(tmp_path / "fifty")
    (rows,) = dashboard.failures_section(run_entries(folder.path), "fifty", folder)[1:]
    assert rows.children.count("<tr>") == 1 + 50 and site_names(rows) == set(names)


def test_fifty_sites_are_still_listed_one_by_one(tmp_path):
    names = [f"site-{i:03d}" for i in range(sitesummary.SUMMARY_ABOVE)]
    fake_run(tmp_path / "fifty", 1, 1, names)
    folder = dashboard.RunFolder(tmp_path / "fifty")
    entries = run_entries(folder.path)
    assert site_names(dashboard.sites_section(entries, "fifty", folder)) == set(names)
    rounds = dashboard.rounds_section(dashboard.rounds_table(entries))
    assert "50: site-000, site-001" in str(rounds)


def test_the_files_a_summary_points_to_are_served_and_no_others(many):
    client = dashboard.build([many], None).server.test_client()
    reply = client.get("/files/many/site_metrics.jsonl")
    assert reply.status_code == 200 and b'"site": "site-150"' in reply.data
    assert client.get("/files/many/partition/partition.json").status_code == 200
    assert client.get("/files/many/partition/../metrics.jsonl").status_code == 404
    assert client.get("/files/many/metrics.jsonl").status_code == 404


def non_loopback_address() -> str | None:
    """This machine's address on its outgoing interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_other_addresses_are_refused_without_the_token(tmp_path):
    fake_run(tmp_path / "runs" / "flaky", 3, 3, ["alpha", "beta"], failing="gamma")
    app = dashboard.build([tmp_path / "runs"], tmp_path / "dashboard.token").server
    client = app.test_client()
    outside = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/", environ_base=outside).status_code == 403  # no token file: none
    (tmp_path / "dashboard.token").write_text("s3cret\n")
    for path in ("/", "/run/flaky", "/files/flaky/experiment.yaml", "/_dash-layout"):
        assert client.get(path, environ_base=outside).status_code == 401, path
    assert client.post("/login", data={"token": "wrong"}, environ_base=outside).status_code == 401
    login = client.post("/login", data={"token": "s3cret"}, environ_base=outside)
    assert login.status_code == 303
    assert client.get("/files/flaky/experiment.yaml", environ_base=outside).status_code == 200
    assert app.test_client().get("/").status_code == 200  # loopback needs no login
    cookie = {"HTTP_COOKIE": "ecgfl-dashboard=s\u00e9cret"}  # not even ASCII
    assert app.test_client().get("/", environ_base={**outside, **cookie}).status_code == 401


def test_a_foreign_site_rebinding_its_name_to_loopback_is_an_outsider(tmp_path):
    fake_run(tmp_path / "runs" / "flaky", 3, 3, ["alpha", "beta"], failing="gamma")
    client = dashboard.build([tmp_path / "runs"], tmp_path / "dashboard.token").server.test_client()
    for host in ("localhost:8050", "127.0.0.1:8050", "[::1]:8050", "LOCALHOST"):
        assert client.get("/run/flaky", headers={"Host": host}).status_code == 200, host
    assert client.get("/run/flaky", headers={"Host": "evil.example:8050"}).status_code == 403


@needs_chromium
def test_a_browser_on_another_address_must_log_in(runs, browser, tmp_path):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    token = tmp_path / "dashboard.token"
    served = Served(runs, "0.0.0.0", token)
    try:
        url = f"http://{address}:{served.port}"
        assert status_of(url + "/") == 403
        token.write_text("s3cret\n")
        assert status_of(url + "/run/flaky") == 401
        assert status_of(url + "/files/flaky/experiment.yaml") == 401
        browser.delete_all_cookies()
        browser.get(url + "/")
        assert "log in" in browser.page_source
        shot(browser, tmp_path, "login")
        field = browser.find_element("css selector", "input[name=token]")
        field.send_keys("s3cret")
        field.submit()
        wait_for(browser, "#runs", "flaky")
    finally:
        served.close()


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    """A hospital's folder: two answered messages and a refused one in its audit log (written by
    the real audit mod), a prepared cache with a skipped record, a fine-tuned model."""
    import numpy as np
    import torch
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )

    from client import audit
    from common.checkpoint import save_checkpoint
    from common.labels import LabelSpace
    from common.models import ModelConfig
    from common.preprocess import PipelineConfig

    root = tmp_path_factory.mktemp("hospital")
    log = root / "audit.jsonl"

    def handler(msg: Message, ctx: Context) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"head.weight": Array(np.ones((7, 16), np.float32))}),
                "metrics": MetricRecord({"num-examples": 31, "train-loss": 0.9}),
                "site": ConfigRecord({"name": "H1"}),
            }
        )
        return Message(content, reply_to=msg)

    audit.audit_mod(
        _train_message(), Context(7, 5, {"audit-log": str(log)}, RecordDict(), {}), handler
    )
    refused = {**audit.entry("refused", _train_message()), "message_id": "m2"}
    audit.write(log, {**refused, "reason": "bundle not approved", "bundle_sha256": "ab" * 32})
    with open(log, "a") as fh:
        fh.write("not json\n")
    cache = root / "cache" / "tis-0123-4567"
    cache.mkdir(parents=True)
    manifest = {"format": "tis", "data_dir": "/data/ecg", "records_found": 60}
    manifest |= {"records_skipped": 1, "pipeline_fingerprint": "4567"}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    problem = {"record_id": "r17", "path": "/data/ecg/r17.csv", "reason": "lead V3 is flat"}
    (cache / "problems.jsonl").write_text(json.dumps(problem) + "\n")
    pipeline = PipelineConfig(fs=50.0, length_s=10.0, lowpass_hz=20.0)
    model_cfg = ModelConfig(kwargs={"width": 0.125}, input_length=pipeline.length, fs=pipeline.fs)
    space = LabelSpace.load("seed6")
    torch.manual_seed(0)
    save_checkpoint(
        root / "output" / "study-1" / "finetuned.pt",
        model_cfg.build(n_classes=len(space)),
        model_cfg,
        space,
        pipeline.fingerprint,
        pipeline.to_dict(),
        run="study-1",
        before={"macro_auc": 0.61, "macro_f1": 0.2},
        after={"macro_auc": 0.74, "macro_f1": 0.3},
    )
    (root / "hospital.yaml").write_text(
        yaml.safe_dump({"site": "H1", "superlink": "coordinator:9092", "data_dir": "/data/ecg"})
    )
    return root


def test_the_hospital_page_survives_a_bad_audit_line_and_a_broken_model(hospital, tmp_path):
    from client import dashboard as hospital_dashboard
    from common.hospital import HospitalConfig

    broken = tmp_path / "hospital"
    shutil.copytree(hospital, broken)
    (broken / "output" / "study-2").mkdir()
    (broken / "output" / "study-2" / "finetuned.pt").write_bytes(b"half a file")
    with open(broken / "audit.jsonl", "a") as fh:
        fh.write('{"event": "sent", "records": 5}\n[1, 2]\n{"event": "received", "records": [3]}\n')
    app = hospital_dashboard.build(HospitalConfig.load(broken / "hospital.yaml"), None)
    assert app.server.test_client().get("/").status_code == 200
    page = str(hospital_dashboard.models_section(broken / "output"))
    assert "unreadable" in page and "0.740" in page
    audit = str(hospital_dashboard.audit_section(broken / "audit.jsonl"))
    assert "bundle not approved" in audit and "unreadable line" in audit


@needs_chromium
def test_the_hospital_sees_what_left_the_data_check_and_its_models(hospital, browser, tmp_path):
    from werkzeug.serving import make_server

    from client import dashboard as hospital_dashboard
    from common.hospital import HospitalConfig

    app = hospital_dashboard.build(HospitalConfig.load(hospital / "hospital.yaml"), None)
    server = make_server("127.0.0.1", 0, app.server, True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        rows = wait_for(browser, "#audit", "refused").text
        assert "study-1" in rows and "answered" in rows and "bundle not approved" in rows
        assert "train-loss" in rows and "head.weight" not in rows  # shapes fold out
        browser.find_element("css selector", "#audit summary").click()
        left = browser.find_element("css selector", "#audit").text
        assert "arrays/head.weight: [7, 16] float32 576 B" in left  # 448 B of values + header
        assert "lead V3 is flat" in browser.find_element("css selector", "#problems").text
        models = browser.find_element("css selector", "#models").text
        assert "study-1" in models and "0.610" in models and "0.740" in models
        shot(browser, tmp_path, "hospital")
    finally:
        server.shutdown()


def test_an_empty_runs_folder_says_where_it_looked(tmp_path):
    app = dashboard.build([tmp_path / "runs"], None)
    assert app.server.test_client().get("/").status_code == 200
    assert f"No run folder (with experiment.yaml) in {tmp_path / 'runs'}" in str(
        dashboard.list_page({}, [tmp_path / "runs"])
    )


def test_the_coordinators_page_shows_connected_hospitals_and_the_superlinks_run_state(
    tmp_path, monkeypatch
):
    from common.errors import RunFailed
    from server import coordinator
    from server.provision import provision

    provision(tmp_path, ["H1", "H2"], ["localhost"])
    cfg = coordinator.CoordinatorConfig.load(tmp_path / "coordinator" / "coordinator.yaml")
    fake_run(cfg.state / "runs" / "study-1", 3, 1, ["H1"])
    (cfg.state / "runs" / "study-1" / "flower_runs.json").write_text("[42]")
    (cfg.state / "nodes.json").write_text(json.dumps({"7": "H1", "8": "H2"}))
    nodes = [{"node-id": 7, "status": "online"}, {"node-id": 8, "status": "offline"}]
    answers = {"supernode": {"nodes": nodes}, "ls": {"runs": [{"run-id": 42, "status": "running"}]}}
    monkeypatch.setattr(coordinator, "flwr_json", lambda cfg, *args: answers[args[0]])
    federation = dashboard.Federation(cfg)
    federation.refresh()
    page = str(dashboard.list_page(dashboard.Catalog([cfg.state / "runs"]).runs(), [], federation))
    assert "running: round 1 of 3" in page
    rows = {r.split("|")[1].strip(): r for r in federation.hospitals.splitlines()[2:]}
    assert "| connected |" in rows["H1"] and "study-1 round 1 evaluate" in rows["H1"]
    assert "| not connected |" in rows["H2"]

    def down(cfg, *args):
        raise RunFailed("the SuperLink is not running (ecgfl-coordinator start)")

    monkeypatch.setattr(coordinator, "flwr_json", down)
    federation.refresh()
    assert "did not answer: the SuperLink is not running" in federation.hospitals
    assert federation.flower == {}
