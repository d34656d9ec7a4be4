"""Held-out evaluation: a deterministic full pass over the val bins in fp32 (the `evaluate` stage).

Unlike the periodic estimate during training (random batches), every val token is scored exactly
once: the stream is cut into non-overlapping windows of `block_size` tokens and the model sees
each window from its start. An `<|endoftext|>` is put in front of the stream so the first
document's first token is predicted from a document start, like every other document's.

Figures (see `evaluate_tokens`): mean nats per token (`val_loss`), `perplexity` = exp(val_loss),
and `bits_per_byte` = total nats / (ln 2 x UTF-8 bytes of the text), which, unlike loss per
token, compares models with different tokenizers. Per-document figures (a list in the order of
meta.json's documents, which `dvc metrics` leaves out of its tables) attribute each
`<|endoftext|>` separator to the document it ends (predicting where a book ends is part of
modelling it), so the documents' nats add up to the total.

    metrics = evaluate_checkpoint(Path("models/best.pt"), Path("data/bin"), params.evaluate)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gothic.checkpoint import load_model, resolve_device
from gothic.data import load_meta, load_split
from gothic.errors import GothicError
from gothic.generation import check_tokenizer_matches

if TYPE_CHECKING:
    from gothic.config import EvaluateConfig
    from gothic.model import GPT

Progress = Callable[[int], None]
LN2 = math.log(2)


def window_batches(n_tokens: int, block_size: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Group the windows [start, end) that tile 0..n_tokens into batches of equal-length windows.

    Every window is block_size long but the last, which goes in a batch of its own.
    """
    windows = [(s, min(s + block_size, n_tokens)) for s in range(0, n_tokens, block_size)]
    full = [w for w in windows if w[1] - w[0] == block_size]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    if windows and windows[-1][1] - windows[-1][0] < block_size:
        batches.append([windows[-1]])
    return batches


def _batch_tensors(tokens: np.ndarray, windows: list[tuple[int, int]], bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for windows over the targets; input i is target i - 1, with bos before 0."""
    inputs, targets = [], []
    for start, end in windows:
        target = np.asarray(tokens[start:end], dtype=np.int64)
        before = np.asarray(tokens[start - 1:end - 1], dtype=np.int64) if start else \
            np.concatenate([[bos], np.asarray(tokens[:end - 1], dtype=np.int64)])
        inputs.append(before)
        targets.append(target)
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def document_ids(n_tokens: int, starts: list[int]) -> np.ndarray:
    """The document each target position belongs to (a separator belongs to the document before it)."""
    return np.searchsorted(np.asarray(starts), np.arange(n_tokens), side="right") - 1


def score_tokens(model: GPT, tokens: np.ndarray, doc_starts: list[int], bos: int, batch_size: int,
                 device: torch.device, progress: Progress | None = None) -> np.ndarray:
    """Total nats per document for a full pass over a token stream.

    Args:
        model: a GPT in eval mode, in fp32.
        tokens: the split's token stream (a memmap is fine: read one batch at a time).
        doc_starts: offset of each document's first token in the stream (increasing, first 0).
        bos: the token put in front of the stream (<|endoftext|>).
        batch_size: windows per forward pass.
        device: where the model lives.
        progress: called with the number of tokens scored after each batch.
    Returns:
        float64 array of summed nats, one per document.
    """
    n_tokens, block_size = len(tokens), model.cfg.block_size
    doc_of = document_ids(n_tokens, doc_starts)
    nats = np.zeros(len(doc_starts), dtype=np.float64)
    for windows in window_batches(n_tokens, block_size, batch_size):
        inputs, targets = _batch_tensors(tokens, windows, bos)
        with torch.inference_mode():
            logits, _ = model(inputs.to(device))
            losses = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="none")
        positions = np.concatenate([np.arange(s, e) for s, e in windows])
        # summing in float64 per document keeps the total exact to far below the printed digits
        nats += np.bincount(doc_of[positions], weights=losses.double().cpu().numpy(), minlength=len(nats))
        if progress:
            progress(len(positions))
    return nats


def summarize(nats: np.ndarray, documents: list[dict], n_tokens: int, seconds: float) -> dict:
    """The metrics dict for metrics/eval.json from per-document nats and meta.json's documents."""
    n_docs = len(documents)
    # each document is scored with the separator that ends it; the last one has none
    doc_tokens = [d["tokens"] + (1 if i < n_docs - 1 else 0) for i, d in enumerate(documents)]
    total_bytes = sum(d["bytes"] for d in documents)
    mean = float(nats.sum() / n_tokens)
    # a list, not a dict: `dvc metrics show/diff` skip lists, so the table keeps to the headline figures
    per_doc = [{"index": i, "tokens": tokens, "bytes": doc["bytes"], "loss": round(float(doc_nats / tokens), 6),
                "bits_per_byte": round(float(doc_nats / (LN2 * doc["bytes"])), 6) if doc["bytes"] else 0.0}
               for i, (doc_nats, tokens, doc) in enumerate(zip(nats, doc_tokens, documents, strict=True))]
    return {
        "val_loss": round(mean, 6),
        "perplexity": round(math.exp(mean), 4),
        "bits_per_byte": round(float(nats.sum() / (LN2 * total_bytes)), 6),
        "tokens": n_tokens,
        "bytes": total_bytes,
        "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else 0.0,
        "documents": per_doc,
    }


def evaluate_tokens(model: GPT, tokens: np.ndarray, documents: list[dict], bos: int, batch_size: int = 8,
                    device: torch.device | str = "cpu", progress: Progress | None = None) -> dict:
    """Score a token stream laid out as meta.json describes it; returns the metrics dict.

    Args:
        documents: meta.json's per-document entries ({"start", "tokens", "bytes"}), in stream order.
        Others: as for `score_tokens`.
    """
    expected = sum(d["tokens"] for d in documents) + max(len(documents) - 1, 0)
    if not documents or expected != len(tokens):
        raise GothicError(f"the bins hold {len(tokens)} val tokens but meta.json's documents account for "
                          f"{expected}; rebuild them with `dvc repro -f binarize`")
    if sum(d["bytes"] for d in documents) == 0:
        raise GothicError("the val split has no text (0 bytes): nothing to evaluate")
    started = time.perf_counter()
    nats = score_tokens(model, tokens, [d["start"] for d in documents], bos, batch_size, torch.device(device),
                        progress)
    return summarize(nats, documents, len(tokens), time.perf_counter() - started)


def evaluate_checkpoint(checkpoint_path: Path, bin_dir: Path, cfg: EvaluateConfig,
                        progress_factory: Callable[[int], Progress] | None = None) -> dict:
    """The `evaluate` stage's core: load a checkpoint and the val bins, check they belong together,
    and score every val token in fp32.

    Args:
        checkpoint_path: e.g. models/best.pt.
        bin_dir: data/bin with val.bin and meta.json.
        cfg: the `evaluate` params (batch size, device).
        progress_factory: called with the total tokens; returns a callback that receives tokens done.
    Returns:
        the metrics dict (see `summarize`), plus the checkpoint's step.
    """
    device = resolve_device(cfg.device)
    model, info = load_model(checkpoint_path, device=device)
    meta = load_meta(bin_dir)
    check_tokenizer_matches(info, checkpoint_path, int(meta["vocab_size"]), meta["tokenizer_sha256"],
                            f"the bins in {bin_dir}")
    tokens = load_split(bin_dir, "val", meta)
    progress = progress_factory(len(tokens)) if progress_factory else None
    # fp32 on purpose: the figure must not depend on the autocast dtype training happened to use
    model = model.float().eval()
    metrics = evaluate_tokens(model, tokens, meta["splits"]["val"]["documents"], int(meta["eot_id"]),
                              cfg.batch_size, device, progress)
    return {"step": int(info["step"]), **metrics}
