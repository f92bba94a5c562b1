"""Training state: what ``--save-every N`` stores and ``run --resume`` continues from.

One file (``tracker.conventions``: ``training_state/state.pt``), replaced at each save:
the model's and the optimiser's state_dicts, the step (the learning-rate schedule is a
pure function of it, ``train.lr_at``), the per-epoch history, every random state
training draws from (python, numpy, torch CPU and CUDA, the batch-order generator)
and the state_dicts of optional extras such as an EMA of the weights, by name.
Written with ``torch.save`` from tensors, numbers and strings only, so it loads with
``weights_only=True`` (no pickled code runs when a stored state is read).
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

_STATE_PATH = f"{cv.ART_TRAINING_STATE_DIR}/{cv.TRAINING_STATE_FILE}"


@dataclass
class TrainState:
    """Everything a training loop needs to continue after epoch ``epoch``."""

    epoch: int  # epochs completed
    step: int  # optimiser steps taken
    model: dict
    optimizer: dict
    rng: dict
    history: list[dict] = field(default_factory=list)  # per-epoch stats, epochs 1..epoch
    extras: dict[str, dict] = field(default_factory=dict)  # name -> state_dict (EMA, ...)

    def restore(self, model, optimizer, generator: torch.Generator, extras=None) -> None:
        """Load the weights, optimiser, extras and random states saved here (in place)."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        for name, obj in (extras or {}).items():
            if name in self.extras:
                obj.load_state_dict(self.extras[name])
        set_rng_state(self.rng, generator)


def capture(model, optimizer, generator, *, epoch, step, history, extras=None) -> TrainState:
    """The training state now (CPU copies, so saving never holds device memory)."""
    return TrainState(
        epoch=epoch,
        step=step,
        model=_to_cpu(model.state_dict()),
        optimizer=_to_cpu(optimizer.state_dict()),
        rng=rng_state(generator),
        history=[dict(h) for h in history],
        extras={name: _to_cpu(obj.state_dict()) for name, obj in (extras or {}).items()},
    )


def rng_state(generator: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": (version, internal, gauss_next),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng():
    """Run a callback (logging, intermediate evals) without touching the training's
    random streams, so that a resumed run draws exactly what an uninterrupted one does."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def save(state: TrainState, path) -> Path:
    path = Path(path)
    torch.save(state.__dict__, path)
    return path


def load(path) -> TrainState:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return TrainState(**raw)
    except Exception as err:
        raise UsageError(
            f"training state {str(path)!r} does not load ({type(err).__name__}: {err})"
        ) from None


# --- the store side ------------------------------------------------------------------------


def log_state(ctx, state: TrainState) -> None:
    """Store ``state`` on the open train run ``ctx``, replacing the previous one."""
    with tempfile.TemporaryDirectory(prefix="clusterprobe-state-") as tmp:
        path = save(state, Path(tmp) / cv.TRAINING_STATE_FILE)
        ctx.log_artifact(str(path), cv.ART_TRAINING_STATE_DIR)


def has_state(tracker, run_id: str) -> bool:
    """Whether a train run stored a training state (without loading it)."""
    try:
        tracker.artifact_path(run_id, _STATE_PATH)
    except FileNotFoundError:
        return False
    return True


def stored_state(tracker, run_id: str) -> TrainState:
    """The latest training state a train run stored; UsageError when it has none."""
    where = _STATE_PATH
    try:
        path = tracker.artifact_path(run_id, where)
    except FileNotFoundError:
        raise UsageError(
            f"train run {run_id} saved no training state ({where}); only runs started with "
            "--save-every N can be resumed"
        ) from None
    return load(path)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
