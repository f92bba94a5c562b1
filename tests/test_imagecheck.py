"""Every image decoded once before training: a corrupt file stops the run with its path
(exit 2, nothing stored) or is left out and counted with --skip-corrupt."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.dataset_check import check_dataset
from clusterprobe.runners.data.imagecheck import find_corrupt
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.tracker.errors import UsageError
from PIL import Image

from tests.test_folder import make_tree


def truncate_jpeg(path: Path) -> None:
    """A real JPEG cut in the middle of its scan data (what a broken download leaves)."""
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_find_corrupt_names_each_bad_file_and_hands_over_the_good_ones(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (7, 5), (1, 2, 3)).save(good)
    cut = tmp_path / "cut.jpg"
    truncate_jpeg(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    kept = {}
    bad = find_corrupt([good, cut, junk], keep=lambda i, im: kept.update({i: im.size}))
    assert [b.path for b in bad] == [str(cut), str(junk)]
    assert all(b.reason and "\n" not in b.reason for b in bad)
    assert kept == {0: (7, 5)}  # decoded once, handed over


def test_corrupt_folder_image_is_refused_or_skipped(tmp_path):
    make_tree(tmp_path, n=5)
    config = RunConfig(dataset="folder", data_dir=str(tmp_path), image_size=16)
    data = load_dataset(config)  # lists files only; nothing is decoded yet
    cut = Path(next(p for p in data.train_plain.paths if "/oak/" in p))
    truncate_jpeg(cut)  # PNG name, JPEG bytes cut short: PIL finds it by content
    with pytest.raises(UsageError, match=str(cut)):
        check_dataset(data)
    skipped = check_dataset(data, skip_corrupt=True)
    assert skipped.record["skipped_corrupt"] == [str(cut)]
    assert str(cut) not in skipped.train_plain.paths + skipped.eval.paths
    before = len(data.train_plain) + len(data.eval)
    assert len(skipped.train_plain) + len(skipped.eval) == before - 1
    assert len(skipped.train) == len(skipped.train_labels.subclass) == len(skipped.train_plain)
    assert skipped.train.transform is data.train.transform  # augmentation kept


def test_run_stops_on_a_corrupt_image_before_any_store_exists(tmp_path):
    make_tree(tmp_path / "data", n=3)
    cut = tmp_path / "data" / "animal" / "cat" / "img0.png"
    truncate_jpeg(cut)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "clusterprobe.runners.cli", "run", "--dataset", "folder"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--epochs", "1", "--store", str(store)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(cut) in lines[0] and "--skip-corrupt" in lines[0]
    assert not store.exists()


def test_corrupt_transfer_image_is_refused_naming_it(tmp_path):
    from clusterprobe.runners.data.transfer import load_transfer

    for k, name in enumerate(["daisy", "rose"]):
        folder = tmp_path / "flowers" / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (50 * k, i, 0)).save(folder / f"{i}.png")
    cut = tmp_path / "flowers" / "rose" / "1.png"
    truncate_jpeg(cut)
    with pytest.raises(UsageError, match=str(cut)):
        load_transfer(str(tmp_path / "flowers"), image_size=16)


def test_prepare_says_what_skip_corrupt_left_out(tmp_path, capsys):
    from clusterprobe.runners.pipeline import prepare

    make_tree(tmp_path, n=6)
    config = RunConfig(dataset="folder", data_dir=str(tmp_path), image_size=16)
    cut = Path(next(p for p in load_dataset(config).train_plain.paths if "/fern/" in p))
    truncate_jpeg(cut)
    _, data = prepare(config.replace(skip_corrupt=True))
    assert data.record["skipped_corrupt"] == [str(cut)]
    err = capsys.readouterr().err
    assert "--skip-corrupt left out 1 image file(s)" in err and str(cut) in err
