"""Supervised training: cross-entropy, SGD with momentum, warm-up then cosine, seeded.

The paper's recipe (arXiv 2311.07864) scaled down: learning rate given per 256
images and scaled linearly with the batch, linear warm-up then cosine decay
updated every step, weight decay on weights but not on biases/norm parameters.
Splits that hold their images in memory (``InMemoryImages``) are batched by
indexing one tensor, far faster on a small CPU than a DataLoader.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from clusterprobe.runners.data.base import HierarchicalData
from clusterprobe.runners.resume import TrainState, capture, isolated_rng, kill_point
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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # biases and norm scales: no decay
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _batches(dataset, batch_size: int, generator: torch.Generator, workers: int):
    """Yield (images, superclass, subclass) for one epoch in a seeded random order."""
    if hasattr(dataset, "batch"):
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), batch_size):
            yield dataset.batch(order[start : start + batch_size], generator)
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers
    )
    yield from loader


def train(
    model: torch.nn.Module,
    data: HierarchicalData,
    config,
    device: torch.device,
    *,
    on_epoch: Callable[[int, dict], None] | None = None,
    quiet: bool = False,
    start: TrainState | None = None,
    on_save: Callable[[TrainState], None] | None = None,
    extras: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``config.labels`` of ``data.train``; return per-epoch stats.

    Each entry (and each ``on_epoch(epoch, stats)`` call, epoch 1-based) holds
    ``train_loss`` (mean cross-entropy), ``train_acc`` and ``lr`` (at the epoch's
    last step). The model is left in eval mode.

    Every ``config.save_every`` epochs ``on_save(TrainState)`` gets the state (before
    that epoch's ``on_epoch``, so a run killed in between logs no epoch twice);
    ``start``, a saved state, continues from it. ``extras`` (name -> object with
    ``state_dict``/``load_state_dict``, e.g. an EMA) are saved and restored with it.
    ``on_epoch`` runs with its own random streams, so what it draws never changes the
    training's.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)

    n = len(data.train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = min(total, max(1, round(config.warmup_epochs * steps_per_epoch)))
    peak = config.lr * config.batch_size / 256
    optimizer = torch.optim.SGD(
        _param_groups(model, config.weight_decay), lr=peak, momentum=config.momentum, nesterov=True
    )
    label_index = 1 if config.labels == "superclass" else 2

    history: list[dict] = []
    step, first = 0, 1
    if start is not None:
        start.restore(model, optimizer, generator, extras)
        history, step, first = [dict(h) for h in start.history], start.step, start.epoch + 1
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=quiet, leave=False)
    try:
        for epoch in range(first, config.epochs + 1):
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            lr = peak
            for batch in _batches(data.train, config.batch_size, generator, config.workers):
                images, target = batch[0], torch.as_tensor(batch[label_index])
                if len(target) < 2:  # BatchNorm cannot train on a single image
                    continue
                kill_point("train_step", step)
                lr = lr_at(step, total, warmup, peak)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    logits = model(images)
                    loss = F.cross_entropy(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(target)
                correct += int((logits.argmax(1) == target).sum())
                seen += len(target)
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}"
                )
            stats = {
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "lr": lr,
            }
            if not math.isfinite(stats["train_loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss {stats['train_loss']}); lower --lr"
                )
            history.append(stats)
            if on_save is not None and config.save_every and epoch % config.save_every == 0:
                on_save(
                    capture(
                        model,
                        optimizer,
                        generator,
                        epoch=epoch,
                        step=step,
                        history=history,
                        extras=extras,
                    )
                )
            if on_epoch is not None:
                with isolated_rng():
                    on_epoch(epoch, stats)
    finally:
        bar.close()
        model.eval()
    return history
