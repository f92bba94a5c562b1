"""The paper's training augmentation on a batch of stored uint8 squares at once.

Per image, torchvision's ``RandomResizedCrop`` + flip on a PIL image, then ``ToTensor``
and ``Normalize``, costs ~0.45 ms at 224 px on one core: the ceiling of any loader that
calls it per item (~2,200 images/s). Here the crop boxes and flips of a whole batch are
drawn in one go, each crop is resized by torch's uint8 bilinear kernel with antialias
(the kernel torchvision built to match PIL's resize; ~9,000 crops/s on one core at
224 px), then mirrored and normalised while it is still in the CPU's cache, on whatever
device the pixels are on. Used by the decoded-image cache (``cache.CachedBatches``).

The crops follow ``RandomResizedCrop``'s distribution (area fraction uniform in
``scale``, log aspect ratio uniform in ``ratio``, up to 10 tries, else the whole
square) drawn from the caller's generator; the pixels of a given box are PIL's to within
one grey level.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
TRIES = 10  # RandomResizedCrop's tries before it falls back to the whole image


def sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """int64 [n, 4] crop boxes (top, left, h, w) of an ``height x width`` image, drawn as
    ``RandomResizedCrop.get_params`` draws one."""
    area = height * width * torch.empty(n, TRIES).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, TRIES).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1)  # the first try that fits (0 when none does)
    h = torch.where(fits.any(1), h.gather(1, first[:, None])[:, 0], height)
    w = torch.where(fits.any(1), w.gather(1, first[:, None])[:, 0], width)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).long()
    return torch.stack([top, left, h, w], 1)


def sample_flips(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [n]: which images ``RandomHorizontalFlip`` mirrors (each with probability 1/2)."""
    return torch.rand(n, generator=generator) < 0.5


def _crops(pixels: torch.Tensor, boxes: torch.Tensor, size: int, rows=None):
    """Box b of image ``rows[b]`` of ``pixels`` [N, H, W, 3] (of image b without ``rows``)
    resized to ``size x size`` (bilinear, antialiased: torchvision's ``resized_crop`` of a
    tensor), one [1, 3, size, size] at a time."""
    x = pixels.permute(0, 3, 1, 2)  # a channels-last view: the uint8 kernel's fast layout
    rows = range(len(boxes)) if rows is None else rows.tolist()
    for i, (top, left, h, w) in zip(rows, boxes.tolist(), strict=True):
        yield F.interpolate(
            x[i : i + 1, :, top : top + h, left : left + w],
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )


def resized_crops(pixels: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``pixels`` [B, H, W, 3] (uint8, or float on an accelerator) -> each box resized to
    ``size x size``, [B, 3, size, size] of the same dtype."""
    out = torch.empty((len(pixels), 3, size, size), dtype=pixels.dtype, device=pixels.device)
    for b, crop in enumerate(_crops(pixels, boxes, size)):
        out[b] = crop[0]
    return out


def normalised_crops(
    pixels: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    mean,
    std,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``pixels`` [N, H, W, 3] -> box b of image ``rows[b]`` (of image b without ``rows``)
    resized to ``size x size``, mirrored where ``flips``, and normalised as
    :func:`normalise` does: float32 [B, 3, size, size].

    One image at a time, while its crop is still in the CPU's cache: resizing the whole
    batch, then mirroring it, then normalising it costs twice as long at 224 px, each pass
    reading and writing the whole batch from memory again. With ``rows`` the crops are
    read straight from ``pixels`` (a memory-mapped file's), not from a gathered copy."""
    scale, shift = _affine(mean, std, pixels.device)
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.float32, device=pixels.device)
    crops = _crops(pixels, boxes, size, rows)
    for b, (crop, flip) in enumerate(zip(crops, flips.tolist(), strict=True)):
        # a copy, then multiply and add in place: 0.8x the time of one addcmul from the
        # uint8 crop, whose [3, 1, 1] operands take a slow broadcasting path (measured)
        image = out[b]
        image.copy_(crop[0].flip(-1) if flip else crop[0])
        image.mul_(scale).add_(shift)
    return out


def padded_crops(
    pixels: torch.Tensor, size: int, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``pixels`` [B, H, W, 3] -> resized to ``size`` (when not already), padded by ``pad``
    zero pixels and cropped back to ``size`` at a random offset each (``RandomCrop(size,
    padding=pad)``), [B, 3, size, size]."""
    x = pixels.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator)
    out = torch.empty((len(x), 3, size, size), dtype=x.dtype, device=x.device)
    for b, (dy, dx) in enumerate(offsets.tolist()):
        out[b] = padded[b, :, dy : dy + size, dx : dx + size]
    return out


def flip_half(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of ``x`` [B, C, H, W] mirrored left-right with probability 1/2, in place."""
    flip = sample_flips(len(x), generator).nonzero()[:, 0].to(x.device)
    x[flip] = x[flip].flip(-1)
    return x


def _affine(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, 1, 1] scale and shift with ``x * scale + shift = (x / 255 - mean) / std``."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
    return scale[:, None, None], shift[:, None, None]


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8-valued ``x`` -> float32 ``(x / 255 - mean) / std`` per channel (``ToTensor``
    then ``Normalize``)."""
    scale, shift = _affine(mean, std, x.device)
    x = x.to(torch.float32, copy=True)  # never the caller's tensor
    return x.mul_(scale).add_(shift)  # in place: half the memory traffic
