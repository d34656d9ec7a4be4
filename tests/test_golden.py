"""Byte identity of the streaming data stages with the code before them.

The sha256 figures below were produced by the pre-streaming implementation (whole corpus in
memory: `tok.train(files)`, `tok.encode(val_text)`, per-document encoding) on the fixed corpus of
tests/golden.py and, when present, on the shared gothic novels. Every output of prepare, tokenize
and binarize must still be exactly those bytes, so every existing experiment's DVC cache stays
valid; any change to cleaning, splitting, tokenizer training, encoding or meta.json fails here.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
from golden import write_golden_raw

from gothic.config import PrepareConfig, TokenizerConfig
from gothic.corpus import prepare
from gothic.data import binarize
from gothic.tokenizer import load_tokenizer, save_tokenizer, tokenizer_stats, tokenizer_stats_file, train_tokenizer

SMALL = {
    "processed/train.txt": "313a7ff0c9c164bd7502abeab301a442d57a75cc6f776ed2fe6b35e2737e0a43",
    "processed/val.txt": "14c82002510e58230340355a0d8850d25ed82fb8fc766521bc518d8e63523636",
    "processed/documents.json": "f9a9a36bc0fb4e268ae257cd46bf274b3d22d2d8ed7b31d34079e0697d9165de",
    "tokenizer.json": "01285e6de6fa9ee582bc1854012cca2260a4e5433777d5c0f1aa990b756be6e4",
    "bin/train.bin": "b50a18677fffc4d34f2e939e2531405e3b0954fe0d7ed30120a642b9b774c4cf",
    "bin/val.bin": "b18b8181ac9c37818faa1352f33beb61776c462ccc346bc2876baaf8c1060cc3",
    "bin/meta.json": "65980475a98b4348cbced97d9f85f21fe726aab4cc6cd5b5382a0856c28c85b0",
}
SMALL_METRICS = {"corpus": {"train": {"documents": 9, "bytes": 451168, "words": 70902},
                            "val": {"documents": 3, "bytes": 27337, "words": 4176}},
                 "tokenizer": {"vocab_size": 500, "val_bytes": 27363, "val_tokens": 5716, "bytes_per_token": 4.7871}}
NOVELS = {
    "processed/train.txt": "1ff2c43520c9eb7bf8bd45c87bc0f50c483e39ef504763673157f6f16b29e0e5",
    "processed/val.txt": "babd16ba847b5e81d0c322a8328022662996d686ed6ccf5ce204f4d1ebf080e8",
    "processed/documents.json": "86476c541e93fdba03e43dec68ff514a889ab05c72930862fbcf33903826c6f4",
    "tokenizer.json": "2c359bcb50e95a3bd6f511dc55da155adc82cabdde9c6fa3efef5999462262e4",
    "bin/train.bin": "37cd539c3219a07b75bb9f3f8b778c219a9b7b01c9175fd89bef62951aba6d59",
    "bin/val.bin": "e650af495265a8763cbfc0f14bd3b5bace818dafe0743b9a42fc1b5f2494c36e",
    "bin/meta.json": "d7c9697664667df7b96947107dc5fea8d28467d3afb16314f12f800f8af3d27f",
}
NOVELS_METRICS = {"corpus": {"train": {"documents": 10, "bytes": 4747882, "words": 844734},
                             "val": {"documents": 2, "bytes": 656966, "words": 117327}},
                  "tokenizer": {"vocab_size": 2048, "val_bytes": 656979, "val_tokens": 215263,
                                "bytes_per_token": 3.052}}


def run_data_stages(raw, work, cfg: PrepareConfig, vocab_size: int) -> tuple[dict, dict]:
    processed = work / "processed"
    corpus = prepare(cfg, raw, processed)
    tok = train_tokenizer([processed / "train.txt"], vocab_size, 2, TokenizerConfig().sample_bytes)
    save_tokenizer(tok, work / "tokenizer.json")
    tok_path = work / "tokenizer.json"
    stats = tokenizer_stats_file(load_tokenizer(tok_path), processed / "val.txt", tok_path)
    assert stats == tokenizer_stats(tok, (processed / "val.txt").read_text(encoding="utf-8"))
    binarize(processed, work / "tokenizer.json", work / "bin")
    digests = {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in SMALL}
    return digests, {"corpus": corpus, "tokenizer": stats}


def test_outputs_are_byte_identical_to_the_in_memory_code(tmp_path):
    raw = write_golden_raw(tmp_path / "raw")
    cfg = PrepareConfig(sources=["raw"], val_fraction=0.25, seed=7, encoding_fallback="latin-1")
    digests, metrics = run_data_stages(raw, tmp_path, cfg, 500)
    assert digests == SMALL
    assert metrics == SMALL_METRICS


def test_outputs_are_byte_identical_on_the_shared_novels(shared_corpus, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for book in shared_corpus.glob("*.txt"):
        shutil.copy(book, raw / book.name)
    # the worker-process paths as well (the corpus is below the size where they start)
    monkeypatch.setattr("gothic.parallel.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("gothic.parallel.cpu_count", lambda: 2)
    digests, metrics = run_data_stages(raw, tmp_path, PrepareConfig(sources=["raw"], val_fraction=0.2, seed=3), 2048)
    assert digests == NOVELS
    assert metrics == NOVELS_METRICS


@pytest.mark.parametrize("piece_chars", [50, 700])
def test_small_pieces_and_reads_change_nothing(tmp_path, monkeypatch, piece_chars):
    """Pieces and read blocks far smaller than documents: every cut and block edge is exercised."""
    monkeypatch.setattr("gothic.tokenizer.PIECE_CHARS", piece_chars)
    monkeypatch.setattr("gothic.tokenizer.READ_CHARS", 997)
    # a "long" line from 5000 characters: the tokenizer learns through the Python-side path too
    monkeypatch.setattr("gothic.tokenizer.HARD_CUT_CHARS", 5000)
    raw = write_golden_raw(tmp_path / "raw")
    cfg = PrepareConfig(sources=["raw"], val_fraction=0.25, seed=7, encoding_fallback="latin-1")
    digests, _ = run_data_stages(raw, tmp_path, cfg, 500)
    assert digests == SMALL
