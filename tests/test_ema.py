"""The weight average (gothic.ema): its arithmetic, its state and the swap that evaluates it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gothic.ema import WARMUP_STEPS, WeightAverage


def test_average_follows_the_recursion_with_its_early_warmup_in_float32():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).to(torch.bfloat16)
    ema = WeightAverage(model, decay=0.9)
    expected = [p.detach().double() for p in model.parameters()]
    for t in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        decay = min(0.9, (1 + t) / (WARMUP_STEPS + t))
        expected = [e * decay + p.detach().double() * (1 - decay) for e, p in zip(expected, model.parameters(),
                                                                                 strict=True)]
        ema.update(model)
    assert ema.current_decay() == 0.9 and ema.updates == 100
    for got, want in zip(ema.weights, expected, strict=True):
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want, atol=1e-5)


def test_swapped_in_holds_the_average_inside_and_the_exact_weights_after():
    model = nn.Linear(4, 4)
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.mul_(3.0)
    raw = model.weight.detach().clone()
    ema.update(model)
    with ema.swapped_in(model):
        assert model.weight.equal(ema.weights[0]) and not model.weight.equal(raw)
    assert model.weight.equal(raw)


def test_state_round_trips_and_a_foreign_state_is_refused():
    model = nn.Linear(2, 2)
    ema = WeightAverage(model, decay=0.99)
    ema.update(model)
    other = WeightAverage(nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and all(a.equal(b) for a, b in zip(other.weights, ema.weights, strict=True))
    with pytest.raises(ValueError, match="shape"):
        WeightAverage(nn.Linear(2, 3), 0.99).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="names"):
        WeightAverage(nn.Linear(2, 2, bias=False), 0.99).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="count"):
        other.load_state_dict({**ema.state_dict(), "updates": -1})
