"""Console scripts: gothic-tokenize, gothic-train, gothic-generate, gothic-chat.

Each is an argparse adapter over the same core function its DVC stage calls; flags follow the
seed toolkit. Every `*_main(argv=None)` can be called from tests with a list of arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gothic.errors import run_main


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def tokenize_main(argv: list[str] | None = None) -> None:
    """gothic-tokenize: train the BPE tokenizer (the `tokenize` stage's core function)."""
    from gothic.config import TokenizerConfig

    defaults = TokenizerConfig()
    parser = _parser("gothic-tokenize", "Train a byte-level BPE tokenizer on text files.")
    parser.add_argument("--files", nargs="+", type=Path, default=[Path("data/processed/train.txt")],
                        help="input text files")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="vocabulary size")
    parser.add_argument("--min-frequency", type=int, default=defaults.min_frequency,
                        help="minimum pair frequency for a merge")
    parser.add_argument("--output", type=Path, default=Path("data/tokenizer.json"), help="output path")
    args = parser.parse_args(argv)

    def run() -> None:
        from gothic.tokenizer import save_tokenizer, train_tokenizer

        tok = train_tokenizer(args.files, args.vocab_size, args.min_frequency)
        save_tokenizer(tok, args.output)
        print(f"wrote {args.output} ({tok.get_vocab_size()} tokens)")

    run_main(run, "gothic-tokenize")


def _not_implemented(prog: str) -> None:
    print(f"{prog}: not implemented yet", file=sys.stderr)
    sys.exit(2)


def train_main(argv: list[str] | None = None) -> None:
    """gothic-train: train the GPT (the `train` stage's core function)."""
    _not_implemented("gothic-train")


def generate_main(argv: list[str] | None = None) -> None:
    """gothic-generate: sample text from a checkpoint, streaming."""
    _not_implemented("gothic-generate")


def chat_main(argv: list[str] | None = None) -> None:
    """gothic-chat: the interactive REPL."""
    _not_implemented("gothic-chat")
