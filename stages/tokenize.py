"""DVC stage `tokenize`: data/processed/train.txt -> data/tokenizer.json, metrics/tokenizer.json.

With train.init_from set (a fine-tune), the base's tokenizer is written instead, byte for byte: the
weights know its ids (gothic.base)."""

import sys
from pathlib import Path

from gothic.errors import run_main
from gothic.files import write_json
from gothic.params_file import load_params
from gothic.tokenizer import save_tokenizer, tokenizer_stats_file, train_tokenizer, training_bytes


def main(processed_dir: str, tokenizer_path: str, metrics_path: str) -> None:
    params = load_params("params.yaml", require=("tokenizer",))
    cfg, init_from = params.tokenizer, params.train.init_from
    train_txt, val_txt = Path(processed_dir) / "train.txt", Path(processed_dir) / "val.txt"
    if init_from:
        from gothic.base import check_pipeline_base, load_base, write_base_tokenizer  # torch: only for a base

        check_pipeline_base(init_from)
        tok = write_base_tokenizer(load_base(init_from), Path(tokenizer_path))
        metrics = {**tokenizer_stats_file(tok, val_txt, Path(tokenizer_path)), "from_base": init_from}
        write_json(metrics_path, metrics)
        print(f"tokenize: the base's tokenizer ({init_from}), {metrics['vocab_size']} tokens, "
              f"{metrics['bytes_per_token']} bytes/token on val")
        return
    tok = train_tokenizer([train_txt], cfg.vocab_size, cfg.min_frequency, cfg.sample_bytes)
    save_tokenizer(tok, Path(tokenizer_path))
    metrics = {**tokenizer_stats_file(tok, val_txt, Path(tokenizer_path)),
               **training_bytes([train_txt], cfg.sample_bytes)}
    write_json(metrics_path, metrics)
    sample = f", learned from a {metrics['trained_on_bytes']:,}-byte sample" if metrics["sampled"] else ""
    print(f"tokenize: {metrics['vocab_size']} tokens, {metrics['bytes_per_token']} bytes/token on val{sample}")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "tokenize")
