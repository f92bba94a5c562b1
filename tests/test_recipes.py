"""Per-family recipes fill only what the user left unset; both optimisers are what they say."""

from __future__ import annotations

import re

import pytest
import torch
from clusterprobe.runners import pipeline
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.recipes import make_optimizer, resolve
from clusterprobe.tracker.errors import UsageError


@pytest.mark.parametrize(
    ("family", "recipe", "want", "loss"),
    [
        ("resnet", "default", ("sgd", 0.4, 0.9, 5e-4, 1), "ce"),
        ("features", "default", ("sgd", 0.4, 0.9, 5e-4, 1), "ce"),
        ("vgg", "default", ("sgd", 0.04, 0.9, 5e-4, 1), "ce"),  # a tenth of the ResNet rate
        ("vit", "default", ("adamw", 1e-3, None, 0.1, 1), "ce"),
        ("resnet", "paper", ("sgd", 0.1, 0.9, 1e-4, 5), "ce"),  # the paper's absolute values
        ("vgg", "paper", ("sgd", 0.01, 0.9, 1e-4, 5), "ce"),
        ("vit", "paper", ("adamw", 1e-3, None, 0.1, 5), "ce"),
        ("resnet", "default", ("sgd", 0.04, 0.9, 5e-4, 1), "squared"),  # a tenth with SGD
        ("vgg", "default", ("sgd", 0.004, 0.9, 5e-4, 1), "squared"),
        ("vit", "default", ("adamw", 1e-3, None, 0.1, 1), "squared"),
    ],
)
def test_recipe_per_family(family, recipe, want, loss):
    got = resolve(RunConfig(recipe=recipe, loss=loss), family)
    values = (got.optimizer, got.lr, got.momentum, got.weight_decay, got.warmup_epochs)
    assert values == pytest.approx(want)


def test_user_values_win_and_the_optimizer_picks_its_own_recipe():
    got = resolve(RunConfig(lr=0.2, warmup_epochs=0), "vgg")
    assert (got.lr, got.warmup_epochs, got.weight_decay) == (0.2, 0, 5e-4)
    got = resolve(RunConfig(optimizer="adamw"), "resnet")
    assert (got.lr, got.momentum, got.weight_decay) == (1e-3, None, 0.1)
    got = resolve(RunConfig(optimizer="sgd"), "vit")
    assert (got.lr, got.momentum) == (0.4, 0.9)
    assert resolve(got, "vit") == got  # idempotent: a resolved config stays as it is
    with pytest.raises(ValueError, match="momentum 0.5 applies to optimizer 'sgd', not 'adamw'"):
        resolve(RunConfig(momentum=0.5), "vit")


def test_prepare_records_the_resolved_values_and_refuses_bad_ones():
    cfg, _ = pipeline.prepare(
        RunConfig(arch="vgg11", classes=2, subclasses=2, train_per_subclass=2, image_size=16)
    )
    assert cfg.to_params()["lr"] == "0.04" and cfg.to_params()["optimizer"] == "sgd"
    with pytest.raises(UsageError, match="--momentum 0.5 applies to optimizer 'sgd'"):
        pipeline.prepare(RunConfig(optimizer="adamw", momentum=0.5, classes=2))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(optimizer="adam"), "--optimizer 'adam': choose one of sgd, adamw"),
        (dict(recipe="timm"), "--recipe 'timm': choose one of default, paper"),
        (dict(loss="mse"), "--loss 'mse': choose one of ce, squared, supcon"),
        (dict(momentum=1.0), "--momentum 1.0: must be in [0, 1)"),
        (dict(ema=1.0), "--ema 1.0: must be in [0, 1)"),
        (dict(label_smoothing=0.1, loss="squared"), "applies to --loss ce, not 'squared'"),
        (dict(squared_m=0.0, loss="squared"), "--squared-m 0.0: must be > 0"),
        (dict(warmup_epochs=-1), "--warmup-epochs -1: must be >= 0"),
        (dict(probe_dim=0), "--probe-dim 0: must be >= 1"),
        (dict(probe_features="flat"), "--probe-features 'flat': choose one of pooled"),
    ],
)
def test_bad_training_values_name_the_value(fields, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        RunConfig(**fields).validate()


def test_optimizers_are_sgd_nesterov_and_adamw():
    net = torch.nn.Linear(3, 2)
    sgd = make_optimizer(resolve(RunConfig(), "resnet"), net.parameters(), 0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert sgd.defaults["momentum"] == 0.9
    adamw = make_optimizer(resolve(RunConfig(optimizer="adamw"), "resnet"), net.parameters(), 0.1)
    assert isinstance(adamw, torch.optim.AdamW)
    # weight decay on the weight matrix only, none on the bias
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in adamw.param_groups] == [1, 1]


def test_a_study_space_searches_the_training_choices():
    import optuna
    from clusterprobe.runners.space import build_config, parse_space

    space = parse_space(
        """
[params.loss]
choices = ["ce", "squared", "supcon"]
[params.label_smoothing]
type = "float"
low = 0.0
high = 0.2
when = { loss = "ce" }
[params.optimizer]
choices = ["sgd", "adamw"]
[params.recipe]
choices = ["default", "paper"]
[params.ema]
choices = [0.0, 0.99]
[params.probe_features]
choices = ["pooled", "projected"]
"""
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        values = space.suggest(study.ask())
        config = build_config(space, values)
        assert (config.loss == "ce") == ("label_smoothing" in values)
        seen.add((config.loss, config.optimizer))
    assert {loss for loss, _ in seen} == {"ce", "squared", "supcon"}
    with pytest.raises(UsageError, match=r"\[params.ema\]: --ema 1.5: must be in"):
        parse_space("[params.ema]\nchoices = [0.0, 1.5]")


def test_eval_takes_the_probe_input_flags():
    import argparse

    from clusterprobe.runners.commands import eval as eval_command

    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    args = parser.parse_args(["--probe-features", "projected", "--probe-dim", "64"])
    assert eval_command.measure_flags(args) == {"probe_features": "projected", "probe_dim": 64}
