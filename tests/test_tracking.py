"""Tracker and RunContext on real MLflow stores (SQLite always, PostgreSQL when it answers)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from clusterprobe.tracker.conventions import (
    STORE_SCHEMA,
    TAG_DEVICE,
    TAG_ERROR,
    TAG_GIT,
    TAG_HOST,
    TAG_KIND,
    TAG_PARENT,
    TAG_PID,
    TAG_SCHEMA,
    TAG_VERSIONS,
)
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.provenance import TAG_PROCESS, process_identity
from clusterprobe.tracker.store import resolve_store
from clusterprobe.tracker.tracking import ORPHAN_ERROR, Tracker, handle_sigterm

# --- one contract, every backend ---------------------------------------------


@pytest.fixture(scope="class", params=["sqlite", "postgresql"])
def tracker(request, tmp_path_factory, _template_store):
    """A Tracker per backend, shared by the contract tests of one class."""
    if request.param == "sqlite":
        root = tmp_path_factory.mktemp("contract") / "mlruns"
        shutil.copytree(_template_store.root, root)
        yield Tracker(resolve_store(root))
        return
    make_db = request.getfixturevalue("postgres_database")
    url = make_db()
    artifacts = tmp_path_factory.mktemp("pg-artifacts")
    tracker = Tracker(resolve_store(tracking_uri=url, artifact_root=str(artifacts)))
    yield tracker
    make_db.drop(url)


class TestContract:
    """What runners and queries rely on, whatever the backend."""

    def test_statuses_and_error_tag(self, tracker):
        with tracker.start_run("train") as ok:
            pass
        with pytest.raises(ValueError), tracker.start_run("train") as failed:
            raise ValueError("bad\nthing")
        with pytest.raises(KeyboardInterrupt), tracker.start_run("train") as killed:
            raise KeyboardInterrupt
        assert tracker.get_run(ok.run_id).info.status == "FINISHED"
        assert TAG_ERROR not in tracker.get_run(ok.run_id).data.tags
        run = tracker.get_run(failed.run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags[TAG_ERROR] == "ValueError: bad thing"  # one line
        run = tracker.get_run(killed.run_id)
        assert run.info.status == "KILLED"
        assert "KeyboardInterrupt" in run.data.tags[TAG_ERROR]

    def test_tags_params_and_nesting(self, tracker):
        params = {"arch": "resnet18", "lr": 0.1, "factors": (1, 2, 3), "quick": True}
        with tracker.start_run("train", params=params, run_name="t") as parent:
            with tracker.start_run(
                "eval", parent_run_id=parent.run_id, params=params, tags={"extra": 3}
            ) as child:
                pass
        p, c = tracker.get_run(parent.run_id), tracker.get_run(child.run_id)
        assert p.data.params == {
            "arch": "resnet18",
            "lr": "0.1",
            "factors": "[1, 2, 3]",
            "quick": "True",
        }
        assert c.data.params == p.data.params
        assert c.data.tags[TAG_PARENT] == parent.run_id and TAG_PARENT not in p.data.tags
        assert c.data.tags["extra"] == "3" and p.info.run_name == "t"
        tags = p.data.tags
        assert tags[TAG_KIND] == "train" and c.data.tags[TAG_KIND] == "eval"
        assert tags[TAG_HOST] == socket.gethostname() and tags[TAG_PID] == str(os.getpid())
        assert tags[TAG_SCHEMA] == str(STORE_SCHEMA) and tags[TAG_DEVICE]
        assert json.loads(tags[TAG_VERSIONS])["mlflow"] == "3.17.2"
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0:  # the cwd is a git checkout
            assert tags[TAG_GIT] == head.stdout.strip()
        found = tracker.search_runs(kind="eval", parent_run_id=parent.run_id)
        assert [r.info.run_id for r in found] == [child.run_id]
        assert child.run_id not in {r.info.run_id for r in tracker.search_runs(kind="train")}
        assert parent.run_id in {r.info.run_id for r in tracker.search_runs(status="FINISHED")}

    def test_metric_steps_in_batches(self, tracker):
        values = np.linspace(0, 1, 1500)  # > 1000: several log_batch calls
        many = {f"m{i:04d}": float(i) for i in range(1001)}
        with tracker.start_run("eval") as run:
            run.log_metric_steps("ami_f1", values)
            run.log_metric_steps("probe_acc", [0.5, 0.7], steps=[3, 7])
            run.log_metrics(many, step=2)
            run.log_metrics({"best_ami": 0.9})
        history = tracker.client.get_metric_history(run.run_id, "ami_f1")
        got = sorted((m.step, m.value) for m in history)
        assert [s for s, _ in got] == list(range(1500))
        np.testing.assert_allclose([v for _, v in got], values)
        probe = tracker.client.get_metric_history(run.run_id, "probe_acc")
        assert sorted((m.step, m.value) for m in probe) == [(3, 0.5), (7, 0.7)]
        metrics = tracker.get_run(run.run_id).data.metrics
        assert len(metrics) == 1001 + 3 and metrics["m1000"] == 1000.0
        assert metrics["best_ami"] == 0.9

    def test_artifacts_round_trip(self, tracker, tmp_path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df = pd.DataFrame({"layer_index": [0, 1], "value": [0.25, 0.5]})
        array = np.arange(12, dtype=np.float32).reshape(3, 4)
        folder = tmp_path / "ckpt"
        folder.mkdir()
        (folder / "model_config.json").write_text("{}")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        with tracker.start_run("eval") as run:
            run.log_json({"a": np.float32(1.5), "b": [1, 2]}, "layers.json")
            run.log_parquet(df, "layer_metrics.parquet")
            run.log_numpy(array, "embeddings/pooled_00.npy")
            run.log_figure(fig, "layer_profile.png")
            run.log_artifact(folder, "checkpoint")
        plt.close(fig)
        path = tracker.artifact_path
        assert json.loads(path(run.run_id, "layers.json").read_text()) == {"a": 1.5, "b": [1, 2]}
        pd.testing.assert_frame_equal(
            pd.read_parquet(path(run.run_id, "layer_metrics.parquet")), df
        )
        np.testing.assert_array_equal(np.load(path(run.run_id, "embeddings/pooled_00.npy")), array)
        assert path(run.run_id, "layer_profile.png").read_bytes()[:4] == b"\x89PNG"
        assert path(run.run_id, "checkpoint/model_config.json").read_text() == "{}"
        with pytest.raises(FileNotFoundError):
            path(run.run_id, "missing.txt")
        assert path(run.run_id) == tracker.artifact_dir(run.run_id)
        with tracker.start_run("eval") as empty:
            pass  # no artifacts: the folder is still named, for sizes and listings
        assert tracker.artifact_path(empty.run_id) == tracker.artifact_dir(empty.run_id)

    def test_bad_params_store_nothing(self, tracker):
        before = len(tracker.search_runs())
        with pytest.raises(UsageError, match="6000"):
            tracker.start_run("train", params={"long": "x" * 6001})
        assert len(tracker.search_runs()) == before
        with tracker.start_run("train") as run:
            run.log_params({f"p{i}": i for i in range(250)})  # > 100 per batch
        assert len(tracker.get_run(run.run_id).data.params) == 250

    def test_reap_leaves_live_and_foreign_runs_alone(self, tracker):
        parent_pid = os.getppid()  # alive: the process that started pytest
        with tracker.start_run("train") as mine:
            live = tracker.start_run(
                "train",
                tags={TAG_PID: parent_pid, TAG_PROCESS: process_identity(parent_pid) or ""},
            )
            foreign = tracker.start_run("train", tags={TAG_HOST: "elsewhere", TAG_PID: 999999})
            assert mine.run_id not in tracker.reap_orphans()
            assert live.run_id not in tracker.reap_orphans()
            assert foreign.run_id not in tracker.reap_orphans()
        for run in (live, foreign):
            assert tracker.get_run(run.run_id).info.status == "RUNNING"
            run.end("FINISHED")


# --- local stores: concurrency, signals, orphans, relocation -------------------


OWNER = textwrap.dedent(
    """
    import os, sys, time
    from clusterprobe.tracker.store import resolve_store
    from clusterprobe.tracker.tracking import Tracker, handle_sigterm
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):  # start together: both meet a fresh store
        time.sleep(0.005)
    tracker = Tracker(resolve_store(sys.argv[1]))
    with handle_sigterm(), tracker.start_run("train", params={"pid": os.getpid()}) as run:
        print(run.run_id, flush=True)
        time.sleep(120)
    """
)


def test_two_owners_on_a_fresh_store_then_sigterm_and_sigkill(tmp_path):
    """Two processes open a fresh store at once and both record a run; then one gets
    SIGTERM (its run ends KILLED) and the other SIGKILL (its run stays RUNNING until
    reap_orphans fails it). One pair of processes for all three behaviours: each start
    costs seconds of imports on a busy machine."""
    root, go = tmp_path / "fresh", tmp_path / "go"
    procs = {
        sig: subprocess.Popen(
            [sys.executable, "-c", OWNER, str(root), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for sig in (signal.SIGTERM, signal.SIGKILL)
    }
    try:
        for proc in procs.values():
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        run_ids = {}
        for sig, proc in procs.items():
            run_ids[sig] = proc.stdout.readline().strip()
            assert run_ids[sig], f"owner failed on the fresh store: {proc.stderr.read()}"
        for sig, proc in procs.items():
            proc.send_signal(sig)
            proc.wait(timeout=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
    tracker = Tracker(resolve_store(root))
    runs = tracker.search_runs(kind="train")
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids.values())
    assert len({r.data.params["pid"] for r in runs}) == 2
    term = tracker.get_run(run_ids[signal.SIGTERM])
    assert term.info.status == "KILLED"
    assert "SIGTERM" in term.data.tags[TAG_ERROR]
    assert tracker.get_run(run_ids[signal.SIGKILL]).info.status == "RUNNING"
    assert tracker.reap_orphans() == [run_ids[signal.SIGKILL]]
    killed = tracker.get_run(run_ids[signal.SIGKILL])
    assert killed.info.status == "FAILED" and killed.data.tags[TAG_ERROR] == ORPHAN_ERROR
    assert tracker.reap_orphans() == []
    assert tracker.get_run(run_ids[signal.SIGTERM]).info.status == "KILLED"


def test_reap_detects_a_recycled_pid(store):
    tracker = Tracker(store)
    parent_pid = os.getppid()  # alive, but not the process that started the run
    run = tracker.start_run("train", tags={TAG_PID: parent_pid, TAG_PROCESS: "other-boot:1"})
    assert tracker.reap_orphans() == [run.run_id]
    assert tracker.get_run(run.run_id).info.status == "FAILED"


def test_handle_sigterm_restores_the_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), handle_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(500):  # the handler runs between bytecodes, within a few ms
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) == before


def _run_with_artifact(tracker: Tracker) -> str:
    with tracker.start_run("train") as run:
        run.log_json({"layers": 3}, "layers.json")
    return run.run_id


def test_moved_and_copied_store_keep_their_artifacts(store, tmp_path):
    run_id = _run_with_artifact(Tracker(store))
    moved = tmp_path / "moved" / "store"
    moved.parent.mkdir()
    shutil.move(store.root, moved)
    tracker = Tracker(resolve_store(moved))
    assert json.loads(tracker.artifact_path(run_id, "layers.json").read_text()) == {"layers": 3}
    info = tracker.get_run(run_id).info
    assert info.artifact_uri.startswith(str(moved) + "/")
    assert [f.path for f in tracker.client.list_artifacts(run_id)] == [
        "checksums.json",  # written as the run finished
        "layers.json",
    ]
    assert json.loads((moved / "store.json").read_text()) == {
        "schema": STORE_SCHEMA,
        "root": str(moved),
    }
    exp = tracker.client.get_experiment(info.experiment_id)
    assert exp.artifact_location.startswith(str(moved) + "/")
    # a copy works on its own, and the original still works after it
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    copied = Tracker(resolve_store(copy))
    assert copied.artifact_path(run_id, "layers.json").is_relative_to(copy)
    assert tracker.artifact_path(run_id, "layers.json").is_relative_to(moved)
    new_id = _run_with_artifact(copied)
    assert copied.artifact_path(new_id, "layers.json").is_relative_to(copy)
    assert not (moved / "artifacts" / "clusterprobe" / new_id).exists()
    # nothing in the copy's database still points into the original folder
    import sqlite3

    con = sqlite3.connect(copy / "mlflow.db")
    dump = "\n".join(con.iterdump())
    con.close()
    assert str(moved) not in dump


def test_unreachable_server_is_a_usage_error():
    store = resolve_store(tracking_uri="http://127.0.0.1:9")  # discard port: nobody listens
    with pytest.raises(UsageError, match="does not answer"):
        Tracker(store)


def test_ui_command_opens_the_store(store, capsys):
    from clusterprobe.runners import cli

    assert cli.main(["ui", "--store", str(store.root), "--print-command"]) == 0
    out = capsys.readouterr().out
    assert store.tracking_uri in out and "--host 127.0.0.1" in out and "--port 5000" in out
    assert cli.main(["ui", "--store", str(store.root), "--port", "70000"]) == 2


def test_older_schema_is_backed_up_and_upgraded(store, tmp_path, capsys):
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, _get_schema_version
    from sqlalchemy import create_engine

    run_id = _run_with_artifact(Tracker(store))
    config = _get_alembic_config(store.tracking_uri)
    engine = create_engine(store.tracking_uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "-1")  # as if an older MLflow had made it
    old = _get_schema_version(engine)
    engine.dispose()
    copy = tmp_path / "old"
    shutil.copytree(store.root, copy)  # a folder this process has not opened yet
    tracker = Tracker(resolve_store(copy))
    assert "upgrading the MLflow schema" in capsys.readouterr().err
    assert len(list(copy.glob("mlflow.db.*.bak"))) == 1
    engine = create_engine(tracker.store.tracking_uri)
    assert _get_schema_version(engine) != old
    engine.dispose()
    assert json.loads(tracker.artifact_path(run_id, "layers.json").read_text()) == {"layers": 3}
