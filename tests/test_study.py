"""`clusterprobe study`: Optuna studies whose trials are real, recorded runs.

Every study here runs real `pipeline.run` trials on a tiny synthetic problem
(4 superclasses x 2 subclasses, 10 train / 8 eval images each, 16 px, 1 epoch of
resnet10t, nothing saved but metrics), against real Optuna storages (SQLite,
PostgreSQL, journal file) and a real MLflow SQLite store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import optuna
import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.config import PRESETS
from clusterprobe.runners.space import build_config, load_space, parse_space
from clusterprobe.runners.study import run_study
from clusterprobe.runners.study.objective import ATTR_HOST, ATTR_PID
from clusterprobe.runners.study.options import StudyOptions
from clusterprobe.runners.study.orphans import STALE_ERROR, fail_orphan_trials, on_stale
from clusterprobe.runners.study.settings import ATTR_SETTINGS, StudySettings, parse_objectives
from clusterprobe.runners.study.storage import open_storage, resolve_storage
from clusterprobe.tracker.conventions import (
    ATTR_EVAL_RUN_IDS,
    ATTR_RUN_ID,
    TAG_KIND,
    TAG_PARENT,
    TAG_STUDY,
    TAG_TRIAL,
)
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.killpoint import ENV_KILL_AT
from clusterprobe.tracker.store import local_store
from clusterprobe.tracker.tracking import Tracker
from conftest import TINY_STUDY_SPACE
from optuna.trial import FixedTrial, TrialState

# The session's tiny study space (conftest), keeping no heavy artifacts, plus a
# conditional parameter.
TINY_SPACE = (
    TINY_STUDY_SPACE.replace('save = ["plots"]', "save = []")
    + """
[params.weight_decay]  # conditional: only searched for block taps
type = "float"
low = 1e-5
high = 1e-3
log = true
when = { taps = "blocks" }
"""
)
assert "save = []" in TINY_SPACE

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop(ENV_KILL_AT, None)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clusterprobe.runners.cli", *args]


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


def _study_runs(tracker: Tracker, name: str):
    runs = tracker.search_runs(kind="study", tags={TAG_STUDY: name})
    assert len(runs) == 1, f"expected one study run for {name}, got {len(runs)}"
    return runs[0]


def _check_linkage(tracker: Tracker, study, study_run_id: str) -> list:
    """Every COMPLETE trial <-> one FINISHED train run under the study run, one eval run each."""
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    train_runs = tracker.search_runs(kind="train", parent_run_id=study_run_id)
    by_id = {r.info.run_id: r for r in train_runs}
    for trial in complete:
        run = by_id[trial.user_attrs[ATTR_RUN_ID]]  # trial -> run
        assert run.info.status == "FINISHED"
        assert run.data.tags[TAG_TRIAL] == str(trial.number)  # run -> trial
        assert run.data.tags[TAG_STUDY] == study.study_name
        assert run.data.tags[TAG_PARENT] == study_run_id
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value)
        evals = tracker.search_runs(kind="eval", parent_run_id=run.info.run_id)
        assert [e.info.run_id for e in evals] == trial.user_attrs[ATTR_EVAL_RUN_IDS]
        assert len(evals) == 1 and evals[0].info.status == "FINISHED"
        assert trial.values[0] == pytest.approx(evals[0].data.metrics["best_ami"])
    return train_runs


# --- the search space -------------------------------------------------------------------


def test_default_space_parses_and_is_conditional():
    space = load_space()
    names = [p.name for p in space.params]
    assert names[:3] == ["arch", "norm", "taps"]
    vgg = FixedTrial(
        {
            "arch": "vgg11",
            "norm": "ln",
            "labels": "superclass",
            "lr": 0.1,
            "weight_decay": 1e-4,
            "batch_size": 64,
        }
    )
    values = space.suggest(vgg)
    assert values["norm"] == "ln" and "taps" not in values
    res = FixedTrial(
        {
            "arch": "resnet18",
            "taps": "stages",
            "labels": "subclass",
            "lr": 0.1,
            "weight_decay": 1e-4,
            "batch_size": 64,
        }
    )
    values = space.suggest(res)
    assert values["taps"] == "stages" and "norm" not in values
    config = build_config(space, values, quick=True)
    # defaults < --quick preset < [fixed] < suggested
    assert config.epochs == PRESETS["quick"]["epochs"]  # not searched: the preset's
    assert config.batch_size == 64 and config.labels == "subclass"  # searched: beat defaults
    assert config.norm == "default" and config.dataset == "synthetic"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[params.lrr]\ntype='float'\nlow=0.1\nhigh=1.0", "unknown field 'lrr' (did you mean lr?)"),
        ("[fixed]\nepoch = 3", "unknown field 'epoch'"),
        ("[params.lr]\ntype='float'\nlow=0.5\nhigh=0.1", "low = 0.5 > high = 0.1"),
        ("[params.lr]\ntype='float'\nlow=0.0\nhigh=0.1\nlog=true", "log = true needs low > 0"),
        ("[params.arch]\nchoices=[]", "choices must be a non-empty list"),
        ("[params.epochs]\ntype='float'\nlow=1\nhigh=3", "field epochs is an int"),
        ("[params.labels]\nchoices=['superclass', 'both']", "--labels 'both'"),
        ("[params.norm]\nchoices=['bn']\nwhen={arch='vgg*'}", "not an earlier parameter"),
        (
            "[params.arch]\nchoices=['resnet18']\n[params.norm]\nchoices=['bn']\nwhen={arch='vgg*'}",
            "matches none of its choices",
        ),
        ("[params.lr]\ntype='float'\nlow=0.1\nhigh=1.0\nhigh_=2", "unknown key(s) ['high_']"),
        ("[space]\nx=1", "unknown top-level key(s) ['space']"),
        ("[params.arch]\nchoices=['resnet18', 'resnet19']", "--arch 'resnet19' is not a supported"),
        ("[fixed]\ndataset='synthetc'", "did you mean synthetic"),
    ],
)
def test_bad_space_is_a_usage_error(text, message):
    with pytest.raises(UsageError) as err:
        parse_space(text, "bad.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_field_lists_the_valid_fields():
    with pytest.raises(UsageError, match="valid fields: dataset, shuffled"):
        parse_space("[params.nrom]\nchoices=['bn']")


def test_objectives_parse():
    assert parse_objectives(None) == [("best_ami", "maximize")]
    assert parse_objectives(["best_ami:max", "best_probe_acc:min"]) == [
        ("best_ami", "maximize"),
        ("best_probe_acc", "minimize"),
    ]
    with pytest.raises(UsageError, match="did you mean best_ami"):
        parse_objectives(["best_amii"])


def test_bad_flags_exit_2_before_any_work(tmp_path, capsys, space_file):
    store = str(tmp_path / "mlruns")
    code = cli_main(["study", "--store", store, "--workers", "2", "--space", str(space_file)])
    err = capsys.readouterr().err
    assert code == 2 and "journal" in err and "postgresql://" in err
    code = cli_main(["study", "--store", store, "--resume", "nope"])
    assert code == 2 and "no such study" in capsys.readouterr().err
    code = cli_main(["study", "--store", store, "--resume", "s", "--space", str(space_file)])
    assert code == 2 and "keeps the settings it was created with" in capsys.readouterr().err
    code = cli_main(["study", "--store", store, "--pruner", "median", "--space", str(space_file)])
    assert code == 2 and "eval_epochs" in capsys.readouterr().err
    sqlite_file = tmp_path / "x.db"
    optuna.create_study(storage=f"sqlite:///{sqlite_file}")
    with pytest.raises(UsageError, match="is a SQLite database"):
        resolve_storage(str(sqlite_file), local_store(store))


def test_dead_owner_trial_is_failed(tmp_path):
    """A RUNNING trial whose worker pid on this host is gone is FAILed (journal: no heartbeat)."""
    storage = open_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, live = study.ask(), study.ask()
    orphan.set_user_attr(ATTR_HOST, socket.gethostname())
    orphan.set_user_attr(ATTR_PID, dead.pid)
    live.set_user_attr(ATTR_HOST, socket.gethostname())
    live.set_user_attr(ATTR_PID, os.getppid())
    assert fail_orphan_trials(study) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {orphan.number: TrialState.FAIL, live.number: TrialState.RUNNING}


def test_dead_owner_killed_before_the_link_is_linked_to_its_run(store):
    """A worker killed between starting its train run and naming it on the trial: the
    orphan sweep finds the run by its tags and links it before failing the trial."""
    tracker = Tracker(store)
    study = optuna.create_study(study_name="g", storage=store.optuna_url)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    trial.set_user_attr(ATTR_HOST, socket.gethostname())
    trial.set_user_attr(ATTR_PID, dead.pid)
    tags = {TAG_STUDY: "g", TAG_TRIAL: str(trial.number)}
    run = tracker.start_run("train", tags=tags)
    assert fail_orphan_trials(study, tracker) == [trial.number]
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs[ATTR_RUN_ID] == run.run_id


def test_stale_heartbeat_fails_the_runs_of_another_host(store):
    """The heartbeat callback fails a dead trial's RUNNING train and eval runs by their tags
    (the reaper cannot: their owner pid lived on another host)."""
    tracker = Tracker(store)
    study = optuna.create_study(study_name="h")
    settings = StudySettings("h", 1, "", "x.toml", (("best_ami", "maximize"),))
    study.set_user_attr(ATTR_SETTINGS, settings.to_json())
    trial = study.ask()
    with tracker.start_run("study", tags={TAG_STUDY: "h"}) as parent:
        tags = {TAG_STUDY: "h", TAG_TRIAL: str(trial.number)}
        train = tracker.start_run("train", parent_run_id=parent.run_id, tags=tags)
        evaluation = tracker.start_run("eval", parent_run_id=train.run_id, tags=tags)
        other = tracker.start_run("train", parent_run_id=parent.run_id, tags={TAG_STUDY: "h"})
        on_stale(tracker)(study, study.trials[0])
        for run_id in (train.run_id, evaluation.run_id):
            run = tracker.get_run(run_id)
            assert run.info.status == "FAILED"
            assert run.data.tags["clusterprobe.error"] == STALE_ERROR
        assert tracker.get_run(other.run_id).info.status == "RUNNING"  # not this trial's
        other.end()


# --- whole studies ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_study(_template_store, tmp_path_factory):
    """A 4-trial --quick study on the default SQLite storage, run in-process."""
    root = tmp_path_factory.mktemp("study") / "mlruns"
    shutil.copytree(_template_store.root, root)
    store = local_store(root)
    space = root.parent / "tiny.toml"
    # Trials save their final checkpoint, so --register-best has models to register.
    space.write_text(TINY_SPACE.replace("save = []", 'save = ["checkpoint"]'))
    opts = StudyOptions(
        name="s4",
        trials=4,
        space=str(space),
        quick=True,
        seed=3,
        quiet=True,
        register_best="best-s4",
    )
    outcome = run_study(opts, store)
    return store, outcome


def test_sqlite_study_links_trials_and_runs(sqlite_study, capsys):
    store, outcome = sqlite_study
    assert (outcome.complete, outcome.failed, outcome.trials) == (4, 0, 4)
    tracker = Tracker(store)
    study_run = _study_runs(tracker, "s4")
    assert study_run.data.tags[TAG_KIND] == "study" and study_run.info.status == "FINISHED"
    assert outcome.study_run_id == study_run.info.run_id
    study = optuna.load_study(study_name="s4", storage=store.optuna_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    train_runs = _check_linkage(tracker, study, study_run.info.run_id)
    assert len(train_runs) == 4
    # the best trial's params are its run's params, and --quick sits under [fixed]
    best = study.best_trial
    run = tracker.get_run(best.user_attrs[ATTR_RUN_ID])
    assert {k: run.data.params[k] for k in best.params} == {
        k: str(v) for k, v in best.params.items()
    }
    assert run.data.params["epochs"] == "1"  # [fixed] beats the quick preset's 3
    assert run.data.params["train_per_subclass"] == "10"
    assert outcome.best[0]["number"] == best.number
    assert outcome.best[0]["mlflow_run_id"] == run.info.run_id
    # the name is taken: exit 2, pointing at --resume; nothing new is stored
    assert cli_main(["study", "--store", str(store.root), "--name", "s4"]) == 2
    assert "continue it with --resume s4" in capsys.readouterr().err
    assert len(optuna.get_all_study_names(store.optuna_url)) == 1
    # conditional parameter: weight_decay only where taps == blocks
    for t in study.trials:
        assert ("weight_decay" in t.params) == (t.params["taps"] == "blocks")


def test_register_best_registers_the_best_trials_model(sqlite_study):
    store, outcome = sqlite_study
    best = outcome.best[0]  # one objective: the best trial
    assert outcome.registered == {
        "name": "best-s4",
        "version": "1",
        "trial": best["number"],
        "run_id": best["mlflow_run_id"],
    }
    tracker = Tracker(store)
    (version,) = tracker.client.search_model_versions("name = 'best-s4'")
    assert version.run_id == best["mlflow_run_id"]
    assert version.tags[TAG_TRIAL] == str(best["number"])
    model_id = tracker.get_run(best["mlflow_run_id"]).data.tags["clusterprobe.model_id"]
    assert version.source == f"models:/{model_id}"


def test_register_best_needs_trials_that_save_a_checkpoint(store, space_file, capsys):
    argv = ["study", "--store", str(store.root), "--name", "x", "--space", str(space_file)]
    assert cli_main([*argv, "--register-best", "a:b"]) == 2
    assert cli_main([*argv, "--register-best", "ok"]) == 2  # the space saves nothing
    err = capsys.readouterr().err.splitlines()
    assert "--register-best 'a:b'" in err[0] and "save no checkpoint" in err[1]
    assert optuna.get_all_study_names(store.optuna_url) == []


def test_dashboard_lists_the_study(sqlite_study):
    store, _ = sqlite_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        _cli("dashboard", "--store", str(store.root), "--port", str(port)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.load(r)
                break
            except OSError:
                time.sleep(0.3)
        assert body is not None, proc.stderr.read().decode() if proc.poll() is not None else ""
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["s4"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_four_workers_on_postgresql(postgres_url, store, space_file):
    """4 worker processes, 8 trials: exactly 8 complete trials, each with its runs."""
    opts = StudyOptions(
        name="pg8",
        trials=8,
        space=str(space_file),
        storage=postgres_url,
        workers=4,
        seed=1,
        heartbeat=2,
        quiet=True,
    )
    outcome = run_study(opts, store)
    assert (outcome.complete, outcome.failed) == (8, 0)
    study = optuna.load_study(study_name="pg8", storage=postgres_url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(8))  # no lost, no extra trials
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    pids = {t.user_attrs[ATTR_PID] for t in trials}
    assert os.getpid() not in pids and len(pids) >= 2  # the worker processes shared them
    tracker = Tracker(store)
    study_run = _study_runs(tracker, "pg8")
    train_runs = _check_linkage(tracker, study, study_run.info.run_id)
    assert len(train_runs) == 8
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in train_runs) == list(range(8))
    run_ids = [t.user_attrs[ATTR_RUN_ID] for t in trials]
    assert len(set(run_ids)) == 8  # no duplicate runs


def test_four_workers_on_a_journal_file(store, space_file):
    """The one-machine parallel storage: exactly 8 complete trials from 4 processes."""
    journal = store.root / "optuna.journal"
    opts = StudyOptions(
        name="j", trials=8, space=str(space_file), storage=str(journal), workers=4, quiet=True
    )
    outcome = run_study(opts, store)
    assert (outcome.complete, outcome.failed, outcome.storage) == (8, 0, str(journal))
    study = optuna.load_study(study_name="j", storage=open_storage(str(journal)))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8  # none lost
    assert sorted(t.number for t in study.trials) == list(range(8))  # none duplicated
    tracker = Tracker(store)
    train_runs = _check_linkage(tracker, study, _study_runs(tracker, "j").info.run_id)
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in train_runs) == list(range(8))


def test_sigkill_mid_trial_then_resume(store, space_file):
    """SIGKILL a worker mid-trial: heartbeat FAILs the trial, the reaper FAILs its runs,
    and --resume completes the study with no orphans and no duplicates."""
    base = ["--store", str(store.root), "--heartbeat", "1", "--quiet"]
    first = ["--name", "k", "--trials", "2", "--space", str(space_file), "--seed", "0"]
    tracker = Tracker(store)
    # The worker kills itself once the first trial's first epoch is logged (the test-only
    # hook, tracker/killpoint.py): a kill timed from outside missed trials this short.
    proc = subprocess.run(
        _cli("study", *first, *base),
        env={**ENV, ENV_KILL_AT: "train"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the process is dead, so whatever is RUNNING now stays RUNNING until cleaned up
    frozen = tracker.search_runs(kind="train", status="RUNNING", tags={TAG_STUDY: "k"})
    assert len(frozen) == 1
    killed_run = frozen[0]
    number = int(killed_run.data.tags[TAG_TRIAL])

    # Optuna's heartbeat: the trial stops beating and is failed after the grace period (3 s).
    storage = open_storage(store.optuna_url, heartbeat=1)
    study = optuna.load_study(study_name="k", storage=storage)
    assert study.trials[number].state == TrialState.RUNNING
    time.sleep(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert study.trials[number].state == TrialState.FAIL
    # linked when its run started, so the dead trial still names its run
    assert study.trials[number].user_attrs[ATTR_RUN_ID] == killed_run.info.run_id
    # MLflow: the owner pid is gone, so the reaper fails the train run it left RUNNING
    assert killed_run.info.run_id in tracker.reap_orphans()
    assert tracker.get_run(killed_run.info.run_id).info.status == "FAILED"

    done = subprocess.run(
        _cli("study", "--resume", "k", *base), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "2/2 complete trials (" in done.stdout
    study = optuna.load_study(study_name="k", storage=store.optuna_url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1
    assert study.trials[number].state == TrialState.FAIL
    assert TrialState.RUNNING not in states
    study_run = _study_runs(tracker, "k")
    assert study_run.info.status == "FINISHED"
    assert not tracker.search_runs(status="RUNNING")
    train_runs = _check_linkage(tracker, study, study_run.info.run_id)
    statuses = [r.info.status for r in train_runs]
    assert statuses.count("FINISHED") == 2 and set(statuses) == {"FAILED", "FINISHED"}
    assert len(train_runs) == len(study.trials)  # one train run per trial
