"""Dashboard start-up and page times on a large run: a synthetic run folder of 100 rounds x 64
sites (written by the real MetricsLog), served by ``ecgfl-simulate dashboard`` in its own process.

Start-up: from launching the command to the first page answered. Page: the server's answer to the
callback that draws a page (what a browser waits for), the first time and again (metrics.jsonl is
read once per change); with Chromium installed, also the time until a browser has drawn the run
page with its charts.

    .venv/bin/python benchmarks/bench_dashboard.py [--rounds 100] [--sites 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from common import protocol
from server import runs
from server.rounds import MetricsLog

BIN = Path(sys.executable).parent
LABELS = ("NORM", "1AVB", "CRBBB", "CLBBB", "SBRAD", "STACH", "AFIB")


def write_run(path: Path, rounds: int, sites: int, seed: int = 0) -> None:
    """A finished run folder with per-site metrics like the real ones, some failures, DP."""
    rng = random.Random(seed)
    names = [f"site-{i:02d}" for i in range(sites)]
    path.mkdir(parents=True)
    (path / runs.EXPERIMENT).write_text(yaml.safe_dump({"federation": {"rounds": rounds}}))
    log = MetricsLog(path / runs.METRICS)
    for rnd in range(1, rounds + 1):
        down = {names[rng.randrange(sites)]} if rnd % 7 == 0 else set()
        up = [n for n in names if n not in down]
        failed = [{"site": n, "reason": f"no reply within 600 s (round {rnd})"} for n in down]
        train = {
            n: {
                protocol.NUM_EXAMPLES: 200.0,
                protocol.TRAIN_LOSS: 0.7 / (1 + rnd / 20) + rng.random() / 20,
                protocol.POSITIVES: [float(rng.randrange(50)) for _ in LABELS],
                protocol.ANNOTATED: [200.0] * len(LABELS),
                protocol.BYTES_UP: 431908,
            }
            for n in up
        }
        loss = statistics.mean(m[protocol.TRAIN_LOSS] for m in train.values())
        privacy = {"epsilon": 0.1 * rnd, "delta": 1e-5, "releases": rnd, "max-epsilon": 12.0}
        log.write(
            {
                "round": rnd,
                "phase": protocol.Phase.TRAIN,
                "sites": train,
                "failed": failed,
                "aggregate": {protocol.TRAIN_LOSS: loss},
                "privacy": {**privacy, "noise-multiplier": 1.1, "clipping-norm": 1.0},
                protocol.BYTES_DOWN: 431908,
                "seconds": 30.0,
            }
        )
        evaluate = {
            n: {
                protocol.NUM_EXAMPLES: 40.0,
                protocol.VAL_LOSS: 0.6,
                protocol.MACRO_AUC: 0.6 + rnd / 400 + rng.random() / 20,
            }
            for n in up
        }
        agg = {
            protocol.VAL_LOSS: 0.6,
            protocol.MACRO_AUC: statistics.mean(m[protocol.MACRO_AUC] for m in evaluate.values()),
        }
        log.write(
            {
                "round": rnd,
                "phase": protocol.Phase.EVALUATE,
                "sites": evaluate,
                "failed": failed,
                "aggregate": agg,
            }
        )
    tuned = {
        n: {
            protocol.NUM_EXAMPLES: 40.0,
            protocol.TRAIN_EXAMPLES: 200.0,
            protocol.BEFORE_MACRO_AUC: 0.8,
            protocol.BEFORE_MACRO_F1: 0.4,
            protocol.AFTER_MACRO_AUC: 0.85,
            protocol.AFTER_MACRO_F1: 0.45,
        }
        for n in names
    }
    log.write({"round": rounds, "phase": protocol.Phase.FINETUNE, "sites": tuned, "failed": []})
    counts = {n: {"records": 250, **{lab: rng.randrange(60) for lab in LABELS}} for n in names}
    (path / runs.PARTITION).mkdir()
    (path / runs.PARTITION / "partition.json").write_text(json.dumps(counts))
    (path / runs.SUMMARY).write_text(json.dumps({"stopped": None}))
    (path / runs.REPORT).write_text(f"# Federated run {path.name}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_request(url: str, path: str, search: str = "") -> float:
    """Seconds for the server to draw one page (the callback a browser calls on load)."""
    payload = {
        "output": "..page.children...shown.data..",
        "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
        "inputs": [
            {"id": "url", "property": "pathname", "value": path},
            {"id": "url", "property": "search", "value": search},
            {"id": "tick", "property": "n_intervals", "value": None},
        ],
        "changedPropIds": ["url.pathname"],
        "state": [{"id": "shown", "property": "data", "value": None}],
    }
    request = urllib.request.Request(
        url + "/_dash-update-component",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as reply:
        size = len(reply.read())
    elapsed = time.perf_counter() - started
    page_request.sizes[path + search] = size  # type: ignore[attr-defined]
    return elapsed


page_request.sizes = {}  # type: ignore[attr-defined]


def browser_times(url: str) -> tuple[float, float] | None:
    """Seconds until Chromium has drawn the run page with its charts: opened by its address
    (the app's scripts load and start), and reached from the run list's link (in the app);
    None without Chromium."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    # Timed inside the page (frame by frame), so that polling from here costs the browser no CPU.
    wait = """
        const done = arguments[arguments.length - 1];
        (function check() {
          if (document.querySelectorAll(".js-plotly-plot .main-svg").length >= 4
              && document.querySelector("#finetune")) done(performance.now());
          else requestAnimationFrame(check);
        })();
    """
    follow = """
        const done = arguments[arguments.length - 1], started = performance.now();
        document.querySelector("#runs a[href='/run/bench']").click();
        (function check() {
          if (document.querySelectorAll(".js-plotly-plot .main-svg").length >= 4
              && document.querySelector("#finetune")) done(performance.now() - started);
          else requestAnimationFrame(check);
        })();
    """
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(60)
    opened, followed = [], []
    try:
        driver.get(url + "/")  # scripts in the browser's cache, as for a returning reader
        for _ in range(3):
            driver.get(url + "/run/bench")
            opened.append(driver.execute_async_script(wait) / 1000)  # since navigation began
            driver.get(url + "/")
            WebDriverWait(driver, 60).until(
                lambda d: d.find_elements("css selector", "#runs a[href='/run/bench']")
            )
            followed.append(driver.execute_async_script(follow) / 1000)
        return statistics.median(opened), statistics.median(followed)
    finally:
        driver.quit()


def start(tool: str, *args: object, port: int) -> tuple[subprocess.Popen, float]:
    """``tool dashboard`` running, and the seconds from its launch to its first answered page."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [BIN / tool, "dashboard", *map(str, args), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return server, time.perf_counter() - started
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"{tool} dashboard exited ({server.returncode})") from None
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--sites", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ecgfl-dashboard-bench-")) / "runs"
    try:
        for i, name in enumerate(("bench", "bench2")):
            write_run(root / name, args.rounds, args.sites, seed=i)
        size = (root / "bench" / runs.METRICS).stat().st_size
        print(f"run folder: {args.rounds} rounds x {args.sites} sites, metrics.jsonl {size:,} B")
        federation = root.parent / "federation"
        subprocess.run(
            [BIN / "ecgfl-coordinator", "provision", "--out", federation, "--hospital", "H1"],
            check=True,
            capture_output=True,
        )
        shutil.copytree(root / "bench", federation / "coordinator" / "state" / "runs" / "bench")
        for tool, *where in (
            ("ecgfl-coordinator", "--config", federation / "coordinator" / "coordinator.yaml"),
            ("ecgfl-hospital", "--config", federation / "hospitals" / "H1" / "hospital.yaml"),
        ):
            server, seconds = start(tool, *where, port=free_port())
            server.terminate()
            server.wait(timeout=10)
            print(f"{tool} dashboard: start-up to first answer {seconds:.2f} s")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server, seconds = start("ecgfl-simulate", root, port=port)
        try:
            print(f"ecgfl-simulate dashboard: start-up to first answer {seconds:.2f} s")
            for path, search in (("/", ""), ("/run/bench", ""), ("/compare", "?runs=bench,bench2")):
                first, *again = [page_request(url, path, search) for _ in range(6)]
                kib = page_request.sizes[path + search] / 1024  # type: ignore[attr-defined]
                print(
                    f"page {path}{search}: first {first:.3f} s, then median "
                    f"{statistics.median(again):.3f} s; {kib:,.0f} KiB"
                )
            shown = browser_times(url)
            if shown is not None:
                print(
                    f"Chromium, run page drawn (tables + charts): opened by address "
                    f"{shown[0]:.2f} s, from the run list's link {shown[1]:.2f} s (medians of 3)"
                )
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
