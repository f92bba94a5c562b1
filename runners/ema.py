"""Exponential moving average of a model's weights, debiased, for evaluation.

The paper (arXiv 2311.07864, authors' code) evaluates an EMA of the weights with
decay 0.99. As in Adam's moment estimates (and optax's ``ema(debias=True)``), the
average starts at zero and is divided by ``1 - decay^t`` after t updates, so early
averages are not pulled toward zero:

    s_t = decay * s_{t-1} + (1 - decay) * w_t,    ema_t = s_t / (1 - decay^t)

i.e. the weighted mean of w_1..w_t with weights proportional to decay^(t-i). Every
floating-point entry of the state dict is averaged, BatchNorm running statistics
included; integer buffers (``num_batches_tracked``) are taken from the model as is.
The raw model is left untouched (training and resuming continue from it);
``state_dict``/``load_state_dict`` let a checkpoint save and restore the average.
"""

from __future__ import annotations

import copy

import torch


class Ema:
    """The debiased EMA of ``model``'s floating-point state, updated by :meth:`update`."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay {decay}: must be in (0, 1)")
        self.decay = float(decay)
        self.steps = 0
        self.shadow = {
            name: torch.zeros_like(t, dtype=torch.float32)
            for name, t in model.state_dict().items()
            if t.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights and buffers into the average."""
        state = model.state_dict()
        names = list(self.shadow)
        # lerp(s, w, 1 - d) = d * s + (1 - d) * w, all tensors in one fused call
        torch._foreach_lerp_(
            [self.shadow[n] for n in names],
            [state[n].detach().float() for n in names],
            1.0 - self.decay,
        )
        self.steps += 1

    def averaged_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with every floating-point entry replaced by its debiased
        average (in the entry's own dtype); the raw state before any update."""
        state = model.state_dict()
        if self.steps == 0:
            return {k: v.clone() for k, v in state.items()}
        scale = 1.0 / (1.0 - self.decay**self.steps)
        return {
            k: (self.shadow[k] * scale).to(v.dtype) if k in self.shadow else v.clone()
            for k, v in state.items()
        }

    def averaged_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` (same mode and device) holding the averaged weights."""
        copied = copy.deepcopy(model)
        copied.load_state_dict(self.averaged_state(model))
        return copied

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's state dict keys")
        self.decay, self.steps = float(state["decay"]), int(state["steps"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def for_config(model: torch.nn.Module, config) -> Ema | None:
    """The EMA ``config.ema`` asks for (None when it is 0: off)."""
    return Ema(model, config.ema) if config.ema > 0 else None
