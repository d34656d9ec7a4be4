"""DVC stage `train`: data/bin/ + tokenizer -> models/ (best.pt, final.pt, latest.pt), metrics/train.json, plots
(kept current while it trains: gothic.live).

    python stages/train.py data/bin data/tokenizer.json checkpoints models metrics/train.json metrics/train_plots

Training works in `checkpoints/`, which no DVC output covers: `dvc exp run` resets outputs to the
last commit before a stage runs, and would take a stopped run's checkpoint with it. A run stopped
there continues when the stage runs again with the same params (train.resume: auto); a complete
run is copied into `models/`, the output DVC versions per experiment (gothic.rundir).
"""

import os
import sys
from pathlib import Path

from gothic.base import check_pipeline_base
from gothic.errors import run_main
from gothic.files import write_json
from gothic.live import LiveMetrics
from gothic.params_file import load_params
from gothic.progress import step_display
from gothic.rundir import check_inputs_unchanged, check_params_unchanged, input_digests
from gothic.runlog import TrainHooks, write_curves
from gothic.train import train


def main(bin_dir: str, tokenizer_path: str, work_dir: str, models_dir: str, metrics_path: str,
         plots_dir: str) -> None:
    params = load_params("params.yaml", require=("model", "train"))
    check_pipeline_base(params.train.init_from)
    inputs = [Path(bin_dir) / "meta.json", Path(tokenizer_path)]  # meta.json: the bins' counts and tokenizer
    started = input_digests(inputs)

    def still_these_params() -> None:  # what DVC will record the outputs under
        now = load_params("params.yaml", require=("model", "train"))
        check_params_unchanged(params.model, params.train, now.model, now.train, Path(work_dir))
        check_inputs_unchanged(started, input_digests(inputs), Path(work_dir))
    # the metrics and plots are rewritten as training goes (dvc exp show / dvc plots show follow it),
    # then once more from the final result
    with step_display("train", show=None if os.environ.get("RANK", "0") == "0" else False) as (log, progress):
        result = train(params.model, params.train, Path(bin_dir), Path(tokenizer_path), Path(work_dir),
                       publish_dir=Path(models_dir),
                       hooks=TrainHooks(log, progress, on_log=LiveMetrics(metrics_path, plots_dir),
                                        before_publish=still_these_params))
    if result.rank != 0:  # the stage under torchrun: one writer
        return
    write_json(metrics_path, result.metrics)
    write_curves(result.history, plots_dir)
    m = result.metrics
    print(f"train: step {m['step']}, best val loss {m['best_val_loss']} at step {m['best_step']}, "
          f"{m['train_tokens_per_second']} tokens/s")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "train")
