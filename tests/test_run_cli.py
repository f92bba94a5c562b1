"""`clusterprobe run`: flags -> RunConfig, bad input -> one line and exit 2, and one real
end-to-end `clusterprobe run --quick` in a subprocess (the only CLI run of the suite)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.config import PRESETS, RunConfig
from clusterprobe.tracker.errors import UsageError


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _args(*argv: str) -> argparse.Namespace:
    from clusterprobe.runners.commands import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_preset_first_then_explicit_flags():
    from clusterprobe.runners.commands.run import config_from_args

    assert config_from_args(_args()) == RunConfig()
    quick = config_from_args(_args("--quick"))
    assert quick == RunConfig(**PRESETS["quick"])
    config = config_from_args(
        _args(
            "--quick",
            "--epochs",
            "1",
            "--factors",
            "1,3",
            "--eval-epochs",
            "1",
            "--save",
            "embeddings,plots",
            "--lr",
            "0.05",
            "--seed",
            "3",
        )
    )
    assert config.epochs == 1  # the explicit flag wins over the preset
    assert config.train_per_subclass == PRESETS["quick"]["train_per_subclass"]
    assert config.factors == (1, 3) and config.eval_epochs == (1,)
    assert config.save == ("embeddings", "plots") and config.lr == 0.05 and config.seed == 3
    assert config_from_args(_args("--save", "none")).save == ()
    assert config_from_args(_args("--save", "all")).save == RunConfig().save


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--arch", "resnet999"], "resnet999"),
        (["--dataset", "synthetc"], "'synthetc' is not known (did you mean synthetic"),
        (["--factors", "1-x"], "--factors"),
        (["--save", "weights"], "--save weights"),
        (["--eval-epochs", "40"], "--eval-epochs 40"),
        (["--epochs", "0"], "--epochs 0"),
        (["--classes", "1"], "--classes 1"),
        (["--threads", "0"], "--threads 0"),
        (["--device", "cuda:7"] if not _cuda() else ["--epochs", "-1"], "--"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path, capsys, argv, names):
    store = tmp_path / "store"
    assert cli_main(["run", *argv, "--store", str(store), "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusterprobe run: error: ")
    assert names in lines[0]
    assert not (store / "mlflow.db").exists()


def test_parse_helpers_reject_garbage():
    from clusterprobe.runners.config import parse_int_list, parse_save

    assert parse_int_list("1-3,5", "--eval-epochs") == (1, 2, 3, 5)
    assert parse_int_list("none", "--eval-epochs") == ()
    with pytest.raises(UsageError, match="--eval-epochs '3-1'"):
        parse_int_list("3-1", "--eval-epochs")
    with pytest.raises(UsageError, match="choose from"):
        parse_save("checkpoint,pictures")


def test_cli_quick_run_end_to_end(tmp_path):
    """README's demo command in a real subprocess: trains, measures, records, prints."""
    store = tmp_path / "mlruns"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    script = Path(sys.executable).with_name("clusterprobe")  # the installed console script
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "clusterprobe.runners.cli"]
    )
    proc = subprocess.run(
        [*command, "run", "--quick", "--quiet", "--threads", "1", "--store", str(store)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "AMI f1" in out and "probe acc" in out and "layer4.1" in out
    train_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("train run:"))
    assert "bytes stored:" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{store}/mlflow.db" in out

    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(local_store(store))
    train = tracker.get_run(train_id)
    assert train.info.status == "FINISHED" and train.data.params["epochs"] == "3"
    assert train.data.tags["clusterprobe.torch_threads"] == "1"  # --threads took effect
    (ev,) = tracker.search_runs(kind="eval", parent_run_id=train_id)
    assert ev.info.status == "FINISHED" and 0 <= ev.data.metrics["best_ami"] <= 1
    assert tracker.artifact_path(ev.info.run_id, "layer_profile.png").stat().st_size > 0


def test_a_crash_after_the_runs_opened_is_exit_1_and_marks_them_failed(
    tmp_path, capsys, one_torch_thread
):
    """Bad input is caught before anything is stored (exit 2); what goes wrong once the
    train run exists (here: training diverges at an absurd learning rate) is a crash:
    one line, exit 1, and the run is FAILED with the error, never left RUNNING."""
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store = tmp_path / "mlruns"
    argv = ["run", "--classes", "2", "--subclasses", "2", "--train-per-subclass", "8"]
    argv += ["--eval-per-subclass", "4", "--image-size", "16", "--epochs", "1"]
    argv += ["--batch-size", "8", "--lr", "1e30", "--device", "cpu", "--save", "none"]
    assert cli_main([*argv, "--store", str(store), "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusterprobe run: failed: FloatingPointError")
    assert "training diverged" in lines[0]
    (train,) = Tracker(local_store(store)).search_runs(kind="train")
    assert train.info.status == "FAILED"
    assert "diverged" in train.data.tags["clusterprobe.error"]
