"""DVC stage `train`: data/bin/ + tokenizer -> models/ (checkpoints, logs/), metrics/train.json, plot TSVs.

    python stages/train.py data/bin data/tokenizer.json models metrics/train.json metrics/train_plots

`models/` is `persist: true` in dvc.yaml, so `train.resume: true` continues from models/latest.pt.
"""

import sys
from pathlib import Path

from gothic.config import load_params
from gothic.errors import run_main
from gothic.files import write_json
from gothic.train import train, write_curves


def main(bin_dir: str, tokenizer_path: str, out_dir: str, metrics_path: str, plots_dir: str | None = None) -> None:
    params = load_params("params.yaml", require=("model", "train"))
    result = train(params.model, params.train, Path(bin_dir), Path(tokenizer_path), Path(out_dir), log=print)
    if result.rank != 0:  # the stage under torchrun: one writer
        return
    write_json(metrics_path, result.metrics)
    write_curves(result.history, plots_dir or Path(metrics_path).parent / "train_plots")
    m = result.metrics
    print(f"train: step {m['step']}, best val loss {m['best_val_loss']} at step {m['best_step']}, "
          f"{m['tokens_per_s']} tokens/s")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "train")
