"""The decoded-image cache: one decode per file, then memory-mapped pixels for every pass,
run and trial; evaluation pixels as the decode path gives them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import cache
from clusterprobe.runners.data.dataset_check import check_dataset
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.runners.evalrun.stored import dataset_record
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.tracking import Tracker
from PIL import Image
from torchvision import transforms

from tests.conftest import ONE_EPOCH_RUN
from tests.test_imagecheck import truncate_jpeg


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(50, 40), (40, 64), (33, 33), (80, 45), (60, 61)]):
        p = tmp_path / "imgs" / f"n{i % 2:08d}" / f"img_{i}.JPEG"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=95)
        paths.append(str(p))
    bad = tmp_path / "imgs" / "n00000001" / "img_bad.JPEG"
    with open(paths[0], "rb") as f:
        bad.write_bytes(f.read()[:200])  # a truncated JPEG
    return [*paths, str(bad)], [0, 1, 0, 1, 0, 1]


def scramble_keeping_size_and_mtime(paths) -> None:
    """Garbage of the same length, mtime put back: the cache key cannot tell, so any
    file read after this would fail to decode or give other pixels."""
    for p in paths:
        st = os.stat(p)
        Path(p).write_bytes(b"\xff" * st.st_size)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def noise_tree(root: Path, n: int = 5) -> None:
    """root/<super>/<sub>/i.jpg: textured JPEGs of several shapes (2 x 2 subclasses)."""
    rng = np.random.default_rng(1)
    for sup in ("animal", "plant"):
        for sub in ("a", "b"):
            folder = root / sup / f"{sup}-{sub}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = 90 + 7 * i, 130 - 9 * i
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def test_one_decode_per_file_then_pixels_from_the_map(image_folder, tmp_path):
    paths, labels = image_folder
    root = tmp_path / "cache"
    pixels, bad = cache.open_or_build(paths, labels, "train", cache.Squares(24), root=root)
    assert [b.path for b in bad] == [paths[-1]] and "Error" in bad[0].reason
    want = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24)])
    for i, p in enumerate(paths[:-1]):
        with Image.open(p) as im:
            im.draft("RGB", (24, 24))
            np.testing.assert_array_equal(pixels[i], np.asarray(want(im.convert("RGB"))))
    assert not pixels[-1].any()  # the corrupt file's row stays black
    first = np.array(pixels)
    scramble_keeping_size_and_mtime(paths)
    again, bad_again = cache.open_or_build(paths, labels, "train", cache.Squares(24), root=root)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, first)
    assert bad_again == bad  # from the list written beside the pixels, not a new decode
    target = cache.Squares(24).file(root, cache.dataset_digest(paths, labels), "train")
    assert sorted(f.name for f in root.iterdir()) == [
        target.with_suffix(".corrupt.json").name,
        target.name,
    ]


def test_a_replaced_file_rebuilds_the_cache(image_folder, tmp_path):
    paths, labels = image_folder
    root = tmp_path / "cache"
    cache.open_or_build(paths[:-1], labels[:-1], "eval", cache.Squares(16), root=root)
    Image.new("RGB", (30, 30), (200, 10, 10)).save(paths[2], "JPEG")  # a fixed file
    pixels, _ = cache.open_or_build(paths[:-1], labels[:-1], "eval", cache.Squares(16), root=root)
    assert len(list(root.glob("*.npy"))) == 2
    np.testing.assert_allclose(pixels[2].reshape(-1, 3).mean(0), (200, 10, 10), atol=3)


def test_size_cap_is_one_clear_error_and_writes_nothing(image_folder, tmp_path):
    paths, labels = image_folder
    with pytest.raises(ValueError, match=r"6 images at 224 px exceeds the cap of"):
        cache.open_or_build(
            paths, labels, "train", cache.Squares(224), root=tmp_path / "c", cap=1000
        )
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.parametrize("preprocess", ["dataset", "model"])
def test_eval_pixels_are_the_decode_paths(tmp_path, preprocess):
    """The cached splits give the decode path's evaluation tensors (resize, centre crop,
    normalise: the dataset recipe at 96 px, or timm's bicubic recipe of the arch); the
    training split draws its random crops from the stored square."""
    noise_tree(tmp_path / "data")
    config = RunConfig(
        dataset="folder", data_dir=str(tmp_path / "data"), image_size=96, preprocess=preprocess
    )
    decoded = check_dataset(load_dataset(config))
    data = check_dataset(load_dataset(config), cache_root=tmp_path / "cache")
    assert isinstance(data.eval, cache.CachedFiles) and isinstance(decoded.eval, type(decoded.eval))
    stored = data.eval.pixels.shape[1]
    assert stored == data.preprocess.resize_size() and stored > 96
    for split in ("eval", "train_plain"):
        a, b = getattr(decoded, split), getattr(data, split)
        assert a.paths == b.paths
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert y[1:] == x[1:]
            torch.testing.assert_close(y[0], x[0], atol=1e-6, rtol=0)
    torch.manual_seed(0)
    crops = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert crops.shape == (len(data.train), 3, 96, 96) and crops.std() > 0.1
    # Training reads a batch of squares and augments it at once (the paper's recipe).
    assert isinstance(data.train, cache.CachedBatches)
    index = torch.tensor([3, 0, 2])
    images, sup, sub = data.train.batch(index, torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 96, 96) and abs(images.mean() - crops.mean()) < 0.2
    # read straight from the memory map: the same as augmenting a copy of those squares
    squares = np.asarray(data.train.pixels[data.train.rows[index.numpy()]])
    want = data.train.transform.batch(torch.from_numpy(squares), torch.Generator().manual_seed(0))
    assert torch.equal(images, want)
    assert sub.tolist() == [data.train[i][2] for i in (3, 0, 2)]
    assert data.record["image_cache"].endswith("training augmentation on the batch")


def test_second_run_reads_only_the_cache_and_trains_the_same(tmp_path, store):
    """Two runs on one folder: the first decodes each file once into the cache, the second
    reads no image file (they are scrambled between the runs) and, reading the same
    pixels, trains to the same numbers. A corrupt file is skipped in both."""
    from clusterprobe.runners import pipeline

    noise_tree(tmp_path / "data", n=6)
    cut = tmp_path / "data" / "plant" / "plant-b" / "3.jpg"
    truncate_jpeg(cut)
    config = RunConfig(
        **{**ONE_EPOCH_RUN, "image_size": 72, "train_per_subclass": None},
        dataset="folder",
        data_dir=str(tmp_path / "data"),
        image_cache=str(tmp_path / "cache"),
        skip_corrupt=True,
    )
    first = pipeline.run(config, store, quiet=True)
    scramble_keeping_size_and_mtime((tmp_path / "data").rglob("*.jpg"))
    with pytest.raises(UsageError, match="does not decode"):
        check_dataset(load_dataset(config.replace(image_cache="none")))  # truly scrambled
    second = pipeline.run(config, store, quiet=True)
    assert second.train_run_id != first.train_run_id
    assert second.evaluations[1] == first.evaluations[1]
    tracker = Tracker(store)
    for result in (first, second):
        record = dataset_record(tracker, result.eval_run_ids[-1])
        assert record["options"]["skipped_corrupt"] == [str(cut)]
        assert record["options"]["image_cache"] == (
            "centre 82 px squares (bilinear); training augmentation on the batch"
        )
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # train and eval, built once


def test_cache_off_decodes(tmp_path):
    noise_tree(tmp_path / "data", n=3)
    config = RunConfig(dataset="folder", data_dir=str(tmp_path / "data"), image_cache="none")
    from clusterprobe.runners.data.images import ImageFiles
    from clusterprobe.runners.pipeline import prepare

    _, data = prepare(config)
    assert isinstance(data.eval, ImageFiles) and "image_cache" not in data.record
