"""Supervised training: a loss, an optimiser, warm-up then cosine, seeded.

The paper's recipe (arXiv 2311.07864) scaled down: learning rate given per 256
images and scaled linearly with the batch, linear warm-up then cosine decay
updated every step, weight decay on weights but not on biases/norm parameters.
The loss comes from ``losses``, the optimiser and the values left unset from the
family's recipe (``recipes``), the weights' EMA from ``ema``.
Splits that batch themselves (``.batch``: images held in memory, ``InMemoryImages``;
squares from the decoded-image cache, ``cache.CachedBatches``) are read and augmented
a batch at a time, far faster on a small CPU than a DataLoader of single images.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from clusterprobe.runners.data.base import HierarchicalData
from clusterprobe.runners.resume import TrainState, capture, isolated_rng
from clusterprobe.tracker.killpoint import kill_point
from tqdm.auto import tqdm


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; call before building the model for a repeatable init."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from peak/warmup to peak over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(
    dataset,
    batch_size: int,
    generator: torch.Generator,
    workers: int,
    views: int = 1,
    device: torch.device | None = None,
):
    """Yield (images, superclass, subclass) for one epoch in a seeded random order; with
    ``views`` > 1 the images hold that many augmented views of the batch, concatenated.
    A split that batches itself (``.batch``) may augment on ``device``."""
    if hasattr(dataset, "batch"):
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            first = dataset.batch(index, generator, device)
            more = [dataset.batch(index, generator, device)[0] for _ in range(views - 1)]
            yield (torch.cat([first[0], *more]), *first[1:]) if more else first
        return
    loader = torch.utils.data.DataLoader(
        _Views(dataset, views) if views > 1 else dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=workers,
    )
    for images, *labels in loader:
        # [B, V, ...] -> the V views one after another: [V * B, ...]
        yield (images.transpose(0, 1).flatten(0, 1) if views > 1 else images, *labels)


class _Views(torch.utils.data.Dataset):
    """``views`` independently augmented copies of each item, stacked: [V, C, H, W]."""

    def __init__(self, dataset, views: int):
        self.dataset, self.views = dataset, views

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        items = [self.dataset[i] for _ in range(self.views)]
        return (torch.stack([it[0] for it in items]), *items[0][1:])


@dataclass(frozen=True)
class _Schedule:
    """Warm-up then cosine over the whole run, per optimiser step."""

    total: int  # optimiser steps in the run
    warmup: int
    peak: float  # the learning rate at the batch size used

    @classmethod
    def of(cls, config, n_train: int) -> _Schedule:
        steps_per_epoch = math.ceil(n_train / config.batch_size)
        total = steps_per_epoch * config.epochs
        warmup = min(total, max(1, round(config.warmup_epochs * steps_per_epoch)))
        return cls(total, warmup, config.lr * config.batch_size / 256)

    def lr(self, step: int) -> float:
        return lr_at(step, self.total, self.warmup, self.peak)


@dataclass
class _Loop:
    """The moving parts of one training loop; ``step`` counts optimiser steps taken."""

    model: torch.nn.Module
    objective: object  # losses.Objective
    optimizer: torch.optim.Optimizer
    schedule: _Schedule
    device: torch.device
    ema: object = None  # ema.Ema
    step: int = 0

    @classmethod
    def build(cls, model, config, device: torch.device, n_train: int, ema) -> _Loop:
        from clusterprobe.runners import losses, recipes

        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        schedule = _Schedule.of(config, n_train)
        objective = losses.make_objective(config, model)
        params = list(model.parameters())
        if objective.head is not None:  # SupCon's projection head trains alongside
            objective.head.to(device).train()
            params += list(objective.head.parameters())
        optimizer = recipes.make_optimizer(config, params, schedule.peak)
        return cls(model, objective, optimizer, schedule, device, ema)

    def saved_extras(self) -> dict:
        """What a training state holds beside the model and optimiser."""
        extras = {}
        if self.ema is not None:
            extras["ema"] = self.ema
        if self.objective.head is not None:
            extras["loss_head"] = self.objective.head
        return extras

    def run_epoch(self, epoch: int, batches, label_index: int, bar) -> dict:
        """One pass over ``batches``; the epoch's mean loss, accuracy and last rate."""
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        lr = self.schedule.peak
        for batch in batches:
            images, target = batch[0], torch.as_tensor(batch[label_index])
            if len(target) < 2:  # BatchNorm cannot train on a single image
                continue
            lr = self.schedule.lr(self.step)
            loss, logits, target = self._step(images, target, lr)
            loss_sum += loss.item() * len(target)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(target)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        stats = {
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "lr": lr,
        }
        if not math.isfinite(stats["train_loss"]):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (loss {stats['train_loss']}); lower --lr"
            )
        return stats

    def _step(self, images, target, lr: float):
        kill_point("train_step", at=self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        cuda = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, logits, target = self.objective(self.model, images, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss, logits, target


def train(
    model: torch.nn.Module,
    data: HierarchicalData,
    config,
    device: torch.device,
    *,
    on_epoch: Callable[[int, dict], None] | None = None,
    quiet: bool = False,
    ema=None,
    start: TrainState | None = None,
    on_save: Callable[[TrainState], None] | None = None,
    extras: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``config.labels`` of ``data.train``; return per-epoch stats.

    Each entry (and each ``on_epoch(epoch, stats)`` call, epoch 1-based) holds
    ``train_loss`` (mean of the loss), ``train_acc`` and ``lr`` (at the epoch's
    last step). ``ema`` (an ``ema.Ema`` of ``model``) is updated after every step.
    Optimiser values left None in ``config`` come from its recipe. The model is left in
    eval mode.

    Every ``config.save_every`` epochs ``on_save(TrainState)`` gets the state (before
    that epoch's ``on_epoch``, so a run killed in between logs no epoch twice);
    ``start``, a saved state, continues from it. ``extras`` (name -> object with
    ``state_dict``/``load_state_dict``) are saved and restored with it; the EMA and a
    loss's own head (SupCon's projection) are always among them.
    ``on_epoch`` runs with its own random streams, so what it draws never changes the
    training's.
    """
    from clusterprobe.runners import recipes
    from clusterprobe.runners.models import family_of

    config = recipes.resolve(config, family_of(model))
    device = torch.device(device)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loop = _Loop.build(model, config, device, len(data.train), ema)
    extras = {**(extras or {}), **loop.saved_extras()}
    label_index = 1 if config.labels == "superclass" else 2

    history: list[dict] = []
    first = 1
    if start is not None:
        start.restore(model, loop.optimizer, generator, extras)
        history, loop.step, first = [dict(h) for h in start.history], start.step, start.epoch + 1
    total = loop.schedule.total
    bar = tqdm(
        total=total, initial=loop.step, desc="train", unit="step", disable=quiet, leave=False
    )
    try:
        for epoch in range(first, config.epochs + 1):
            batches = _batches(
                data.train,
                config.batch_size,
                generator,
                config.workers,
                loop.objective.views,
                device,
            )
            stats = loop.run_epoch(epoch, batches, label_index, bar)
            history.append(stats)
            if on_save is not None and config.save_every and epoch % config.save_every == 0:
                state = capture(
                    model,
                    loop.optimizer,
                    generator,
                    epoch=epoch,
                    step=loop.step,
                    history=history,
                    extras=extras,
                )
                on_save(state)
            if on_epoch is not None:
                with isolated_rng():
                    on_epoch(epoch, stats)
    finally:
        bar.close()
        model.eval()
    return history
