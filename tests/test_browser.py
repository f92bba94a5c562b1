"""The UIs as a person sees them: `clusterprobe ui` and `clusterprobe dashboard` in a real,
headless Chromium (Debian's package, driven over the DevTools protocol: tests/browser.py).

A tiny run and a 3-trial study (tests/conftest.py) in temporary stores; both servers on
free local ports, stopped by process id. Checked on the rendered pages: the eval run's
page lists its per-layer metrics, its logged model and its dataset; the ami_f1 chart draws
one point per layer; the run's report.html renders in the artifact view (looked at inside
the UI's sandboxed, out-of-process frame: its figures decoded); the dashboard
lists the study and its trials. Screenshots go to the folder the test prints (and are
copied to $CLUSTERPROBE_SCREENSHOTS when set). Without a browser the tests skip, and FAIL
instead when CLUSTERPROBE_REQUIRE_BROWSER=1 (CI installs chromium).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import Browser, find_chromium
from clusterprobe.runners.evalrun import stored
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.tracking import Tracker

REQUIRE_BROWSER = os.environ.get("CLUSTERPROBE_REQUIRE_BROWSER") == "1"
PAGE_TIMEOUT = 120  # s: MLflow's first page load compiles a large bundle; slow on busy CPUs


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        reason = "no chromium on PATH (apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(f"CLUSTERPROBE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `clusterprobe` server command in its own process group, stopped by its pid."""

    def __init__(self, args: list[str], probe: str, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clusterprobe.runners.cli", *args, "--port", str(self.port)],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its group holds the workers it starts (uvicorn)
        )
        deadline = time.monotonic() + PAGE_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.url + probe, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"{args[0]} did not answer on {self.url}: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's pid is its group's id
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nbrowser screenshots: {folder}")
    yield folder
    copy_to = os.environ.get("CLUSTERPROBE_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy2(png, Path(copy_to) / png.name)


@pytest.fixture(scope="module")
def session(chromium, tiny_run, tiny_study, screens):
    """(browser, MLflow UI server, dashboard server), stopped after the module."""
    run_store = tiny_run[0]
    study_store = tiny_study[0]
    servers = []
    try:
        servers.append(
            Server(["ui", "--store", str(run_store.root)], "/health", screens / "ui.log")
        )
        servers.append(
            Server(
                ["dashboard", "--store", str(study_store.root)],
                "/api/studies",
                screens / "dashboard.log",
            )
        )
        with Browser(chromium, width=1400, height=1100) as browser:
            yield browser, servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
        for server in servers:  # really gone: nothing answers on their ports any more
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", server.port)) != 0


@pytest.fixture(scope="module")
def eval_run(tiny_run):
    store, _, result = tiny_run
    tracker = Tracker(store)
    run = tracker.get_run(result.eval_run_ids[-1])
    return tracker, run, result


def _run_url(ui, run, tab: str = "") -> str:
    return f"{ui.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{tab}"


def test_eval_run_page_lists_layer_metrics_logged_model_and_dataset(session, eval_run, screens):
    browser, ui, _ = session
    tracker, run, result = eval_run
    browser.goto(_run_url(ui, run))
    model_link = f'a[href$="/models/{result.model_id}"]'
    browser.wait_for(
        f"document.querySelector('{model_link}') !== null", PAGE_TIMEOUT, "the logged model"
    )
    lines = browser.text().splitlines()
    for metric in (*map(cv.ami_metric, range(1, 6)), cv.PROBE_METRIC, cv.KNN_METRIC):
        assert metric in lines, f"{metric} not listed on the run page"
    assert "Logged models (1)" in lines
    (dataset,) = run.inputs.dataset_inputs
    shown = f"{dataset.dataset.name} ({dataset.dataset.digest})"
    assert shown in lines, f"dataset {shown!r} not on the page"
    browser.screenshot(screens / "mlflow_eval_run.png")


def test_ami_f1_chart_draws_one_point_per_layer(session, eval_run, screens):
    browser, ui, _ = session
    tracker, run, _ = eval_run
    names = stored.layer_names(tracker, run.info.run_id)
    browser.goto(_run_url(ui, run, "/model-metrics"))
    # The chart card whose legend names the ami_f1 series, holding exactly one plot.
    find = """(() => {
      for (const plot of document.querySelectorAll('.js-plotly-plot')) {
        let card = plot;
        while (card && !(card.innerText || '').includes('(ami_f1)')) card = card.parentElement;
        if (card && card.querySelectorAll('.js-plotly-plot').length === 1 && plot.data) {
          const line = plot.data.find(d => (d.mode || '').includes('markers'));
          if (line) return {x: Array.from(line.x), y: Array.from(line.y),
                            points: plot.querySelectorAll('.scatterlayer .trace')[0]
                                        .querySelectorAll('.point').length};
        }
      }
      return null;
    })()"""
    chart = browser.wait_for(find, PAGE_TIMEOUT, "the ami_f1 chart")
    history = sorted(
        tracker.client.get_metric_history(run.info.run_id, "ami_f1"), key=lambda m: m.step
    )
    assert chart["x"] == list(range(len(names)))
    assert chart["points"] == len(names)
    assert chart["y"] == pytest.approx([m.value for m in history])
    browser.screenshot(screens / "mlflow_ami_f1_chart.png")


def test_report_artifact_renders_in_the_artifact_view(session, eval_run, screens):
    browser, ui, _ = session
    tracker, run, _ = eval_run
    browser.goto(_run_url(ui, run, f"/artifacts/{cv.ART_REPORT}"))
    frame = "document.querySelector('iframe')"
    browser.wait_for(
        f"{frame} && {frame}.getBoundingClientRect().height > 300", PAGE_TIMEOUT, "the report"
    )
    # The UI hands the iframe the artifact itself (a blob of it): the report, byte for byte.
    src = browser.evaluate(f"{frame}.src")
    shown = browser.evaluate(f"fetch({frame}.src).then(r => r.text())")
    assert shown == tracker.artifact_path(run.info.run_id, cv.ART_REPORT).read_text()
    # Inside the (sandboxed, out-of-process) frame: the page's title and its three figures
    # decoded by the browser.
    inside = browser.frame(src)
    images = browser.wait_for(
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        " && Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])",
        PAGE_TIMEOUT,
        "the report's figures",
        session=inside,
    )
    assert len(images) == 3 and all(w > 300 and h > 200 for _, w, h in images)
    title = browser.evaluate("document.querySelector('h1').innerText", session=inside)
    assert title == f"clusterprobe report: {run.info.run_name}"
    browser.screenshot(screens / "mlflow_report_artifact.png")


def test_dashboard_lists_the_study_with_its_trials(session, tiny_study, screens):
    browser, _, dashboard = session
    _, outcome = tiny_study
    browser.goto(f"{dashboard.url}/dashboard")
    link = browser.wait_for(
        "Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))"
        ".find(h => h && h.startsWith('/dashboard/studies/'))",
        PAGE_TIMEOUT,
        "the study list",
    )
    assert "tiny3" in browser.text()
    browser.goto(f"{dashboard.url}{link}/trials")
    browser.wait_for("document.body.innerText.includes('Trial 2')", PAGE_TIMEOUT, "the trials list")
    text = browser.text()
    assert f"{outcome.trials} Trials" in text
    for n in range(outcome.trials):
        assert f"Trial {n}" in text
    assert text.count("Complete") >= outcome.complete == 3
    browser.screenshot(screens / "dashboard_trials.png")
