"""Generation speed: tokens/s and first-token latency with the KV cache against recomputing the context.

Runs gothic's token loop (gothic.generation.generate_tokens, the one behind `sample`, gothic-generate
and gothic-chat) on a seed-sized model (random weights: speed does not depend on them) with the
sample stage's settings, for a short and a long prompt, with and without the KV cache, alternating
the two in one process and keeping the best of several repeats. Without the cache every step
recomputes the whole window (the same tokens come out; see tests/test_generation.py).

Each `--dtypes` entry is one way to hold and compute the model: `float32`; `bfloat16`, the weights
cast once as gothic's generation does it (gothic.runtime.inference_dtype picks it where the CPU or
GPU has bf16 units); `bfloat16-autocast`, fp32 weights under bf16 autocast, which re-casts every
weight at every token. The no-cache rows use the same dtype as the cached ones they are compared to.

    python bench/generate.py [--size seed] [--prompts 16 400] [--new-tokens 256] [--repeats 2]
                             [--dtypes float32 bfloat16 bfloat16-autocast]
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from gothic.config import ModelConfig, SamplingSettings
from gothic.generation import generate_tokens
from gothic.model import GPT
from gothic.runtime import cpu_has_bf16_units

from common import RESULTS_DIR, report

VOCAB_SIZE = 4096
SIZES = {
    "seed": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "demo": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64),  # for the smoke test
}
FIRST_TOKEN_REPEATS = 10


DTYPES = ("float32", "bfloat16", "bfloat16-autocast")


def model_in(model: GPT, mode: str) -> tuple[GPT, object]:
    """(the model as `mode` holds it, the context its calls run in)."""
    if mode == "bfloat16":
        return copy.deepcopy(model).cast_for_inference(torch.bfloat16), nullcontext()
    if mode == "bfloat16-autocast":
        return model, torch.autocast("cpu", dtype=torch.bfloat16)
    return model, nullcontext()


def run_once(model: GPT, prompt: torch.Tensor, settings: SamplingSettings, use_cache: bool) -> tuple[float, float]:
    """(seconds to the first sampled token, seconds for all of them)."""
    start = time.perf_counter()
    steps = generate_tokens(model, prompt, settings, [torch.Generator().manual_seed(1)], use_cache)
    next(steps)
    first = time.perf_counter() - start
    for _ in steps:
        pass
    return first, time.perf_counter() - start


def first_token_s(model: GPT, prompt: torch.Tensor, settings: SamplingSettings, use_cache: bool) -> float:
    """Best time to the first token over FIRST_TOKEN_REPEATS tries (the generator is closed after it)."""
    best = math.inf
    for _ in range(FIRST_TOKEN_REPEATS):
        start = time.perf_counter()
        steps = generate_tokens(model, prompt, settings, [torch.Generator().manual_seed(1)], use_cache)
        next(steps)
        best = min(best, time.perf_counter() - start)
        steps.close()
    return best


def measure(model: GPT, mode: str, args, settings: SamplingSettings) -> list[dict]:
    rows = []
    for prompt_len in args.prompts:
        prompt = torch.randint(1, VOCAB_SIZE, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
        best = {True: (math.inf, math.inf), False: (math.inf, math.inf)}
        for _ in range(args.repeats):  # alternate, so a busy moment hits both
            for use_cache in (True, False):
                first, total = run_once(model, prompt, settings, use_cache)
                best[use_cache] = (min(best[use_cache][0], first), min(best[use_cache][1], total))
        for use_cache in (True, False):
            first = min(best[use_cache][0], first_token_s(model, prompt, settings, use_cache))
            rows.append({"size": args.size, "dtype": mode, "prompt tokens": prompt_len,
                         "new tokens": args.new_tokens, "KV cache": "on" if use_cache else "off",
                         "tokens/s": args.new_tokens / best[use_cache][1], "first token ms": 1000 * first,
                         "x no-cache": best[False][1] / best[use_cache][1]})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="seed", choices=list(SIZES))
    parser.add_argument("--prompts", type=int, nargs="+", default=[16, 400], help="prompt lengths in tokens")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES,
                        help="how the model is held and computed (see the module docstring)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(**SIZES[args.size])
    model = GPT(cfg, VOCAB_SIZE).eval()
    settings = SamplingSettings(max_new_tokens=args.new_tokens)  # the sample stage's defaults otherwise
    rows = []
    for mode in args.dtypes:
        held, context = model_in(model, mode)
        with context:
            rows += measure(held, mode, args, settings)
    notes = (f"{args.size}: {cfg.n_layer} layers, {cfg.n_embd} dim, block {cfg.block_size}, vocab {VOCAB_SIZE}, "
             f"{model.num_params() / 1e6:.1f}M params; batch 1, sampling T={settings.temperature} "
             f"top-k {settings.top_k} top-p {settings.top_p}; tokens/s counts the whole call (prefill included); "
             f"the window slides past block_size in both modes; CPU bf16 units: {cpu_has_bf16_units()}")
    report("generate", rows, notes=notes, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
