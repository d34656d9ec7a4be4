"""Checkpoint sizes: latest.pt (weights + optimizer state for resume) against best.pt/final.pt
(weights, config, tokenizer, metrics) and the exported model.safetensors, at the seed size.

No training: one optimizer step on a dummy batch creates the optimizer's buffers at their real size.

    python bench/checkpoint_size.py [--size seed|tiny] [--optimizer adamw|muon]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from common import RESULTS_DIR, report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gothic.checkpoint import TrainingCheckpoint  # noqa: E402
from gothic.config import ModelConfig, TrainConfig  # noqa: E402
from gothic.model import GPT  # noqa: E402
from gothic.optim import build_optimizers  # noqa: E402

SIZES = {"seed": (ModelConfig(), 4096),  # params.yaml's model section and tokenizer.vocab_size
         "tiny": (ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 300)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="seed")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    cfg, vocab = SIZES[args.size]
    model = GPT(cfg, vocab)
    optimizers = build_optimizers(model, TrainConfig(optimizer=args.optimizer, device="cpu"), torch.device("cpu"))
    model(torch.zeros(1, 2, dtype=torch.long))[0].sum().backward()
    for opt in optimizers:
        opt.step()
    # what training writes (a tokenizer.json of typical size)
    ckpt = TrainingCheckpoint(model=model.state_dict(), model_config=dataclasses.asdict(cfg), vocab_size=vocab,
                              tokenizer_sha256="", tokenizer="x" * 40 * vocab,
                              optimizer=[opt.state_dict() for opt in optimizers], sampler={}, rng=[])
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        ckpt.save(Path(tmp) / "latest.pt")
        sizes["latest.pt (format 2, and every file of format 1)"] = (Path(tmp) / "latest.pt").stat().st_size
        ckpt.save(Path(tmp) / "best.pt", resumable=False)
        sizes["best.pt / final.pt (format 2)"] = (Path(tmp) / "best.pt").stat().st_size
        try:
            from safetensors.torch import save_file

            from gothic.hf_mapping import to_hf

            save_file(to_hf(model, 0).tensors, str(Path(tmp) / "model.safetensors"))
            sizes["export/model.safetensors"] = (Path(tmp) / "model.safetensors").stat().st_size
        except ImportError:
            pass
    rows = [{"file": name, "MB": round(size / 1e6, 3)} for name, size in sizes.items()]
    report("checkpoint_size", rows, notes=f"{args.size} size, {model.num_params(non_embedding=False):,} parameters, "
           f"{args.optimizer}", results_dir=args.results_dir)


if __name__ == "__main__":
    main()
