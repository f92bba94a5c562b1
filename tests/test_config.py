"""RunConfig: params written by to_params read back by from_params (a stored run's config)."""

from __future__ import annotations

import pytest
from clusterprobe.runners.config import RunConfig
from clusterprobe.tracker.errors import UsageError


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(
            dataset="living17",
            shuffled=True,
            classes=4,
            image_size=None,
            data_dir="/data/imagenet",
            arch="vgg11",
            norm="ln",
            lr=1e-05,
            eval_epochs=(1, 3),
            factors=(1, 3),
            precision="fp64",
            save=(),
            extra={"shuffle_seed": "7"},
        ),
    ],
)
def test_from_params_inverts_to_params(config):
    assert RunConfig.from_params(config.to_params()) == config


def test_from_params_ignores_other_params_and_keeps_defaults_for_absent_fields():
    params = {"arch": "resnet50", "epochs": "3", "dataset_digest": "abc", "checkpoint_epoch": "3"}
    assert RunConfig.from_params(params) == RunConfig(arch="resnet50", epochs=3)


def test_a_param_that_does_not_parse_names_itself():
    with pytest.raises(UsageError, match="stored param epochs='three'"):
        RunConfig.from_params({"epochs": "three"})
    with pytest.raises(UsageError, match="stored param shuffled='yes'"):
        RunConfig.from_params({"shuffled": "yes"})
