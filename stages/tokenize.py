"""DVC stage `tokenize`: data/processed/train.txt -> data/tokenizer.json, metrics/tokenizer.json."""

import sys
from pathlib import Path

from gothic.config import load_params
from gothic.errors import run_main
from gothic.files import write_json
from gothic.tokenizer import save_tokenizer, tokenizer_stats, train_tokenizer


def main(processed_dir: str, tokenizer_path: str, metrics_path: str) -> None:
    params = load_params("params.yaml", require=("tokenizer",))
    train_txt, val_txt = Path(processed_dir) / "train.txt", Path(processed_dir) / "val.txt"
    tok = train_tokenizer([train_txt], params.tokenizer.vocab_size, params.tokenizer.min_frequency)
    save_tokenizer(tok, Path(tokenizer_path))
    metrics = tokenizer_stats(tok, val_txt.read_text(encoding="utf-8"))
    write_json(metrics_path, metrics)
    print(f"tokenize: {metrics['vocab_size']} tokens, {metrics['bytes_per_token']} bytes/token on val")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "tokenize")
