"""Input that trains or scores without error yet says little: warned about, not refused."""

from __future__ import annotations

import json

import numpy as np
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.runners.data.splitcheck import split_warnings
from PIL import Image


def _tree(root, side: int, n: int = 4) -> None:
    for s in ("a", "b"):
        for c in ("x", "y"):
            (root / s / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (side + 2 * i, side), (i, 0, 0)).save(root / s / c / f"{i}.png")


def test_folder_of_small_images_defaults_to_their_own_size(tmp_path):
    _tree(tmp_path / "small", side=32)
    data = load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path / "small")))
    assert data.image_size == 32  # the shorter side, not the 224 px of photos
    assert data.train[0][0].shape == (3, 32, 32)
    data = load_dataset(
        RunConfig(dataset="folder", data_dir=str(tmp_path / "small"), image_size=24)
    )
    assert data.image_size == 24  # --image-size wins
    _tree(tmp_path / "big", side=300, n=2)
    assert (
        load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path / "big"))).image_size == 224
    )


def test_small_splits_are_warned_about():
    train = np.repeat([0, 1, 2, 3], [1, 1, 6, 6])
    evals = np.repeat([0, 1, 2, 3], 3)
    lines = split_warnings(train, evals)
    assert len(lines) == 1 and "train split has 1 image(s)" in lines[0] and "14 in all" in lines[0]
    assert split_warnings(np.repeat([0, 1], 5), np.repeat([0, 1], 2)) == []
    assert "eval split has 1" in split_warnings(np.repeat([0, 1], 5), np.array([0, 1]))[0]


def test_score_warns_on_superclasses_with_fewer_rows_than_clusters(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sup = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # superclass 1: 2 rows, 2 subclasses
    sub = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    path = tmp_path / "emb.npz"
    np.savez(path, features=rng.normal(size=(8, 4)), superclass=sup, subclass=sub)
    assert cli_main(["score", str(path), "--factors", "1", "--quiet"]) == 0
    out = capsys.readouterr()
    warned = [ln for ln in out.err.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "superclass 1 has 2 row(s)" in warned[0]
    per_sup = json.loads(out.out)["per_superclass"]
    assert per_sup  # scored all the same
    assert cli_main(["score", str(path), "--factors", "1-2", "--quiet"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    # factor 2: superclass 0 wants 4 clusters of 6 rows (fine), superclass 1 wants 4 of 2
    assert len(warned) == 1 and "4 clusters at factor 2" in warned[0]
