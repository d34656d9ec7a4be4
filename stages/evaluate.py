"""DVC stage `evaluate`: models/best.pt + data/bin/val.bin -> metrics/eval.json (fp32; every val token up
to evaluate.max_tokens, evenly spaced windows above)."""

import sys
from pathlib import Path

from gothic.errors import run_main
from gothic.evaluate import evaluate_checkpoint
from gothic.files import check_inside, write_json
from gothic.params_file import load_params
from gothic.progress import progress_bar

HELDOUT_DIR = Path("data/heldout")  # a dependency of the stage in dvc.yaml


def main(checkpoint_path: str, bin_dir: str, metrics_path: str, documents_path: str | None = None) -> None:
    params = load_params("params.yaml", require=("evaluate",))
    for entry in params.evaluate.extra:
        check_inside(entry, HELDOUT_DIR, "evaluate.extra", "extra held-out sets")
    with progress_bar() as bar:
        def start(total_tokens: int):
            task = bar.add_task("evaluating", total=total_tokens, status="tokens")
            return lambda done: bar.advance(task, done)

        metrics = evaluate_checkpoint(Path(checkpoint_path), Path(bin_dir), params.evaluate, start,
                                      Path(documents_path) if documents_path else None)
    write_json(metrics_path, metrics)
    print(f"evaluate: val loss {metrics['val_loss']:.4f}, perplexity {metrics['perplexity']:.2f}, "
          f"{metrics['bits_per_byte']:.4f} bits/byte over {metrics['eval_tokens']:,} tokens "
          + (f"of {metrics['split_tokens']:,} (evaluate.max_tokens) " if "split_tokens" in metrics else "")
          + f"({metrics['eval_tokens_per_second']:,.0f} tokens/s)")
    for name, figures in metrics.get("extra", {}).items():
        print(f"evaluate: {name} (evaluate.extra): {figures['bits_per_byte']:.4f} bits/byte, "
              f"val loss {figures['val_loss']:.4f} over {figures['eval_tokens']:,} tokens")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "evaluate")
