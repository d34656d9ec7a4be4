"""Training throughput: tokens/s and model FLOP/s of gothic's training step against a plain reference.

For each size (seed, demo), precision (fp32, bf16) and compile setting, times one optimizer step
of gothic's own path (GPT + build_optimizers + train_step, as `gothic.train` runs it) and of a
plain GPT-2-style model written below in the most straightforward PyTorch (eager, unfused
AdamW, same shapes, same batch), alternating the two in one process and keeping the best of
several repeats. Model FLOP/s = 6 x non-embedding params x tokens/s, shown as a fraction of this
machine's fp32 and bf16 matmul peaks, measured in the same run (bench/matmul.py).

`bf16` runs gothic with train.dtype=bfloat16 exactly as configured (on a CPU without bf16 units
that resolves to fp32, see gothic.runtime.resolve_precision); `bf16-autocast` forces bf16 autocast
on gothic's side too. The reference always runs the named precision as autocast.

    python bench/train_throughput.py [--sizes seed demo] [--precisions fp32 bf16 bf16-autocast]
                                     [--compile off on] [--repeats 3] [--steps 1]
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gothic.config import ModelConfig, TrainConfig
from gothic.model import GPT
from gothic.optim import build_optimizers
from gothic.runtime import resolve_precision
from gothic.train import train_step

from common import RESULTS_DIR, peak_tflops, report

VOCAB_SIZE = 4096
# (model shape, micro-batch): the seed's shape with a CPU-sized batch, and the demo profile
SIZES = {
    "seed": (dict(n_layer=8, n_head=8, n_embd=512, block_size=512), 4),
    "demo": (dict(n_layer=4, n_head=4, n_embd=256, block_size=256), 8),
    "tiny": (dict(n_layer=2, n_head=2, n_embd=32, block_size=32), 2),  # for the smoke test
}
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "bf16-autocast": "bfloat16"}


# --- the reference: a GPT-2-style model in plain PyTorch ----------------------------------------

class RefBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.out = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.up, self.down = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(RefBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def reference_step(model: RefGPT, opt: torch.optim.Optimizer, x, y, dtype: torch.dtype) -> None:
    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else nullcontext()
    with ctx:
        loss = model(x, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


# --- timing ---------------------------------------------------------------------------------------

def step_seconds(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def bench_one(size: str, precision: str, compiled: bool, repeats: int, steps: int) -> dict:
    shape, batch = SIZES[size]
    dtype_name = PRECISIONS[precision]
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB_SIZE, (batch, shape["block_size"]))
    y = torch.randint(0, VOCAB_SIZE, (batch, shape["block_size"]))

    model_cfg = ModelConfig(**shape)
    train_cfg = TrainConfig(dtype=dtype_name, compile=compiled, device="cpu")
    ours = GPT(model_cfg, VOCAB_SIZE)
    optimizers = build_optimizers(ours, train_cfg, torch.device("cpu"))
    prec = resolve_precision(dtype_name, torch.device("cpu"), cpu_fallback=precision != "bf16-autocast")
    module = torch.compile(ours) if compiled else ours

    ref = RefGPT(**shape, vocab_size=VOCAB_SIZE)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=3e-4, weight_decay=0.1, foreach=False, fused=False)
    ref_dtype = getattr(torch, dtype_name)

    def ours_step():
        train_step(module, [(x, y)], optimizers, prec, train_cfg.grad_clip)

    def ref_step():
        reference_step(ref, ref_opt, x, y, ref_dtype)

    compile_s = step_seconds(ours_step, 1)  # warm-up (and compilation)
    ref_step()
    best_ours, best_ref = math.inf, math.inf
    for _ in range(repeats):  # alternate, so a busy moment hits both
        best_ours = min(best_ours, step_seconds(ours_step, steps))
        best_ref = min(best_ref, step_seconds(ref_step, steps))
    tokens = batch * shape["block_size"]
    n_params = ours.num_params()
    flops = 6 * n_params * tokens / best_ours
    return {"size": size, "params M": n_params / 1e6, "precision": precision,
            "runs as": prec.describe().split(" (")[0], "compile": "on" if compiled else "off",
            "tokens/s": tokens / best_ours, "ref tokens/s": tokens / best_ref, "x ref": best_ref / best_ours,
            "TFLOP/s": flops / 1e12, "first step s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["seed", "demo"], choices=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per timing")
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = {"fp32": peak_tflops(torch.float32, "cpu", args.peak_sizes),
             "bf16": peak_tflops(torch.bfloat16, "cpu", args.peak_sizes)}
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            for setting in args.compile:
                row = bench_one(size, precision, setting == "on", args.repeats, args.steps)
                row["% fp32 peak"] = 100 * row["TFLOP/s"] / peaks["fp32"]
                row["% bf16 peak"] = 100 * row["TFLOP/s"] / peaks["bf16"]
                rows.append(row)
                print(row, flush=True)
    notes = (f"matmul peak measured in this run: fp32 {peaks['fp32']:.3f} TFLOP/s, bf16 {peaks['bf16']:.3f} "
             f"TFLOP/s; batch x block per step: " + ", ".join(
                 f"{s} {SIZES[s][1]}x{SIZES[s][0]['block_size']}" for s in args.sizes)
             + "; reference: plain GPT-2-style model, eager, unfused AdamW, autocast in the named precision")
    report("train_throughput", rows, notes=notes, extra={"peaks_tflops": peaks}, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
