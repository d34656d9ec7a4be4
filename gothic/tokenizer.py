"""Byte-level BPE tokenizer (HF `tokenizers`): train, save, load, and decode a token stream.

Byte-level means every string can be encoded (no unknown token) and `<|endoftext|>` is the one
special token, separating documents in the bins and ending generations.

    tok = train_tokenizer([Path("data/processed/train.txt")], vocab_size=4096, min_frequency=2)
    save_tokenizer(tok, Path("data/tokenizer.json"))
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gothic.config import MIN_VOCAB_SIZE
from gothic.errors import GothicError
from gothic.files import sha256_file, write_text

EOT = "<|endoftext|>"


def build_trainer(vocab_size: int, min_frequency: int) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        # all 256 byte symbols from the start, so any input is encodable
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(files: list[Path], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a byte-level BPE on text files; deterministic for the same input and settings.

    Raises GothicError when a file is missing or empty, or the corpus cannot support vocab_size.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise GothicError(f"vocab size {vocab_size} is below the {MIN_VOCAB_SIZE} byte symbols and special "
                          f"token every byte-level BPE needs; use tokenizer.vocab_size >= {MIN_VOCAB_SIZE}")
    if min_frequency < 1:
        raise GothicError(f"min frequency {min_frequency} must be >= 1")
    if not files:
        raise GothicError("no training files given (pass --files PATH ...)")
    for path in files:
        if not Path(path).is_file():
            raise GothicError(f"{path}: no such file (run `dvc repro prepare` or pass --files)")
        if Path(path).stat().st_size == 0:
            raise GothicError(f"{path}: file is empty; a tokenizer needs text to learn from")
    tok = empty_tokenizer()
    try:
        tok.train([str(p) for p in files], build_trainer(vocab_size, min_frequency))
    except Exception as e:  # tokenizers raises plain Exceptions, e.g. for non-UTF-8 input
        raise GothicError(f"tokenizer training failed on {', '.join(map(str, files))}: {e}") from None
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise GothicError(
            f"the corpus supports only {got} tokens at min_frequency={min_frequency}, not the {vocab_size} "
            f"asked for: lower tokenizer.vocab_size to at most {got} (or add text)")
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    write_text(path, tok.to_str(pretty=True))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json; a missing or broken file is a GothicError naming it."""
    path = Path(path)
    if not path.is_file():
        raise GothicError(f"{path}: tokenizer not found (run `dvc repro tokenize` or `gothic-tokenize`)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise GothicError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
    if tok.token_to_id(EOT) is None:
        raise GothicError(f"{path}: tokenizer has no {EOT} token; train it with gothic-tokenize")
    return tok


def eot_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOT)


def tokenizer_sha256(path: str | Path) -> str:
    return sha256_file(path)


def tokenizer_stats(tok: Tokenizer, val_text: str) -> dict:
    """Figures for metrics/tokenizer.json: vocab size and compression on held-out text."""
    n_bytes = len(val_text.encode("utf-8"))
    n_tokens = len(tok.encode(val_text).ids) if val_text else 0
    return {
        "vocab_size": tok.get_vocab_size(),
        "val_bytes": n_bytes,
        "val_tokens": n_tokens,
        "bytes_per_token": round(n_bytes / n_tokens, 4) if n_tokens else 0.0,
    }

