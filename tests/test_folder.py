"""Folder hierarchies, transfer folders, the paper's transforms and the loader helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import transforms
from clusterprobe.runners.data.groups import shuffle_groups
from clusterprobe.runners.data.loading import make_loader
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.runners.data.transfer import load_transfer
from clusterprobe.tracker.errors import UsageError
from PIL import Image


def write_images(folder: Path, n: int, value: int, ext: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20 + i, 16), (value, i, 0)).save(folder / f"img{i}{ext}")


TREE = {"animal": ["cat", "dog", "eel"], "plant": ["fern", "oak", "rose"], "rock": ["a", "b", "c"]}


def make_tree(root: Path, n: int = 5) -> dict[str, int]:
    """root/<super>/<sub>/img*.png; the red value of every image names its subclass."""
    value = {}
    for s, subs in TREE.items():
        for c in subs:
            value[f"{s}/{c}"] = 10 * len(value) + 10
            write_images(root / s / c, n, value[f"{s}/{c}"], ".JPG" if c == "dog" else ".png")
    return value


def red(ds, i) -> int:
    with Image.open(ds.paths[i]) as im:
        return im.convert("RGB").getpixel((0, 0))[0]


def test_folder_without_split_roots_holds_out_per_subclass(tmp_path):
    value = make_tree(tmp_path)
    (tmp_path / "animal" / "cat" / "notes.txt").write_text("ignored")
    config = RunConfig(dataset="folder", data_dir=str(tmp_path), image_size=24)
    data = load_dataset(config)
    assert data.superclass_names == sorted(TREE)
    assert data.subclass_names == [f"{s}/{c}" for s in sorted(TREE) for c in TREE[s]]
    assert data.groups() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(data.eval) == 9 and len(data.train) == 9 * 4  # 20% of 5 = 1 held out each
    for ds in (data.train, data.eval):
        for i in range(len(ds)):
            # (JPEG is lossy: values are 10 apart, allow a few levels)
            assert abs(red(ds, i) - value[data.subclass_names[ds.subclass[i]]]) <= 3
    assert not set(data.train.paths) & set(data.eval.paths)
    image, sup, sub = data.train[0]
    assert image.shape == (3, 24, 24) and sup == 0 and sub == 0
    again = load_dataset(config)
    assert again.eval.paths == data.eval.paths  # seeded split
    other = load_dataset(config.replace(data_seed=1))
    assert other.eval.paths != data.eval.paths

    shuffled = load_dataset(config.replace(shuffled=True, eval_per_subclass=2))
    assert [[shuffled.subclass_names[k] for k in g] for g in shuffled.groups()] == shuffle_groups(
        [[f"{s}/{c}" for c in TREE[s]] for s in sorted(TREE)]
    )
    assert len(shuffled.eval) == 18


def test_folder_with_train_and_val_roots(tmp_path):
    make_tree(tmp_path / "train", n=4)
    make_tree(tmp_path / "val", n=2)
    data = load_dataset(
        RunConfig(dataset="folder", data_dir=str(tmp_path), classes=2, subclasses=2)
    )
    assert data.record["split_roots"] is True
    assert len(data.train) == 2 * 2 * 4 and len(data.eval) == 2 * 2 * 2
    assert all("/val/" in p for p in data.eval.paths)
    assert all("/train/" in p for p in data.train.paths)
    rng = np.random.RandomState(2)
    picked = rng.choice(3, 2, replace=False)
    assert data.superclass_names == [sorted(TREE)[i] for i in picked]

    import shutil

    shutil.rmtree(tmp_path / "val" / "rock" / "b")
    with pytest.raises(UsageError, match="val lacks rock/b/"):
        load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path)))


def test_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="needs --data-dir DIR"):
        load_dataset(RunConfig(dataset="folder"))
    with pytest.raises(UsageError, match="no such folder"):
        load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path / "nope")))
    write_images(tmp_path / "one" / "only" / "sub", 3, 0)
    with pytest.raises(UsageError, match="need at least 2"):
        load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path / "one")))
    write_images(tmp_path / "uneven" / "a" / "x", 3, 0)
    write_images(tmp_path / "uneven" / "a" / "y", 3, 0)
    write_images(tmp_path / "uneven" / "b" / "x", 3, 0)
    with pytest.raises(UsageError, match="--shuffle needs superclasses with equal"):
        load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path / "uneven"), shuffled=True))


def test_transfer_folder(tmp_path):
    for k, name in enumerate(["daisy", "rose", "tulip"]):
        write_images(tmp_path / "flowers" / name, 3 + k, 50 * k)
    t = load_transfer(str(tmp_path / "flowers"), image_size=32, per_class=3)
    assert t.class_names == ["daisy", "rose", "tulip"] and t.num_classes == 3
    assert t.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    image, y, y2 = t.images[4]
    assert image.shape == (3, 32, 32) and y == y2 == 1
    with pytest.raises(UsageError, match="neither a folder nor a torchvision dataset"):
        load_transfer("no_such_set_xyz")
    with pytest.raises(UsageError, match="needs --data-dir"):
        load_transfer("flowers102")


def test_transforms_follow_the_paper_and_timm():
    big = Image.new("RGB", (300, 200), (255, 0, 0))
    assert transforms.eval_transform(224)(big).shape == (3, 224, 224)
    assert transforms.train_transform(224)(big).shape == (3, 224, 224)
    assert transforms.eval_transform(224).transforms[0].size == 256  # resize 256, crop 224
    rrc = transforms.train_transform(224).transforms[0]
    assert rrc.scale == (0.05, 1.0)
    small = transforms.train_transform(32)
    assert small.transforms[1].padding == 4 and small(big).shape == (3, 32, 32)
    assert transforms.normalisation("vit_base_patch16_224") == ((0.5,) * 3, (0.5,) * 3)
    assert transforms.normalisation("resnet50") == (
        transforms.IMAGENET_MEAN,
        transforms.IMAGENET_STD,
    )
    assert transforms.normalisation("not_a_model") == (
        transforms.IMAGENET_MEAN,
        transforms.IMAGENET_STD,
    )
    x = transforms.eval_transform(32)(big)
    expected = (1.0 - 0.485) / 0.229
    assert torch.allclose(x[0], torch.full_like(x[0], expected), atol=1e-5)


def test_draft_decoding_keeps_shape_and_content(tmp_path):
    from clusterprobe.runners.data.images import ImageFiles

    assert transforms.decode_size(32, train=True) == 32
    assert transforms.decode_size(224, train=True) is None  # random-resized crop: full size
    assert transforms.decode_size(224, train=False) == 256
    yy, xx = np.mgrid[0:480, 0:640]
    pixels = np.stack([xx * 255 // 640, yy * 255 // 480, np.full_like(xx, 90)], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    labels = np.zeros(1, dtype=np.int64)
    tf = transforms.eval_transform(32)
    full = ImageFiles([str(tmp_path / "big.jpg")], labels, labels, tf)[0][0]
    draft = ImageFiles([str(tmp_path / "big.jpg")], labels, labels, tf, draft=32)[0][0]
    assert draft.shape == full.shape == (3, 32, 32)
    assert (draft - full).abs().mean() < 0.05  # normalised units: visually identical


def test_loader_with_workers_yields_every_image_once(tmp_path):
    make_tree(tmp_path, n=3)
    data = load_dataset(RunConfig(dataset="folder", data_dir=str(tmp_path), image_size=16))
    loader = make_loader(data.train_plain, batch_size=4, workers=1, seed=0)
    assert loader.persistent_workers and loader.prefetch_factor == 4 and not loader.pin_memory
    subs = torch.cat([sub for _, _, sub in loader]).tolist()
    assert sorted(subs) == sorted(data.train_plain.subclass.tolist())
