"""The reliability campaign as tests: parallel first writers, kill -9 at named points of a
run, SIGTERM, and what `clusterprobe doctor` then finds and repairs.

Kills are reached through the test-only hook (``CLUSTERPROBE_TEST_KILL_AT``, tracker/killpoint.py),
not by timing, so each lands at its point on a busy machine too. Runs are tiny (resnet10t,
16 px, 2 x 2 classes, 1 epoch, one torch thread).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.checksums import check_folder
from clusterprobe.tracker.killpoint import ENV_KILL_AT
from clusterprobe.tracker.store import local_store
from clusterprobe.tracker.tracking import ORPHAN_ERROR, Tracker

TINY = (
    "--arch resnet10t --classes 2 --subclasses 2 --train-per-subclass 6 --eval-per-subclass 4 "
    "--image-size 16 --epochs 1 --batch-size 24 --factors 1 --threads 1 --device cpu --quiet "
    "--save embeddings,distances"
).split()
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ENV_KILL_AT)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clusterprobe.runners.cli", *args]


def start_run(store: Path, *extra: str, kill: str | None = None) -> subprocess.Popen:
    env = dict(ENV, **({ENV_KILL_AT: kill} if kill else {}))
    return subprocess.Popen(
        cli("run", *TINY, "--store", str(store), *extra),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def doctor(store: Path, *extra: str) -> SimpleNamespace:
    """`clusterprobe doctor` in this process (no interpreter start per call)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["doctor", "--store", str(store), *extra])
    return SimpleNamespace(returncode=code, stdout=out.getvalue())


@pytest.fixture(autouse=True)
def _no_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def db_rows(store: Path, run_ids) -> dict:
    """Every row of the given runs in the MLflow database (status, params, tags, metrics)."""
    con = sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True)
    marks = ",".join("?" * len(run_ids))
    out = {}
    for table in ("runs", "params", "tags", "metrics"):
        rows = con.execute(
            f"SELECT * FROM {table} WHERE run_uuid IN ({marks}) ORDER BY 1, 2, 3", list(run_ids)
        ).fetchall()
        out[table] = sorted(map(repr, rows))
    con.close()
    return out


@pytest.fixture(scope="module")
def fanout(tmp_path_factory):
    """4 `run`s started together into a store folder that does not exist yet."""
    store = tmp_path_factory.mktemp("fanout") / "mlruns"
    procs = [start_run(store, "--seed", str(seed)) for seed in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    return store, [p.returncode for p in procs], outs


def test_four_parallel_first_runs_into_a_fresh_store(fanout):
    store, codes, outs = fanout
    assert codes == [0] * 4, [err for _, err in outs]
    assert not any("locked" in err.lower() for _, err in outs)
    tracker = Tracker(local_store(store))
    train = tracker.search_runs(kind="train")
    assert sorted(r.data.params["seed"] for r in train) == ["0", "1", "2", "3"]
    assert {r.info.status for r in tracker.search_runs()} == {"FINISHED"}
    assert len(tracker.search_runs(kind="eval")) == 4
    got = doctor(store)
    assert got.returncode == 0 and got.stdout.startswith("clean: 8 finished run(s)"), got.stdout


POINTS = {  # kill point -> the kinds of run it leaves in flight
    "run-start": ["train"],
    "train": ["train"],
    "embed": ["eval", "train"],
    "artifacts": ["eval", "train"],
}


def test_kill_at_each_point_then_doctor_finds_fixes_and_nothing_earlier_changes(fanout, tmp_path):
    """Each kill in its own copy of the store: a later run would reap an earlier orphan."""
    source, codes, _ = fanout
    assert codes == [0] * 4
    stores = {point: tmp_path / point / "mlruns" for point in [*POINTS, "term"]}
    earlier = [r.info.run_id for r in Tracker(local_store(source)).search_runs()]
    before = {}
    for point, store in stores.items():
        shutil.copytree(source, store)
        Tracker(local_store(store))  # relocates the copy before the killed run starts
        before[point] = db_rows(store, earlier)

    procs = {point: start_run(stores[point], "--seed", "9", kill=point) for point in POINTS}
    term = start_run(stores["term"], "--seed", "9", kill="train:TERM")
    for point, proc in procs.items():
        proc.communicate(timeout=600)
        assert proc.returncode == -9, (point, proc.returncode)  # SIGKILL: no cleanup ran
    _, err = term.communicate(timeout=600)
    assert term.returncode == 143, err  # SIGTERM: the conventional 128 + 15
    assert "interrupted" in err
    killed = Tracker(local_store(stores["term"])).search_runs(status="KILLED")
    assert [r.data.tags[cv.TAG_KIND] for r in killed] == ["train"]  # it ended its own run
    assert doctor(stores["term"]).returncode == 0

    for point, kinds in POINTS.items():
        store = stores[point]
        tracker = Tracker(local_store(store))
        running = tracker.search_runs(status="RUNNING")
        assert sorted(r.data.tags[cv.TAG_KIND] for r in running) == kinds, point
        found = doctor(store)
        assert found.returncode == 1, point
        listed = sorted(
            ln.split()[1].rstrip(":") for ln in found.stdout.splitlines() if ln[:6] == "orphan"
        )
        assert listed == sorted(r.info.run_id for r in running), point  # what was in flight
        fixed = doctor(store, "--fix")
        assert fixed.returncode == 0, fixed.stdout
        for run in running:
            after = tracker.get_run(run.info.run_id)
            assert after.info.status == "FAILED" and after.data.tags[cv.TAG_ERROR] == ORPHAN_ERROR
        assert doctor(store).returncode == 0
        assert db_rows(store, earlier) == before[point], point  # earlier finished runs unchanged
        for run_id in earlier:
            assert check_folder(tracker.artifact_dir(run_id)).ok

    store = stores["train"]
    query = subprocess.run(
        cli("query", "layer_profile", "--store", str(store), "--format", "csv"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert query.returncode == 0 and "whose process is gone" not in query.stderr
    again = start_run(store, "--seed", "9")  # the killed run, rerun
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert doctor(store).returncode == 0


def test_read_only_commands_name_orphans_without_writing(fanout, tmp_path):
    source, codes, _ = fanout
    assert codes == [0] * 4
    store = tmp_path / "mlruns"
    shutil.copytree(source, store)
    tracker = Tracker(local_store(store))
    with tracker.start_run("train") as ctx:  # a run whose owner is a process that is gone
        pass
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    tracker.client.set_tag(ctx.run_id, cv.TAG_PID, dead.stdout.strip())
    tracker.client.update_run(ctx.run_id, status="RUNNING")

    def dump() -> list[str]:
        # The database's content (WAL mode: its files' bytes move on a checkpoint alone).
        con = sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True)
        try:
            return list(con.iterdump())
        finally:
            con.close()

    before = dump()
    for argv in (
        ["query", "layer_profile", "--format", "csv"],
        ["sql", "SELECT count(*) AS n FROM runs", "--format", "csv"],
        ["ui", "--print-command"],
    ):
        got = subprocess.run(
            cli(*argv, "--store", str(store)),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert got.returncode == 0, got.stderr
        notes = [ln for ln in got.stderr.splitlines() if "whose process is gone" in ln]
        assert len(notes) == 1 and "1 run(s) RUNNING" in notes[0] and "doctor --fix" in notes[0]
    assert dump() == before  # nothing written


def test_doctor_reports_a_changed_artifact_and_fix_never_touches_it(fanout, tmp_path):
    source, codes, _ = fanout
    assert codes == [0] * 4
    store = tmp_path / "mlruns"
    shutil.copytree(source, store)
    tracker = Tracker(local_store(store))
    run = tracker.search_runs(kind="eval")[0]
    folder = tracker.artifact_dir(run.info.run_id)
    layers = folder / cv.ART_LAYERS
    layers.write_text(json.dumps([]))
    (folder / cv.ART_LAYER_METRICS).unlink()
    found = doctor(store)
    assert found.returncode == 1
    assert f"artifact-changed   {run.info.run_id}: eval run: {cv.ART_LAYERS}" in found.stdout
    assert f"artifact-missing   {run.info.run_id}: eval run: {cv.ART_LAYER_METRICS}" in (
        found.stdout
    )
    fixed = doctor(store, "--fix")
    assert fixed.returncode == 1 and "never changed" in fixed.stdout
    assert layers.read_text() == "[]"  # reported, left as it is
    assert tracker.get_run(run.info.run_id).info.status == "FINISHED"
