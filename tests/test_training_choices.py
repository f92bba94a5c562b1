"""Every loss and both optimisers train on the built-in data and record, and the same command
and seed on one machine and thread count repeat their metrics exactly (every new option)."""

from __future__ import annotations

import argparse

import pytest
from clusterprobe.runners import pipeline
from clusterprobe.runners.commands import run as run_command
from clusterprobe.tracker.tracking import Tracker
from conftest import ONE_EPOCH_RUN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(ONE_EPOCH_RUN, probe_per_subclass=4)
FLAGS = {
    "squared-adamw-ema-projected": (
        "--loss squared --squared-k 4 --squared-m 10 --optimizer adamw --warmup-epochs 0 "
        "--ema 0.9 --probe-features projected --probe-dim 32"
    ),
    "supcon-paper-momentum": "--loss supcon --supcon-temperature 0.2 --recipe paper --momentum 0.8",
    "ce-label-smoothing-sgd": "--label-smoothing 0.1 --optimizer sgd --weight-decay 1e-4",
}
RECORDED = {  # params the runs must record: the flags, and the recipe's values they filled
    "squared-adamw-ema-projected": dict(
        loss="squared", squared_k="4.0", squared_m="10.0", optimizer="adamw", lr="0.001",
        momentum="", weight_decay="0.1", warmup_epochs="0", ema="0.9",
        probe_features="projected", probe_dim="32",
    ),
    "supcon-paper-momentum": dict(
        loss="supcon", supcon_temperature="0.2", recipe="paper", optimizer="sgd", lr="0.1",
        momentum="0.8", weight_decay="0.0001", warmup_epochs="5", ema="0.99",
    ),
    "ce-label-smoothing-sgd": dict(
        loss="ce", label_smoothing="0.1", optimizer="sgd", lr="0.4", weight_decay="0.0001"
    ),
}  # fmt: skip


def _config(flags: str):
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    return run_command.config_from_args(parser.parse_args(flags.split())).replace(**TINY)


@pytest.mark.parametrize("name", FLAGS)
def test_each_choice_trains_records_and_repeats(store, name):
    config = _config(FLAGS[name])
    first = pipeline.run(config, store, quiet=True)
    second = pipeline.run(config, store, quiet=True)
    tracker = Tracker(store)
    train = tracker.get_run(first.train_run_id)
    assert train.info.status == "FINISHED"
    params = train.data.params
    assert {k: params[k] for k in RECORDED[name]} == RECORDED[name]
    acc = tracker.client.get_metric_history(first.train_run_id, "train_acc")
    assert [m.step for m in acc] == [1] and 0 <= acc[0].value <= 1  # train accuracy, any loss
    # repeatable: the same config and seed, same machine and thread count -> equal numbers
    assert first.history == second.history
    assert first.layers == second.layers
    shared = set(first.summary) & set(second.summary)
    assert {"best_ami", "best_probe_acc", "test_acc"} <= shared
    assert {k: first.summary[k] for k in shared} == {k: second.summary[k] for k in shared}
