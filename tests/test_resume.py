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
from clusterprobe.tracker.store import local_store
from clusterprobe.tracker.tracking import Tracker

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 2 x 2 subclasses x 8 train images, batch 8: 4 optimiser steps an epoch, 12 in all.
TINY = dict(
    classes=2,
    subclasses=2,
    train_per_subclass=8,
    eval_per_subclass=4,
    image_size=16,
    epochs=3,
    batch_size=8,
    save_every=1,
    factors=(1,),
    save=("checkpoint",),
    device="cpu",
)
FLAGS = [
    "--classes", "2", "--subclasses", "2", "--train-per-subclass", "8",
    "--eval-per-subclass", "4", "--image-size", "16", "--epochs", "3", "--batch-size", "8",
    "--save-every", "1", "--factors", "1", "--save", "checkpoint", "--device", "cpu",
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
    env["CLUSTERPROBE_TEST_KILL_AT"] = f"train_step:{KILL_STEP}"
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
    monkeypatch.setattr(train, "kill_point", lambda name, step: steps.append(step))
    assert cli_main(["run", "--resume", run_id, "--quiet", "--store", str(killed_store)]) == 0
    assert steps == list(range(4, 12))
    assert f"train run: {run_id}" in capsys.readouterr().out

    (run,) = tracker.search_runs(kind="train")  # the same run, no second one
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert "clusterprobe.error" not in run.data.tags
    resumed = _steps(tracker, run_id)
    assert [s for s, _ in resumed] == [1, 2, 3]  # every epoch logged once
    (final_eval,) = tracker.search_runs(kind="eval", parent_run_id=run_id, status="FINISHED")
    assert final_eval.data.params["checkpoint_epoch"] == "3"

    # The same seed, never interrupted, in another store: the same weights, bit for bit.
    reference = pipeline.run(Config(**TINY), store, quiet=True)
    ref_tracker = Tracker(store)
    assert _steps(ref_tracker, reference.train_run_id) == resumed
    got, want = _weights(tracker, run_id), _weights(ref_tracker, reference.train_run_id)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_train_continues_from_a_saved_state_exactly():
    """The loop alone: stop after epoch 1's state, start a fresh model from it."""
    from clusterprobe.runners import models
    from clusterprobe.runners.data.registry import load_dataset
    from clusterprobe.runners.train import train

    config = RunConfig(**TINY)
    data = load_dataset(config)
    whole = models.create_model(config, 2, 16)
    saved = []
    full = train(whole, data, config, "cpu", quiet=True, on_save=saved.append)
    assert [s.epoch for s in saved] == [1, 2, 3] and [s.step for s in saved] == [4, 8, 12]

    part = models.create_model(config, 2, 16)
    rest = train(part, data, config, "cpu", quiet=True, start=saved[0])
    assert rest == full  # the history of epoch 1 comes with the state
    a, b = whole.state_dict(), part.state_dict()
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
