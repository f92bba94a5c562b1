"""Training losses: what a training step minimises, as one callable per ``--loss``.

- ``ce``: cross-entropy, with optional label smoothing (Szegedy et al., 2016), as
  ``torch.nn.functional.cross_entropy(label_smoothing=...)``.
- ``squared``: the rescaled squared loss of Hui & Belkin (ICLR 2021, "Evaluation of
  neural architectures trained with square loss vs cross-entropy"), as the paper's
  authors use it: ``1/C [k (f_y - M)^2 + sum_{j != y} f_j^2]``, averaged over the batch,
  with k = 9 and M = 60 by default.
- ``supcon``: supervised contrastive learning (Khosla et al., NeurIPS 2020, the
  L_out form of their eq. 2) on two augmented views of every image, through a
  projection head (a 2-layer MLP to 128 dimensions, discarded after training); the
  model's own classifier is trained alongside by cross-entropy on the *detached*
  features, so it reads the representation without shaping it, and gives the
  accuracy.

``make_objective(config, model)`` returns an :class:`Objective`: call it with
(model, images, target) for (loss, logits, target of the logits); ``views`` says how
many augmented views of each image it expects, concatenated along the batch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from clusterprobe.runners.choices import LOSSES, check_choice

SUPCON_DIM = 128  # Khosla et al.'s projection size


def squared_loss(logits: torch.Tensor, target: torch.Tensor, k: float, m: float) -> torch.Tensor:
    """Hui & Belkin's rescaled squared loss: mean over classes of ``w_j (f_j - M t_j)^2``
    (``t`` one-hot, ``w`` = k on the true class, 1 elsewhere), mean over the batch."""
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    weight = 1.0 + (k - 1.0) * onehot
    return (weight * (logits - m * onehot).square()).mean()


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., eq. 2, L_out) of unit vectors ``z``
    [N, d] with ``labels`` [N]: for each anchor i, minus the mean over its positives p
    (same label, p != i) of ``log(exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T))``;
    averaged over the anchors that have a positive."""
    n = z.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # the anchor is not its own contrast
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positive.sum(1)
    has = count > 0
    # where() before the sum: -inf on the diagonal times 0 would be nan
    summed = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(summed[has] / count[has]).mean()


class Objective:
    """A loss over a model's outputs; ``views`` augmented views of each image per step."""

    views = 1
    head: torch.nn.Module | None = None  # extra trained module (optimised, not saved)

    def __call__(self, model, images, target):
        raise NotImplementedError


class Supervised(Objective):
    """A loss of the model's logits and the labels (cross-entropy, squared)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, model, images, target):
        logits = model(images)
        return self.fn(logits.float(), target), logits, target


class ProjectionHead(torch.nn.Sequential):
    """SupCon's projection: Linear(width, width), ReLU, Linear(width, SUPCON_DIM)."""

    def __init__(self, width: int):
        super().__init__(
            torch.nn.Linear(width, width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(width, SUPCON_DIM),
        )


class SupCon(Objective):
    """SupCon on the classifier's input features plus cross-entropy of the classifier
    on the same features detached (see the module docstring)."""

    views = 2

    def __init__(self, model: torch.nn.Module, temperature: float):
        classifier = model.get_classifier()
        if not isinstance(classifier, torch.nn.Linear):
            raise ValueError(
                f"loss 'supcon' needs a model whose classifier is a Linear layer; "
                f"{type(model).__name__}'s is {type(classifier).__name__}"
            )
        self.classifier = classifier
        self.temperature = temperature
        self.head = ProjectionHead(classifier.in_features)

    def __call__(self, model, images, target):
        target = torch.cat([target, target])  # the views are concatenated along the batch
        with _detached_input(self.classifier) as features:
            logits = model(images)
        z = F.normalize(self.head(features[0].float()), dim=1)
        loss = supcon_loss(z, target, self.temperature) + F.cross_entropy(logits.float(), target)
        return loss, logits, target


@contextlib.contextmanager
def _detached_input(module: torch.nn.Module):
    """While open, ``module`` sees its input detached; the original input is appended
    to the yielded list (so the representation gets gradients only through it)."""
    caught: list[torch.Tensor] = []

    def hook(_module, args):
        caught.append(args[0])
        return (args[0].detach(), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield caught
    finally:
        handle.remove()


def make_objective(config, model: torch.nn.Module) -> Objective:
    """The :class:`Objective` of ``config.loss`` for ``model`` (ValueError if unknown)."""
    check_choice("loss", config.loss, LOSSES)
    if config.loss == "ce":
        smoothing = config.label_smoothing
        return Supervised(lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing))
    if config.loss == "squared":
        k, m = config.squared_k, config.squared_m
        return Supervised(lambda logits, y: squared_loss(logits, y, k, m))
    return SupCon(model, config.supcon_temperature)
