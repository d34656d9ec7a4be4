"""Weight averaging (`train.ema`): an exponential moving average of the model's weights.

Averaged weights sit in a wider, flatter part of the loss surface than the last step's, which is
what a run that sees its data many times needs (the loss of the raw weights rises late while the
average's keeps falling). The average is kept in float32 whatever the training precision, updated
after every optimizer step, and is what the run evaluates and what best.pt and final.pt hold as
the model (gothic.checkpoint.published_weights), so every reader (evaluate, generate, chat,
export) takes it like any other weights; latest.pt keeps the raw weights and the average beside
them, so a resumed run continues both.

    ema = WeightAverage(model, decay=0.999)
    ema.update(model)           # after each optimizer step
    with ema.swapped_in(model):  # the model holds the average inside
        val_loss = estimate_loss(model, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

WARMUP_STEPS = 10
"""The decay used at update t is min(decay, (1 + t) / (WARMUP_STEPS + t)): early on the average
follows the weights closely, so it does not keep the random initialisation for thousands of steps."""


class WeightAverage:
    """The float32 average of a model's parameters (buffers are not averaged: they are not trained)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.names = [name for name, _ in model.named_parameters()]
        self.weights = [p.detach().float().clone() for p in model.parameters()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (WARMUP_STEPS + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """average <- average + (1 - decay) * (weights - average), every tensor in one fused pass."""
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(self.weights, params, 1.0 - self.current_decay())
        self.updates += 1

    def state_dict(self) -> dict:
        """What latest.pt keeps: the average (by parameter name) and the number of updates."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": dict(zip(self.names, self.weights, strict=True))}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved average; a state that does not fit this model is a ValueError naming why."""
        weights, updates = state.get("weights"), state.get("updates")
        if not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
            raise ValueError(f"updates {updates!r} is not a count")
        if not isinstance(weights, dict) or list(weights) != self.names:
            raise ValueError("its parameter names differ from the model's")
        for name, mine in zip(self.names, self.weights, strict=True):
            saved = weights[name]
            if not isinstance(saved, Tensor) or saved.shape != mine.shape or saved.dtype != torch.float32:
                raise ValueError(f"{name} is not a float32 tensor of shape {tuple(mine.shape)}")
        self.weights = [weights[name].to(mine.device) for name, mine in zip(self.names, self.weights, strict=True)]
        self.updates = updates

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Inside, the model's parameters hold the average; after, exactly the weights it had."""
        params = list(model.parameters())
        with torch.no_grad():
            raw = [p.detach().clone() for p in params]
            for p, weight in zip(params, self.weights, strict=True):
                p.copy_(weight)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(params, raw, strict=True):
                    p.copy_(saved)
