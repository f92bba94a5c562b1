"""The decoded-image cache: one decode per file, then memory-mapped pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clusterprobe.runners.data import cache
from PIL import Image
from torchvision import transforms


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


def test_second_run_decodes_nothing_and_pixels_are_the_eval_transform(image_folder, tmp_path):
    paths, labels = image_folder
    root = tmp_path / "cache"
    pixels, bad = cache.open_or_build(paths, labels, "train", 24, root=root)
    assert [b.path for b in bad] == [paths[-1]] and "Error" in bad[0].reason
    want = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24)])
    for i, p in enumerate(paths[:-1]):
        with Image.open(p) as im:
            im.draft("RGB", (24, 24))
            np.testing.assert_array_equal(pixels[i], np.asarray(want(im.convert("RGB"))))
    assert not pixels[-1].any()  # the corrupt file's row stays black
    first = np.array(pixels)
    for p in paths:  # a second run must not read any image file: remove them all
        open(p, "wb").close()
    again, bad = cache.open_or_build(paths, labels, "train", 24, root=root)
    assert bad == [] and isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, first)
    assert [f.name for f in root.iterdir()] == [
        cache.cache_file(root, cache.dataset_digest(paths, labels), "train", 24).name
    ]
    ds = cache.CachedImages(again, [0] * 6, labels)
    image, sup, sub = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24) and (sup, sub) == (0, 1)


def test_size_cap_is_one_clear_error_and_writes_nothing(image_folder, tmp_path):
    paths, labels = image_folder
    with pytest.raises(ValueError, match=r"6 images at 224 px exceeds the cap of"):
        cache.open_or_build(paths, labels, "train", 224, root=tmp_path / "c", cap=1000)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_augment_batch_is_seeded_and_in_range():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a = cache.augment_batch(images, 16, torch.Generator().manual_seed(0))
    b = cache.augment_batch(images, 16, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    flat = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)  # a flat image stays flat
    out = cache.augment_batch(flat, 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))
    # the whole image, no flip: a plain bilinear resize of it
    whole = cache.augment_batch(
        images, 32, torch.Generator(), scale=(1, 1), ratio=(1, 1), flip=False
    )
    torch.testing.assert_close(whole, images.float() / 255, atol=1e-5, rtol=0)


def test_augment_batch_flips_are_mirrors():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = cache.augment_batch(
        images, 8, torch.Generator().manual_seed(2), scale=(1, 1), ratio=(1, 1)
    )
    x = images.float() / 255
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 16
