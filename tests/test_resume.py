"""Checkpoints and resume: --save-every N stores the training state, `run --resume RUN_ID`
continues a killed run in the same MLflow run, to the weights an uninterrupted run ends with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.config import RunConfig
from clusterprobe.tracker.killpoint import ENV_KILL_AT
from clusterprobe.tracker.store import local_store
from clusterprobe.tracker.tracking import Tracker
from conftest import ONE_EPOCH_RUN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 2 x 2 subclasses x 8 train images, batch 8: 4 optimiser steps an epoch, 12 in all.
TINY = dict(ONE_EPOCH_RUN, epochs=3, save_every=1, save=("checkpoint",))
FLAGS = [
    "--classes", "2", "--subclasses", "2", "--train-per-subclass", "8",
    "--eval-per-subclass", "4", "--image-size", "16", "--epochs", "3", "--batch-size", "8",
    "--save-every", "1", "--factors", "1", "--save", "checkpoint", "--device", "cpu",
    "--eval-epochs", "1,2",
]  # fmt: skip
KILL_STEP = 6  # the third of epoch 2's four steps: mid-epoch, after epoch 1's save


def _command() -> list[str]:
    script = Path(sys.executable).with_name("clusterprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "clusterprobe.runners.cli"]


def _weights(tracker, run_id):
    from safetensors.torch import load_file

    return load_file(str(tracker.artifact_path(run_id, "checkpoint") / "model.safetensors"))


def _steps(tracker, run_id, key="train_loss"):
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, store, capsys, monkeypatch
):
    from clusterprobe.runners import pipeline
    from clusterprobe.runners.config import RunConfig as Config

    killed_store = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env[ENV_KILL_AT] = f"train_step@{KILL_STEP}"
    proc = subprocess.run(
        [*_command(), "run", *FLAGS, "--threads", "1", "--quiet",
         "--store", str(killed_store)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    tracker = Tracker(local_store(killed_store))
    (run,) = tracker.search_runs(kind="train")
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"  # SIGKILL: nothing could end it
    assert [s for s, _ in _steps(tracker, run_id)] == [1]  # epoch 2 died before its log

    from clusterprobe.runners import train

    steps = []  # the steps the resumed loop takes: from epoch 1's state on, not from scratch
    monkeypatch.setattr(train, "kill_point", lambda name, at=None: steps.append(at))
    assert cli_main(["run", "--resume", run_id, "--quiet", "--store", str(killed_store)]) == 0
    assert steps == list(range(4, 12))
    assert f"train run: {run_id}" in capsys.readouterr().out

    (run,) = tracker.search_runs(kind="train")  # the same run, no second one
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert "clusterprobe.error" not in run.data.tags
    resumed = _steps(tracker, run_id)
    assert [s for s, _ in resumed] == [1, 2, 3]  # every epoch logged once
    # epoch 1 was measured before the kill and is not measured again; the final
    # checkpoint is compared with both earlier ones, as in an uninterrupted run
    evals = tracker.search_runs(kind="eval", parent_run_id=run_id, status="FINISHED")
    by_epoch = {e.data.params["checkpoint_epoch"]: e.info.run_id for e in evals}
    assert sorted(by_epoch) == ["1", "2", "3"] and len(evals) == 3
    import pandas as pd

    ari = pd.read_parquet(tracker.artifact_path(by_epoch["3"], "ari.parquet"))
    assert set(ari.loc[ari["kind"] == "checkpoint", "other_run_id"]) == {
        by_epoch["1"],
        by_epoch["2"],
    }

    # The same seed, never interrupted (nor measured between epochs: measuring never
    # draws from the training's random streams), in another store: the same weights.
    reference = pipeline.run(Config(**TINY), store, quiet=True)
    ref_tracker = Tracker(store)
    assert _steps(ref_tracker, reference.train_run_id) == resumed
    got, want = _weights(tracker, run_id), _weights(ref_tracker, reference.train_run_id)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("options", [{}, {"ema": 0.9}, {"loss": "supcon", "ema": 0.9}])
def test_train_continues_from_a_saved_state_exactly(options):
    """The loop alone: stop after epoch 1's state, start a fresh model from it; the EMA
    and a loss head (SupCon's projection) travel in the state too."""
    from clusterprobe.runners import models
    from clusterprobe.runners.data.registry import load_dataset
    from clusterprobe.runners.ema import for_config
    from clusterprobe.runners.train import train

    config = RunConfig(**{**TINY, **options})
    data = load_dataset(config)

    def fresh():
        model = models.create_model(config, 2, 16)
        return model, for_config(model, config)

    whole, whole_ema = fresh()
    saved = []
    full = train(whole, data, config, "cpu", quiet=True, on_save=saved.append, ema=whole_ema)
    assert [s.epoch for s in saved] == [1, 2, 3] and [s.step for s in saved] == [4, 8, 12]
    assert ("ema" in saved[0].extras) == (config.ema > 0)  # on by default
    assert ("loss_head" in saved[0].extras) == (options.get("loss") == "supcon")

    part, part_ema = fresh()
    rest = train(part, data, config, "cpu", quiet=True, start=saved[0], ema=part_ema)
    assert rest == full  # the history of epoch 1 comes with the state
    a, b = whole.state_dict(), part.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if whole_ema is not None:
        a, b = whole_ema.averaged_state(whole), part_ema.averaged_state(part)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_state_file_loads_weights_only(tmp_path):
    from clusterprobe.runners import models, resume
    from clusterprobe.runners.data.registry import load_dataset
    from clusterprobe.runners.train import train

    config = RunConfig(**{**TINY, "epochs": 1})
    model = models.create_model(config, 2, 16)
    saved = []
    train(model, load_dataset(config), config, "cpu", quiet=True, on_save=saved.append)
    path = resume.save(saved[0], tmp_path / "state.pt")
    raw = torch.load(path, weights_only=True)  # tensors, numbers, strings: no pickled code
    assert raw["epoch"] == 1 and raw["step"] == 4
    (tmp_path / "bad.pt").write_bytes(b"not a state")
    from clusterprobe.tracker.errors import UsageError

    with pytest.raises(UsageError, match="does not load"):
        resume.load(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "4"], "keeps the config it was started with; drop --epochs"),
        ([], "saved no training state"),
    ],
)
def test_resume_bad_input_is_one_line_exit_2(store, capsys, argv, message):
    """A run without a stored state, or run flags beside --resume."""
    from clusterprobe.runners import pipeline

    config = RunConfig(**{**TINY, "epochs": 1, "save_every": 0, "save": ()})
    result = pipeline.run(config, store, quiet=True)
    tracker = Tracker(store)
    tracker.client.set_terminated(result.train_run_id, "KILLED")
    code = cli_main(["run", "--resume", result.train_run_id, *argv, "--store", str(store.root)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert tracker.get_run(result.train_run_id).info.status == "KILLED"  # left as it was


def test_resume_refuses_a_finished_or_unknown_run(store, capsys):
    from clusterprobe.runners import pipeline

    config = RunConfig(**{**TINY, "epochs": 1, "save": ()})
    result = pipeline.run(config, store, quiet=True)
    assert cli_main(["run", "--resume", result.train_run_id, "--store", str(store.root)]) == 2
    assert "the run is FINISHED (nothing to resume)" in capsys.readouterr().err
    assert cli_main(["run", "--resume", "nosuchrun", "--store", str(store.root)]) == 2
    assert "nosuchrun" in capsys.readouterr().err


STUDY_SPACE = """
[fixed]
classes = 2
subclasses = 2
train_per_subclass = 8
eval_per_subclass = 4
image_size = 16
epochs = 3
batch_size = 8
save_every = 1
factors = "1"
save = []
device = "cpu"

[params.lr]
choices = [0.4]
"""


def test_study_resume_continues_an_interrupted_trials_training(tmp_path, store, monkeypatch):
    """A worker SIGKILLed mid-epoch: --resume retries its trial by resuming the same run."""
    import optuna
    from clusterprobe.runners import train
    from clusterprobe.runners.study.objective import ATTR_RESUME_RUN
    from clusterprobe.runners.study.retry import ATTR_RETRY_OF
    from clusterprobe.tracker.conventions import ATTR_RUN_ID, TAG_TRIAL
    from optuna.trial import TrialState

    space = tmp_path / "space.toml"
    space.write_text(STUDY_SPACE)
    base = ["--store", str(store.root), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env[ENV_KILL_AT] = f"train_step@{KILL_STEP}"
    proc = subprocess.run(
        [*_command(), "study", "--name", "r", "--trials", "1", "--space", str(space), *base],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    steps = []
    monkeypatch.setattr(train, "kill_point", lambda name, at=None: steps.append(at))
    assert cli_main(["study", "--resume", "r", *base]) == 0
    assert steps == list(range(4, 12))  # from epoch 1's state, not from scratch

    study = optuna.load_study(study_name="r", storage=store.optuna_url)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    run_id = first.user_attrs[ATTR_RUN_ID]
    assert retry.user_attrs[ATTR_RETRY_OF] == 0 and retry.user_attrs[ATTR_RESUME_RUN] == run_id
    assert retry.user_attrs[ATTR_RUN_ID] == run_id and retry.params == first.params
    tracker = Tracker(store)
    (run,) = tracker.search_runs(kind="train")  # one run: continued, not started again
    assert run.info.status == "FINISHED" and run.data.tags[TAG_TRIAL] == "1"
    assert [s for s, _ in _steps(tracker, run_id)] == [1, 2, 3]
    assert not tracker.search_runs(status="RUNNING")
    assert cli_main(["doctor", "--store", str(store.root)]) == 0  # trials and runs agree


def test_save_every_must_not_be_negative(tmp_path, capsys):
    argv = ["run", "--save-every", "-1", "--store", str(tmp_path / "mlruns")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--save-every -1: give epochs >= 1, or 0 for never" in err
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # nothing stored


def test_epochs_after_the_last_state_are_trained_again_but_not_logged_or_measured_twice(
    store, monkeypatch
):
    """--save-every 2, stopped (Ctrl-C) in epoch 4 after epoch 3 was logged and measured:
    the resume trains epochs 3 and 4 from epoch 2's state; epoch 3 keeps its first
    metrics and its eval run."""
    from clusterprobe.runners import pipeline, train

    config = RunConfig(**{**TINY, "epochs": 4, "save_every": 2, "eval_epochs": (1, 3)})

    def stop_at(name, at=None):
        if at == 13:  # the second of epoch 4's four steps
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "kill_point", stop_at)
    opened = []
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, store, on_start=opened.append, quiet=True)
    (run_id,) = opened
    tracker = Tracker(store)
    assert tracker.get_run(run_id).info.status == "KILLED"
    before = _steps(tracker, run_id)
    assert [s for s, _ in before] == [1, 2, 3]

    steps = []
    monkeypatch.setattr(train, "kill_point", lambda name, at=None: steps.append(at))
    result = pipeline.resume(run_id, store, quiet=True)
    assert steps == list(range(8, 16))  # epochs 3 and 4, from epoch 2's state
    assert tracker.get_run(run_id).info.status == "FINISHED"
    after = _steps(tracker, run_id)
    assert after[:3] == before and [s for s, _ in after] == [1, 2, 3, 4]
    evals = tracker.search_runs(kind="eval", parent_run_id=run_id, status="FINISHED")
    assert sorted(e.data.params["checkpoint_epoch"] for e in evals) == ["1", "3", "4"]
    assert sorted(result.eval_run_ids) == sorted(e.info.run_id for e in evals)


def test_reopen_run_makes_an_ended_run_running_again_under_this_process(store):
    from clusterprobe.tracker.conventions import TAG_ERROR, TAG_PID

    tracker = Tracker(store)
    ctx = tracker.start_run("train", params={"a": "1"})
    ctx.end("FAILED", error="owner process gone")
    tracker.client.set_tag(ctx.run_id, TAG_PID, "1")  # as if another process had owned it
    with tracker.reopen_run(ctx.run_id) as again:
        run = tracker.get_run(again.run_id)
        assert run.info.status == "RUNNING" and TAG_ERROR not in run.data.tags
        assert run.data.tags[TAG_PID] == str(os.getpid())
        again.log_metrics({"x": 1.0}, step=1)
    run = tracker.get_run(ctx.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}
    assert run.data.metrics["x"] == 1.0


def test_a_stopped_run_says_how_to_resume_it(tmp_path):
    """SIGTERM mid-epoch: the run ends KILLED, exit 143, and the line names --resume."""
    from clusterprobe.runners.resume import has_state

    target = tmp_path / "mlruns"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env[ENV_KILL_AT] = f"train_step@{KILL_STEP}:TERM"
    proc = subprocess.run(
        [*_command(), "run", *FLAGS, "--threads", "1", "--quiet", "--store", str(target)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 143, proc.stderr[-3000:]
    tracker = Tracker(local_store(target))
    (run,) = tracker.search_runs(kind="train")
    assert run.info.status == "KILLED" and has_state(tracker, run.info.run_id)
    assert f"continue it: clusterprobe run --resume {run.info.run_id}" in proc.stderr
