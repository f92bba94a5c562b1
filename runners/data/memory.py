"""An image split held in memory as one tensor, with batch-wise augmentation.

Small procedural datasets fit in RAM; indexing one tensor per batch is far
faster on a 2-core CPU than a DataLoader collating single images. ``train``
uses :meth:`InMemoryImages.batch` when a split offers it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.data


class InMemoryImages(torch.utils.data.Dataset):
    """``images`` float [N, 3, H, W] with both label levels: model input as they are, or
    through ``transform`` (a callable on [3, H, W] and [B, 3, H, W] tensors, e.g. timm's
    resize, crop and normalisation), applied per item or batch so that images resized
    for a model never sit in memory all at once.

    ``shift`` > 0 augments by a random translation of up to ``shift`` pixels
    (zero padding = the normalised mean). No flips: a mirror would turn one
    grating orientation into another, i.e. change the subclass. ``augment``, a callable
    on one [3, H, W] image, is applied to each image after that (``--augment paper`` or
    ``standard``), before ``transform``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        superclass: torch.Tensor,
        subclass: torch.Tensor,
        shift: int = 0,
        transform=None,
        augment=None,
    ):
        if not (len(images) == len(superclass) == len(subclass)):
            raise ValueError("images and labels must have the same length")
        self.images = images
        self.superclass = superclass
        self.subclass = subclass
        self.shift = shift
        self.transform = transform
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.shift:
            img = _translate(img[None], self.shift, None)[0]
        if self.augment is not None:
            img = self.augment(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.superclass[i]), int(self.subclass[i])

    def with_shift(self, shift: int) -> InMemoryImages:
        """The same tensors (shared, not copied) with another augmentation."""
        return InMemoryImages(
            self.images, self.superclass, self.subclass, shift, self.transform, self.augment
        )

    def with_augment(self, augment, transform=None) -> InMemoryImages:
        """The same tensors with a per-image ``augment`` (and ``transform``), no shift."""
        return InMemoryImages(self.images, self.superclass, self.subclass, 0, transform, augment)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None, device=None):
        """(images, superclass, subclass) for ``index``, augmented if ``shift``. On the CPU
        whatever ``device`` is: a per-image ``augment`` may go through PIL."""
        img = self.images[index]
        if self.shift:
            img = _translate(img, self.shift, generator)
        if self.augment is not None:
            img = torch.stack([self.augment(x) for x in img])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.superclass[index], self.subclass[index]


def _translate(img: torch.Tensor, shift: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random per-image translation by up to ``shift`` px: pad, then crop at an offset."""
    n, _, h, w = img.shape
    padded = F.pad(img, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(img)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out
