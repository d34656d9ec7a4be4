"""llama.cpp against gothic's own generation: tokens/s on the same model, prompt and CPU threads.

Exports one model (random weights: speed does not depend on them) as GGUF at each weight type with
gothic.export, then times greedy generation of the same prompt in llama.cpp (llama-cpp-python, its
own greedy sampler) and in gothic's token loop (gothic.generation.generate_tokens, the loop behind
gothic-generate), in float32 and in bf16 as gothic-generate holds the weights where the CPU has bf16
units. Best of --repeats; tokens/s counts the whole call, prefill included.

    python bench/gguf_speed.py [--size demo] [--prompt-tokens 16] [--new-tokens 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from gothic.checkpoint import RunState, TrainingCheckpoint
from gothic.config import ModelConfig, SamplingSettings, to_dict
from gothic.export import export_checkpoint
from gothic.export_gguf import gguf_filename
from gothic.generation import generate_tokens
from gothic.model import GPT
from gothic.tokenizer import save_tokenizer, tokenizer_sha256, train_tokenizer

from common import llama_cpp_without_repacking, report

VOCAB_SIZE = 4096
# the demo profile's architecture (Makefile DEMO_PARAMS), llama.cpp's apertus
DEMO = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, pos_embedding="rope", norm="rmsnorm", qk_norm=True,
            mlp="relu2", tie_embeddings=False, bias=False)
SIZES = {"demo": DEMO, "tiny": {**DEMO, "n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 64}}


def synthetic_tokenizer(folder: Path, vocab_size: int) -> Path:
    """A byte-level BPE of vocab_size trained on random words (the GGUF needs a real tokenizer)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(1, 9))) for _ in range(6000)]
    text = folder / "words.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(300_000)))
    path = folder / "tokenizer.json"
    save_tokenizer(train_tokenizer([text], vocab_size, 2), path)
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="demo")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--types", nargs="+", default=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    from llama_cpp import Llama

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(**SIZES[args.size])
    model = GPT(cfg, VOCAB_SIZE).eval()
    prompt = torch.randint(0, VOCAB_SIZE, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = synthetic_tokenizer(tmp, VOCAB_SIZE)
        ckpt = tmp / "best.pt"
        TrainingCheckpoint(model=model.state_dict(), model_config=to_dict(cfg), vocab_size=VOCAB_SIZE,
                           tokenizer_sha256=tokenizer_sha256(tok), tokenizer=tok.read_text(),
                           state=RunState(step=0, best_val_loss=0.0)).save(ckpt, resumable=False)
        for weight_type in args.types:
            folder = tmp / weight_type
            export_checkpoint(ckpt, folder, formats=("gguf",), gguf_type=weight_type)
            with llama_cpp_without_repacking():
                llm = Llama(str(folder / gguf_filename(weight_type)), n_ctx=cfg.block_size, n_threads=args.threads,
                            verbose=False)

            def run(llm=llm):
                got = 0
                for _ in llm.generate(prompt, temp=0.0, reset=True):
                    got += 1
                    if got == n:
                        return

            run()  # warm-up
            best = min(timed(run) for _ in range(args.repeats))
            rows.append({"runtime": "llama.cpp", "weights": weight_type, "tokens/s": round(n / best, 1)})
    settings = SamplingSettings(max_new_tokens=n, temperature=0.0)
    for dtype in (torch.float32, torch.bfloat16):
        held = GPT(cfg, VOCAB_SIZE).eval()
        held.load_state_dict(model.state_dict())
        held.cast_for_inference(dtype)

        def run(held=held):
            with torch.inference_mode():
                for _ in generate_tokens(held, torch.tensor([prompt]), settings, [torch.Generator()]):
                    pass

        run()
        best = min(timed(run) for _ in range(args.repeats))
        rows.append({"runtime": "gothic", "weights": str(dtype).removeprefix("torch."), "tokens/s": round(n / best, 1)})
    notes = (f"{args.size}: {cfg.n_layer} layers, {cfg.n_embd} dim, block {cfg.block_size}, vocab {VOCAB_SIZE} "
             f"(the demo architecture, llama.cpp's apertus), random weights; greedy, {len(prompt)}-token prompt, "
             f"{n} new tokens, {args.threads} threads, best of {args.repeats}; tokens/s counts prefill")
    report("gguf_speed", rows, notes, **({"results_dir": args.results_dir} if args.results_dir else {}))


if __name__ == "__main__":
    main()
