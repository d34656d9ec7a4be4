"""DVC stage `sample`: models/best.pt + tokenizer -> samples/samples.md, metrics/sample.json.

Prompts, seed and sampling knobs come from `sample.*` in params.yaml; the training text is read
only to measure memorisation (the longest word n-gram a sample shares with it).
"""

import sys
from pathlib import Path

from gothic.errors import run_main
from gothic.files import write_json, write_text
from gothic.generation import Engine
from gothic.params_file import load_params
from gothic.samples import draw_samples, load_text_index, render_markdown, sample_metrics, shared_ngrams


def main(checkpoint_path: str, tokenizer_path: str, train_text_path: str, samples_path: str,
         metrics_path: str) -> None:
    params = load_params("params.yaml", require=("sample",))
    engine = Engine.from_checkpoint(checkpoint_path, tokenizer_path, device=params.sample.device,
                                    dtype=params.sample.dtype)
    run = draw_samples(engine, params.sample)
    shared = shared_ngrams(run, load_text_index(Path(train_text_path)))
    write_text(samples_path, render_markdown(run, shared, checkpoint_path, engine.checkpoint_info.step))
    metrics = sample_metrics(run, shared)
    write_json(metrics_path, metrics)
    print(f"sample: {metrics['samples']} samples, distinct-2 {metrics['distinct_2']}, longest shared "
          f"n-gram {metrics['longest_shared_ngram_max']} words, {metrics['sample_tokens_per_second']:,.0f} tokens/s")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "sample")
