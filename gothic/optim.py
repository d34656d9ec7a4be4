"""Optimizers for training a GPT: AdamW, and Muon for the hidden weight matrices (`train.optimizer`).

`build_optimizers` splits the model's parameters into groups (hidden matrices, other matrices,
vectors) and returns the optimizers the loop steps together; every group carries `base_lr`, the
peak learning rate that the schedule (`get_lr`, applied by `set_lr`) scales.

    optimizers = build_optimizers(model, params.train, torch.device("cpu"))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gothic.config import TrainConfig
from gothic.model import GPT
from gothic.runtime import cpu_has_bf16_units

# Coefficients of the quintic Newton-Schulz iteration from Keller Jordan's Muon write-up (2024):
# chosen for a steep slope at 0, so small singular values grow fast; they converge to roughly
# [0.7, 1.2] rather than exactly 1, which the write-up shows does not hurt training.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
MUON_MOMENTUM = 0.95


def newton_schulz_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """What Muon's Newton-Schulz iteration computes in: bf16 on CUDA, and on a CPU with bf16 units
    (AVX-512 BF16, AMX) when the run trains in bf16; fp32 elsewhere, where emulated bf16 is slower.
    The iteration only needs a rough orthogonalisation (its coefficients leave singular values in
    [0.7, 1.2]), so bf16 costs no held-out quality, and on a CPU it is about a quarter of a demo
    step in fp32 (bench/README.md)."""
    if device.type == "cuda" or (device.type == "cpu" and cfg.dtype == "bfloat16" and cpu_has_bf16_units()):
        return torch.bfloat16
    return torch.float32


def orthogonalize(g: Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximately replace g = U S V^T by U V^T (all singular values ~1), without an SVD, computing
    in dtype (newton_schulz_dtype).

    g is one matrix, or a stack (n, rows, cols) of same-shaped matrices, each orthogonalised on its own
    in the same batched products (one launch per product for all of them: what a GPU wants)."""
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # iterate on the wide orientation, so x @ x.T is the smaller Gram matrix
        x = x.mT
    # Frobenius norm bounds the spectral norm: singular values <= 1
    x = x / ((x.norm() if x.dim() == 2 else x.norm(dim=(-2, -1), keepdim=True)) + 1e-7)
    fma = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT  # (rows, rows)
        # a x + (b gram + c gram^2) x, with the scalings folded into the fused products: no elementwise passes
        poly = fma(gram, gram, gram, beta=b, alpha=c)
        x = fma(x, poly, x, beta=a)
    return (x if wide else x.mT).to(g.dtype)


def orthogonalize_all(updates: list[Tensor], dtype: torch.dtype = torch.float32,
                      batched: bool | None = None) -> list[Tensor]:
    """`orthogonalize` of each update. On CUDA the same-shaped ones go through as one stack (a GPT's
    layers share four shapes, so 4 batched iterations instead of 4 per layer: far fewer kernel
    launches); elsewhere one by one, which the CPU runs as fast and which keeps its results.
    `batched` overrides that choice (tests)."""
    if not updates or not (updates[0].is_cuda if batched is None else batched):
        return [orthogonalize(u, dtype=dtype) for u in updates]
    by_shape: dict[tuple, list[int]] = {}
    for i, u in enumerate(updates):
        by_shape.setdefault(tuple(u.shape), []).append(i)
    out: list[Tensor | None] = [None] * len(updates)
    for indices in by_shape.values():
        stacked = orthogonalize(torch.stack([updates[i] for i in indices]), dtype=dtype)
        for i, o in zip(indices, stacked.unbind(0), strict=True):
            out[i] = o
    return out


class Muon(torch.optim.Optimizer):
    """Muon (MomentUm Orthogonalized by Newton-schulz) for 2-D hidden weight matrices.

    Each step takes SGD momentum (Nesterov), orthogonalises the update with `orthogonalize`, and
    scales it by sqrt(max(1, rows / cols)) so tall matrices get an update of the same RMS per
    entry. Weight decay is decoupled, as in AdamW: p <- p * (1 - lr * weight_decay). `ns_dtype` is what
    the orthogonalisation computes in (newton_schulz_dtype).
    """

    def __init__(self, params, lr: float, momentum: float = MUON_MOMENTUM, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for p in params:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(momentum).add_(p.grad)
                updates.append(p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf)
            for p, update in zip(params, orthogonalize_all(updates, self.ns_dtype), strict=True):
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)
        return None


def param_groups(model: GPT) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """(hidden, decay, no_decay): the blocks' 2-D weights (Muon's, when enabled); other matrices
    (token embedding / head); biases, norm gains and the position table, which are not decayed."""
    hidden_ids = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    hidden, decay, no_decay = [], [], []
    for name, p in model.named_parameters():  # a tied weight is listed once
        if id(p) in hidden_ids:
            hidden.append(p)
        elif p.dim() >= 2 and not name.startswith("wpe."):
            decay.append(p)
        else:
            no_decay.append(p)
    return hidden, decay, no_decay


def build_optimizers(model: GPT, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices only; with optimizer=muon, Muon takes the hidden matrices.

    Every param group carries `base_lr`, the peak that `set_lr` scales by the schedule.
    """
    hidden, decay, no_decay = param_groups(model)
    use_muon = cfg.optimizer == "muon"
    adam_groups = [{"params": decay if use_muon else hidden + decay, "weight_decay": cfg.weight_decay},
                   {"params": no_decay, "weight_decay": 0.0}]
    for group in adam_groups:
        group["base_lr"] = cfg.learning_rate
    # the fused kernel updates all tensors in one pass: 4x faster than the default loop on CPU
    # (bench/README.md), and the fast path on CUDA
    adamw = torch.optim.AdamW(adam_groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                              fused=True if device.type in ("cuda", "cpu") else None)
    if not use_muon:
        return [adamw]
    # Muon's decoupled decay is multiplied by its own (much larger) lr; rescale it so the matrices
    # shrink by the same factor per step as under AdamW.
    muon_wd = cfg.weight_decay * cfg.learning_rate / cfg.muon_lr
    muon = Muon([{"params": hidden, "base_lr": cfg.muon_lr}], lr=cfg.muon_lr, weight_decay=muon_wd,
                ns_dtype=newton_schulz_dtype(cfg, device))
    return [adamw, muon]


def _same_kind(saved, fresh) -> bool:
    """Whether a saved optimizer setting is the kind of value the fresh one is (a number, a flag, a pair
    of numbers, ...): the values may differ, their kinds may not."""
    if isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        return type(saved) is type(fresh)
    if isinstance(fresh, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(fresh, (tuple, list)):
        return (isinstance(saved, (tuple, list)) and len(saved) == len(fresh)
                and all(_same_kind(a, b) for a, b in zip(saved, fresh, strict=True)))
    return type(saved) is type(fresh)


def state_mismatch(opt: torch.optim.Optimizer, state) -> str | None:
    """Why a saved optimizer state does not fit opt's parameters (None: it fits): its groups, and every
    tensor's shape and dtype against the parameter it belongs to (the step counter is a scalar)."""
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list) and len(state["param_groups"]) == len(opt.param_groups)):
        return "not a state of this optimizer"
    params = {}
    for saved, group in zip(state["param_groups"], opt.param_groups, strict=True):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            return "its parameter groups differ"
        # the optimizer takes its settings (betas, eps, ...) from the file and unpacks them unchecked
        wrong = next((k for k, v in group.items() if k != "params" and not _same_kind(saved.get(k, v), v)), None)
        if wrong is not None:
            return f"its {wrong} is {saved[wrong]!r:.40}, not like {group[wrong]!r}"
        params.update(zip(ids, group["params"], strict=True))
    for index, values in state["state"].items():
        if index not in params or not isinstance(values, dict):
            return f"state for an unknown parameter {index!r}"
        p = params[index]
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                return f"{name} of parameter {index} is a {type(value).__name__}"
            want = (torch.Size([]), torch.float32) if name == "step" else (p.shape, p.dtype)
            if (value.shape, value.dtype) != want:
                return (f"{name} of parameter {index} is {tuple(value.shape)} {value.dtype}, "
                        f"expected {tuple(want[0])} {want[1]}")
            if not torch.isfinite(value).all():  # else the first step turns every weight NaN
                return f"{name} of parameter {index} holds NaN or infinite values"
    return None


# --- learning-rate schedule -------------------------------------------------------------------

LrSegment = tuple[int, float]


def get_lr(step: int, cfg: TrainConfig, segment: LrSegment | None = None) -> float:
    """The schedule's multiplier of the peak rates for optimizer step `step` (0-based): linear warmup,
    then down to min_lr (the multiplier min_lr / learning_rate) along train.schedule's curve: a cosine
    over the whole rest of the run, or (wsd) the peak until the last decay_frac of max_iters and a
    straight line from there. Every param group's rate is its base_lr times this, so AdamW's rate is
    learning_rate times it.

    Warmup reaches learning_rate at step warmup_iters - 1 (step 0 already moves, at lr/warmup);
    the decay lands on min_lr at max_iters and stays there.

    segment = (start_step, start_lr) is how a run continued to another max_iters goes on: from
    start_step the rate falls from start_lr (the rate the old schedule had reached there) to min_lr
    at the new max_iters, along a cosine, or for wsd holding start_lr until the new decay start. So it
    never jumps: a run stopped mid-decay finishes its decay over the new length, and a finished run
    goes on at min_lr.
    """
    # the rates are computed as absolute AdamW rates and divided once, so the multiplier has exactly
    # the bits the schedule always had (a checkpoint's lr_segment holds an absolute rate)
    return _absolute_lr(step, cfg, segment) / cfg.learning_rate


def _absolute_lr(step: int, cfg: TrainConfig, segment: LrSegment | None) -> float:
    continued = segment is not None and step >= segment[0]
    if not continued and step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    start, peak = segment if continued else (cfg.warmup_iters, cfg.learning_rate)
    if step >= cfg.max_iters:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        return _linear_decay(step, max(start, cfg.max_iters - round(cfg.decay_frac * cfg.max_iters)), peak, cfg)
    progress = (step - start) / (cfg.max_iters - start)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - cfg.min_lr)


def _linear_decay(step: int, decay_start: int, peak: float, cfg: TrainConfig) -> float:
    """wsd's rate: `peak` until decay_start, then a straight line to min_lr at max_iters."""
    if step < decay_start:
        return peak
    return peak + (cfg.min_lr - peak) * (step - decay_start) / (cfg.max_iters - decay_start)


def set_lr(optimizers: list[torch.optim.Optimizer], step: int, cfg: TrainConfig,
           segment: LrSegment | None = None) -> float:
    """Apply the schedule for `step` to every group (its base_lr times get_lr); returns the AdamW lr."""
    factor = get_lr(step, cfg, segment)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
    return cfg.learning_rate * factor
