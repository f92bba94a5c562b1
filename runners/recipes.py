"""Optimisers and per-family training recipes: what a run trains with when the user
sets nothing.

A recipe gives, per optimiser, the learning rate (per 256 images, scaled linearly
with the batch), SGD momentum, weight decay and warm-up epochs; the arch's family
picks the optimiser and scales the rate. ``resolve`` fills only the fields the user
left ``None``, so the run's params record the values actually used.

- ``default``: the rates the README's findings were measured with (ResNet SGD 0.4),
  with the paper's ratios for the other families: VGG at a tenth of the ResNet rate,
  ViT with AdamW (lr 1e-3, weight decay 0.1) as in the authors' later ViT runs.
- ``paper``: the paper's absolute values (arXiv 2311.07864, authors' code): SGD
  momentum 0.9, lr 0.1 per 256 images (VGG 0.01), weight decay 1e-4, 5 warm-up epochs.

With SGD, the squared loss takes a tenth of the rate in either recipe (its gradients
are far larger than cross-entropy's with few classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from clusterprobe.runners.choices import OPTIMIZERS, RECIPES, check_choice


@dataclass(frozen=True)
class Recipe:
    lr: float  # per 256 images
    momentum: float | None  # SGD only (None: the optimiser has none)
    weight_decay: float
    warmup_epochs: int


# (recipe, optimiser) -> values for the ResNet family; other families via the tables below.
BASE: dict[tuple[str, str], Recipe] = {
    ("default", "sgd"): Recipe(lr=0.4, momentum=0.9, weight_decay=5e-4, warmup_epochs=1),
    ("default", "adamw"): Recipe(lr=1e-3, momentum=None, weight_decay=0.1, warmup_epochs=1),
    ("paper", "sgd"): Recipe(lr=0.1, momentum=0.9, weight_decay=1e-4, warmup_epochs=5),
    ("paper", "adamw"): Recipe(lr=1e-3, momentum=None, weight_decay=0.1, warmup_epochs=5),
}
FAMILY_OPTIMIZER = {"vit": "adamw"}  # every other family: sgd
FAMILY_SGD_LR_SCALE = {"vgg": 0.1}  # the paper trains VGG-16 at a tenth of the ResNet rate
# The squared loss's gradients are ~k M / C times cross-entropy's: on the built-in data
# (C = 8) SGD diverged at lr 0.4 and 0.1 and trained at 0.04 (README).
LOSS_SGD_LR_SCALE = {"squared": 0.1}
assert {r for r, _ in BASE} == set(RECIPES) and {o for _, o in BASE} == set(OPTIMIZERS)


def recipe_for(
    recipe: str, family: str, optimizer: str | None = None, loss: str = "ce"
) -> tuple[str, Recipe]:
    """(optimiser, values) of ``recipe`` for ``family`` and ``loss`` (``optimizer``: the
    user's choice, else the family's). ValueError for an unknown recipe or optimiser."""
    check_choice("recipe", recipe, RECIPES)
    optimizer = optimizer or FAMILY_OPTIMIZER.get(family, "sgd")
    check_choice("optimizer", optimizer, OPTIMIZERS)
    base = BASE[(recipe, optimizer)]
    scale = FAMILY_SGD_LR_SCALE.get(family, 1.0) * LOSS_SGD_LR_SCALE.get(loss, 1.0)
    if optimizer == "sgd" and scale != 1.0:
        base = Recipe(
            lr=round(base.lr * scale, 12),  # 0.04, not 0.04000000000000001
            momentum=base.momentum,
            weight_decay=base.weight_decay,
            warmup_epochs=base.warmup_epochs,
        )
    return optimizer, base


def resolve(config, family: str):
    """``config`` with optimizer, lr, momentum, weight_decay and warmup_epochs filled from
    its recipe where None. ValueError for a momentum given to an optimiser without one."""
    optimizer, values = recipe_for(config.recipe, family, config.optimizer, config.loss)
    if optimizer != "sgd" and config.momentum is not None:
        raise ValueError(
            f"momentum {config.momentum} applies to optimizer 'sgd', not {optimizer!r}; "
            "leave it unset"
        )
    filled = {
        "optimizer": optimizer,
        "lr": values.lr,
        "momentum": values.momentum,
        "weight_decay": values.weight_decay,
        "warmup_epochs": values.warmup_epochs,
    }
    changes = {k: v for k, v in filled.items() if getattr(config, k) is None}
    return config.replace(**changes) if changes else config


def param_groups(model_params, weight_decay: float) -> list[dict]:
    """Weight decay on weights, none on biases and norm scales (1-D parameters)."""
    decay, no_decay = [], []
    for p in model_params:
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(config, params, peak_lr: float) -> torch.optim.Optimizer:
    """The optimiser of a resolved ``config`` over ``params`` at ``peak_lr``."""
    groups = param_groups(params, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=peak_lr)
    return torch.optim.SGD(
        groups, lr=peak_lr, momentum=config.momentum, nesterov=config.momentum > 0
    )
