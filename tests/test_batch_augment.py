"""The paper's augmentation on a batch of stored squares: the same crops as torchvision's
``RandomResizedCrop`` (distribution) and PIL's resize (pixels), the same normalisation as
``ToTensor`` + ``Normalize``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clusterprobe.runners.data import batch_augment as ba
from clusterprobe.runners.data import transforms
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as tf


def photos(n: int, side: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 [n, side, side, 3]: smooth colour fields with noise, like resized photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    out = []
    for _ in range(n):
        f = rng.uniform(0.02, 0.2, 3)
        field = 127 + 100 * np.sin(f * xx[..., None] + f[::-1] * yy[..., None])
        out.append(np.clip(field + rng.normal(0, 10, field.shape), 0, 255))
    return np.stack(out).astype(np.uint8)


def test_resized_crops_are_pils_to_one_grey_level():
    squares = photos(5)
    boxes = torch.tensor([[0, 0, 96, 96], [10, 20, 40, 60], [50, 3, 23, 25], [2, 5, 90, 70]])
    boxes = torch.cat([boxes, torch.tensor([[30, 30, 9, 12]])])  # a strong zoom
    for size in (64, 120):
        got = ba.resized_crops(torch.from_numpy(squares), boxes, size)
        assert got.dtype == torch.uint8 and got.shape == (5, 3, size, size)
        for b, (top, left, h, w) in enumerate(boxes.tolist()):
            pil = tf.resized_crop(Image.fromarray(squares[b]), top, left, h, w, [size, size])
            diff = (got[b].int() - tf.pil_to_tensor(pil).int()).abs()
            assert diff.max() <= 1 and diff.float().mean() < 0.3, (size, b)


def test_float_pixels_resize_as_uint8_ones_do():
    """An accelerator gets float pixels (the uint8 kernel is the CPU's): same crops,
    unrounded."""
    squares = torch.from_numpy(photos(3))
    boxes = torch.tensor([[0, 0, 96, 96], [10, 20, 40, 60], [50, 3, 23, 25]])
    as_uint8 = ba.resized_crops(squares, boxes, 80).float()
    as_float = ba.resized_crops(squares.float(), boxes, 80)
    assert as_float.dtype == torch.float32
    diff = (as_float - as_uint8).abs()
    assert (
        diff.max() < 1.01 and diff.mean() < 0.4
    )  # rounding, and the uint8 kernel's fixed-point weights


def test_boxes_follow_random_resized_crops_distribution():
    n = 40_000
    ours = ba.sample_boxes(n, 120, 90, (0.05, 1.0), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            T.RandomResizedCrop.get_params(torch.zeros(3, 120, 90), [0.05, 1.0], [3 / 4, 4 / 3])
            for _ in range(n)
        ]
    )
    for boxes in (ours, ref):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= 120).all() and (left + w <= 90).all() and (h > 0).all()
    for stat in (
        lambda b: (b[:, 2] * b[:, 3]).float() / (120 * 90),  # area fraction
        lambda b: (b[:, 3].float() / b[:, 2]).log(),  # log aspect
        lambda b: b[:, 0].float() + b[:, 2] / 2,  # centre row
        lambda b: b[:, 1].float() + b[:, 3] / 2,  # centre column
    ):
        a, r = stat(ours), stat(ref)
        standard_error = (a.var() / n + r.var() / n).sqrt()
        assert (a.mean() - r.mean()).abs() < 4 * standard_error
        assert (a.std() - r.std()).abs() < 0.03 * r.std()


def test_padded_crops_are_shifts_of_the_padded_image():
    squares = torch.from_numpy(photos(12, side=32))
    got = ba.padded_crops(squares, 32, 4, torch.Generator().manual_seed(1))
    shifts = set()
    for b in range(12):
        padded = tf.pil_to_tensor(tf.pad(Image.fromarray(squares[b].numpy()), 4))
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(got[b], padded[:, dy : dy + 32, dx : dx + 32])
        ]
        assert len(found) == 1, b
        shifts.add(found[0])
    assert len(shifts) > 4  # drawn per image
    resized = ba.padded_crops(squares, 16, 2, torch.Generator().manual_seed(1))
    assert resized.shape == (12, 3, 16, 16)


def test_flip_half_mirrors_about_half_in_place():
    x = torch.from_numpy(photos(64, side=16)).permute(0, 3, 1, 2).contiguous()
    before = x.clone()
    out = ba.flip_half(x, torch.Generator().manual_seed(0))
    assert out is x
    mirrored = [torch.equal(out[b], before[b].flip(-1)) for b in range(64)]
    kept = [torch.equal(out[b], before[b]) for b in range(64)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 20 <= sum(mirrored) <= 44


def test_normalise_is_to_tensor_then_normalize():
    squares = photos(4, side=24)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.from_numpy(squares).permute(0, 3, 1, 2)
    got = ba.normalise(x, mean, std)
    ref = torch.stack([T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(s))) for s in squares])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    floats = x.float()
    ba.normalise(floats, mean, std)
    assert torch.equal(floats, x.float())  # the caller's tensor is left alone


def test_normalised_crops_are_torchvisions_crop_flip_and_normalize():
    squares = torch.from_numpy(photos(8))
    boxes = ba.sample_boxes(8, 96, 96, (0.08, 1.0), generator=torch.Generator().manual_seed(3))
    flips = torch.tensor([True, False] * 4)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = ba.normalised_crops(squares, boxes, flips, 40, mean, std)
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        crop = squares[b, top : top + h, left : left + w].permute(2, 0, 1).contiguous()
        crop = F.interpolate(crop[None], size=(40, 40), mode="bilinear", antialias=True)[0]
        crop = tf.hflip(crop) if flips[b] else crop
        want = tf.normalize(tf.convert_image_dtype(crop, torch.float32), mean, std)
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=0)
    assert not torch.equal(got[0], got[0].flip(-1))  # a mirror is visible in these images


@pytest.mark.parametrize("size, pad", [(80, 0), (32, 4)])
def test_paper_augment_batches_as_it_augments_one_image(size, pad):
    augment = transforms.train_transform(size)
    assert isinstance(augment, transforms.PaperAugment) and augment.pad == pad
    squares = photos(16, side=96 if not pad else 32)
    batch = augment.batch(torch.from_numpy(squares), torch.Generator().manual_seed(0))
    single = torch.stack([augment(Image.fromarray(s)) for s in squares])
    assert batch.shape == single.shape == (16, 3, size, size) and batch.dtype == torch.float32
    # The same recipe, random draws apart: the same range and mean of pixel values.
    assert abs(batch.mean() - single.mean()) < 0.1
    assert abs(batch.min() - single.min()) < 0.2 and abs(batch.max() - single.max()) < 0.2
    again = augment.batch(torch.from_numpy(squares), torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)  # drawn from the generator alone
    # rows: the batch read straight from the stored squares, as from a gathered copy
    rows = torch.tensor([9, 2, 2, 14, 0, 7])
    direct = augment.batch(torch.from_numpy(squares), torch.Generator().manual_seed(1), rows)
    copied = augment.batch(torch.from_numpy(squares[rows]), torch.Generator().manual_seed(1))
    assert direct.shape == (6, 3, size, size) and torch.equal(direct, copied)


def test_timms_augmentation_has_no_batch_form():
    assert not hasattr(transforms.train_transform(224, augment="standard"), "batch")
    assert not hasattr(transforms.train_transform(224, augment="none"), "batch")
    assert hasattr(transforms.train_transform(224, augment="paper"), "batch")
