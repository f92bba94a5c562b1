"""`clusterprobe datasets list|show` and the data flags of `run` (add_data_arguments)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.data.cli_args import add_data_arguments, data_config_kwargs
from clusterprobe.runners.data.registry import DATASETS
from clusterprobe.tracker.errors import UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "breeds"
REAL = ("entity13", "entity30", "living17", "nonliving26", "cifar100", "folder")


def test_list_shows_every_registered_name_with_sizes(capsys):
    assert cli_main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert cli_main(["datasets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # JSON only on stdout
    assert set(rows) == set(DATASETS) and set(REAL) <= set(rows)
    assert (rows["entity13"]["superclasses"], rows["entity13"]["subclasses_per_superclass"]) == (
        13,
        20,
    )
    assert (rows["living17"]["superclasses"], rows["nonliving26"]["superclasses"]) == (17, 26)
    assert rows["cifar100"]["superclasses"] == 20 and rows["cifar100"]["eval_per_subclass"] == 100
    assert "summary" in rows["synthetic"]  # sizes too once its module is present


@pytest.mark.usefixtures("shared_breeds")
def test_show_text_and_json(capsys):
    info = ["--breeds-info", str(SHARED)]
    assert cli_main(["datasets", "show", "living17", *info]) == 0
    text = capsys.readouterr().out
    assert text.startswith("living17 (natural, split none): 17 superclasses x 4 subclasses")
    assert "  0 salamander: n01631663 (eft)" in text
    assert cli_main(["datasets", "show", "nonliving26", "--split", "bad", "--json", *info]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"source", "target"} and len(got["source"]) == 26
    assert cli_main(["datasets", "show", "living17", "--classes", "4", "--json", *info]) == 0
    assert [len(g) for g in json.loads(capsys.readouterr().out)["groups"]] == [4] * 4


def test_show_refusals_exit_2_with_one_line(capsys, tmp_path):
    cases = [
        (["living17", "--split", "good", "--classes", "3"], "--split good cannot be combined"),
        (["livng17"], "did you mean living17"),
        (["synthetic", "--split", "rand"], "only the BREEDS datasets have source/target splits"),
        (["cifar100", "--data-dir", str(tmp_path)], "--download"),
    ]
    for argv, message in cases:
        assert cli_main(["datasets", "show", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err
        assert captured.err.count("\n") == 1


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return data_config_kwargs(parser.parse_args(list(argv)))


def test_data_flags_map_to_config_fields_only_when_given():
    from clusterprobe.runners.config import RunConfig

    assert _parse() == {}
    got = _parse(
        "--dataset",
        "living17",
        "--imagenet-root",
        "/data/imagenet",
        "--breeds-info",
        "/data/breeds",
        "--subclasses",
        "2",
        "--shuffle",
        "--train-per-subclass",
        "100",
        "--image-size",
        "64",
    )
    assert got == {
        "dataset": "living17",
        "data_dir": "/data/imagenet",
        "breeds_info": "/data/breeds",
        "subclasses": 2,
        "shuffled": True,
        "train_per_subclass": 100,
        "image_size": 64,
    }
    RunConfig(**got).validate()  # every key is a RunConfig field
    assert _parse("--data-dir", "x", "--download", "--split", "rand") == {
        "data_dir": "x",
        "download": True,
        "split": "rand",
    }
    with pytest.raises(UsageError, match="--split good cannot be combined with --shuffle"):
        _parse("--split", "good", "--shuffle")
    with pytest.raises(UsageError, match="did you mean cifar100"):
        _parse("--dataset", "cifar10O")
    with pytest.raises(UsageError, match="--eval-per-subclass 0: must be >= 1"):
        _parse("--eval-per-subclass", "0")
