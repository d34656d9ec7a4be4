"""Held-out evaluation: every val token scored once, exact figures on a known case, clear errors."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from gothic.config import EvaluateConfig
from gothic.data import binarize, load_meta, load_split
from gothic.errors import GothicError
from gothic.evaluate import evaluate_checkpoint, evaluate_tokens, score_tokens, window_batches
from gothic.tokenizer import EOT

from conftest import GENERATION_TEXT, ROOT, committed_text, save_tiny_checkpoint, tiny_gpt, uniform_gpt

CPU = EvaluateConfig(batch_size=3, device="cpu")


@pytest.fixture(scope="module")
def bins(tiny_tokenizer_path, tmp_path_factory):
    """data/bin for three val documents (one with multi-byte characters) made by the real binarize."""
    folder = tmp_path_factory.mktemp("data")
    processed = folder / "processed"
    processed.mkdir()
    (processed / "train.txt").write_text(GENERATION_TEXT, encoding="utf-8")
    val_docs = [GENERATION_TEXT * 2, "A short one — naïve.", GENERATION_TEXT.upper()]
    (processed / "val.txt").write_text(EOT.join(val_docs), encoding="utf-8")
    binarize(processed, tiny_tokenizer_path, folder / "bin")
    return folder / "bin"


@pytest.mark.parametrize("n_tokens, block_size, batch_size", [(1, 4, 2), (8, 4, 1), (9, 4, 2), (100, 7, 3), (5, 32, 8)])
def test_windows_cover_every_position_exactly_once(n_tokens, block_size, batch_size):
    batches = window_batches(n_tokens, block_size, batch_size)
    positions = [p for batch in batches for s, e in batch for p in range(s, e)]
    assert positions == list(range(n_tokens))
    for batch in batches:  # a batch stacks windows of one length
        assert len(batch) <= batch_size and len({e - s for s, e in batch}) == 1


@pytest.mark.parametrize("n_tokens, block_size, max_tokens", [(1000, 10, 100), (1000, 7, 300), (95, 10, 50)])
def test_capped_windows_are_evenly_spread_and_within_the_cap(n_tokens, block_size, max_tokens):
    windows = [w for batch in window_batches(n_tokens, block_size, 4, max_tokens) for w in batch]
    assert sum(e - s for s, e in windows) <= max_tokens and len(windows) == max_tokens // block_size
    assert all(e - s == block_size for s, e in windows) and windows == sorted(set(windows))
    starts = [s for s, _ in windows]
    assert starts[0] == 0 and starts[-1] >= n_tokens - 2 * n_tokens // len(windows)  # reaches the end
    assert window_batches(n_tokens, block_size, 4, n_tokens) == window_batches(n_tokens, block_size, 4)


def test_a_cap_scores_that_many_tokens_of_every_document(bins):
    meta = load_meta(bins)
    tokens, docs, vocab = load_split(bins, "val", meta), meta["splits"]["val"]["documents"], meta["vocab_size"]
    full = evaluate_tokens(uniform_gpt(vocab, block_size=8), tokens, docs, meta["eot_id"], batch_size=4)
    assert evaluate_tokens(uniform_gpt(vocab, block_size=8), tokens, docs, meta["eot_id"], batch_size=4,
                           max_tokens=len(tokens)) == {**full, "eval_tokens_per_second": pytest.approx(0, abs=1e9)}
    capped = evaluate_tokens(uniform_gpt(vocab, block_size=8), tokens, docs, meta["eot_id"], batch_size=4,
                             max_tokens=len(tokens) // 3)
    assert capped["split_tokens"] == len(tokens) and capped["eval_tokens"] == 8 * (len(tokens) // 3 // 8)
    assert capped["val_loss"] == pytest.approx(math.log(vocab), abs=1e-6)
    assert sum(d["tokens"] for d in capped["documents"]) == capped["eval_tokens"]
    assert len(capped["documents"]) == 3  # evenly spaced windows reach every document here
    # bytes in proportion to the scored share of each document: bits per byte near the full pass's
    assert capped["bits_per_byte"] == pytest.approx(full["bits_per_byte"], rel=0.1)


def test_uniform_model_scores_ln_vocab_per_token(bins):
    meta = load_meta(bins)
    tokens = load_split(bins, "val", meta)
    vocab = meta["vocab_size"]
    metrics = evaluate_tokens(uniform_gpt(vocab, block_size=16), tokens, meta["splits"]["val"]["documents"],
                              meta["eot_id"], batch_size=4)
    n, n_bytes = meta["splits"]["val"]["tokens"], meta["splits"]["val"]["bytes"]
    assert metrics["eval_tokens"] == n and metrics["eval_bytes"] == n_bytes
    assert metrics["val_loss"] == pytest.approx(math.log(vocab), abs=1e-6)
    assert metrics["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(n * math.log(vocab) / (math.log(2) * n_bytes), abs=1e-6)
    docs = metrics["documents"]
    assert [d["name"] for d in docs] == [f"val document {i}" for i in range(3)]
    assert sum(d["tokens"] for d in docs) == n
    assert sum(d["bytes"] for d in docs) == n_bytes
    for doc in docs:
        assert doc["loss"] == pytest.approx(math.log(vocab), abs=1e-6)


def test_scores_match_the_models_own_loss_on_each_window(bins):
    """Input i is target i - 1, with <|endoftext|> before the first: the model's mean loss on the
    same windows, times their lengths, must add up to the total."""
    meta = load_meta(bins)
    tokens = np.asarray(load_split(bins, "val", meta), dtype=np.int64)
    model = tiny_gpt(meta["vocab_size"], block_size=16, weight_std=0.3)
    starts = [d["start"] for d in meta["splits"]["val"]["documents"]]
    total = score_tokens(model, tokens, starts, meta["eot_id"], batch_size=4, device=torch.device("cpu")).sum()
    stream = np.concatenate([[meta["eot_id"]], tokens])
    expected = 0.0
    for s in range(0, len(tokens), 16):
        e = min(s + 16, len(tokens))
        x, y = torch.from_numpy(stream[s:e])[None], torch.from_numpy(stream[s + 1:e + 1])[None]
        with torch.no_grad():
            expected += model(x, y)[1].item() * (e - s)
    assert total == pytest.approx(expected, rel=1e-5)
    # the batch size changes nothing but speed
    again = score_tokens(model, tokens, starts, meta["eot_id"], batch_size=1, device=torch.device("cpu")).sum()
    assert again == pytest.approx(total, rel=1e-6)


def test_evaluate_checkpoint_reads_bins_and_checkpoint(bins, tiny_tokenizer_path, tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", uniform_gpt(load_meta(bins)["vocab_size"]), tiny_tokenizer_path)
    documents = tmp_path / "documents.json"
    documents.write_text(json.dumps({"train": ["a.txt"], "val": ["raw/x.txt", "raw/y.md", "builtin/hamlet"]}))
    metrics = evaluate_checkpoint(ckpt, bins, CPU, documents_path=documents)
    assert metrics["checkpoint_step"] == 7 and metrics["eval_tokens_per_second"] > 0
    assert [d["name"] for d in metrics["documents"]] == ["raw/x.txt", "raw/y.md", "builtin/hamlet"]
    assert metrics["val_loss"] == pytest.approx(math.log(load_meta(bins)["vocab_size"]), abs=1e-6)


def test_bins_from_another_tokenizer_are_refused(bins, tiny_tokenizer_path, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(tiny_tokenizer_path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", uniform_gpt(300), other)
    with pytest.raises(GothicError, match="is not the tokenizer"):
        evaluate_checkpoint(ckpt, bins, CPU)


def test_bins_that_disagree_with_meta_are_refused(bins):
    meta = load_meta(bins)
    docs = meta["splits"]["val"]["documents"][:-1]
    with pytest.raises(GothicError, match="rebuild them"):
        evaluate_tokens(uniform_gpt(300), load_split(bins, "val", meta), docs, meta["eot_id"])


def test_stage_writes_metrics(bins, tiny_tokenizer_path, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", tiny_gpt(300), tiny_tokenizer_path)
    stage.main(str(ckpt), str(bins), "metrics/eval.json")
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert {"val_loss", "perplexity", "bits_per_byte", "eval_tokens_per_second", "documents"} <= metrics.keys()
