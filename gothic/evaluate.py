"""Held-out evaluation: a deterministic full pass over the val bins in fp32 (the `evaluate` stage).

Unlike the periodic estimate during training (random batches), every val token is scored exactly
once: the stream is cut into non-overlapping windows of `block_size` tokens and the model sees
each window from its start. A split of more than `evaluate.max_tokens` tokens is scored on that
many tokens only: whole windows at evenly spaced positions (deterministic, spread over every
document), so the cost stays bounded however large the corpus; each document's bytes are then
counted in proportion to its scored tokens for bits per byte. An `<|endoftext|>` is put in front
of the stream so the first document's first token is predicted from a document start, like every
other document's.

Figures (see `evaluate_tokens`): mean nats per token (`val_loss`), `perplexity` = exp(val_loss),
and `bits_per_byte` = total nats / (ln 2 x UTF-8 bytes of the text), which, unlike loss per
token, compares models with different tokenizers. Per-document figures (a list in the order of
meta.json's documents, which `dvc metrics` leaves out of its tables) attribute each
`<|endoftext|>` separator to the document it ends (predicting where a book ends is part of
modelling it), so the documents' nats add up to the total.

    metrics = evaluate_checkpoint(Path("models/best.pt"), Path("data/bin"), params.evaluate)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gothic.checkpoint import TokenizerIdentity, check_same_tokenizer
from gothic.corpus import Source, clean_source, raw_files, shown
from gothic.data import encode_documents, load_meta, load_split
from gothic.errors import GothicError
from gothic.loading import load_model, resolve_tokenizer
from gothic.runtime import resolve_device
from gothic.tokenizer import EOT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gothic.config import EvaluateConfig
    from gothic.model import GPT

Progress = Callable[[int], None]
LN2 = math.log(2)


def select_windows(n_tokens: int, block_size: int, max_tokens: int = 0) -> list[tuple[int, int]]:
    """The windows [start, end) to score: all that tile 0..n_tokens, or with more than max_tokens
    (> 0) tokens, max_tokens // block_size full windows at evenly spaced positions."""
    windows = [(s, min(s + block_size, n_tokens)) for s in range(0, n_tokens, block_size)]
    if not max_tokens or n_tokens <= max_tokens:
        return windows
    full = [w for w in windows if w[1] - w[0] == block_size] or windows
    keep = min(len(full), max(1, max_tokens // block_size))
    return [full[j * len(full) // keep] for j in range(keep)]


def window_batches(n_tokens: int, block_size: int, batch_size: int, max_tokens: int = 0) -> list[list[tuple[int, int]]]:
    """Group the windows [start, end) to score (see `select_windows`) into batches of
    equal-length windows.

    Every window is block_size long but the last, which goes in a batch of its own.
    """
    windows = select_windows(n_tokens, block_size, max_tokens)
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
                 device: torch.device, progress: Progress | None = None, max_tokens: int = 0) -> np.ndarray:
    """Total nats per document for a full pass over a token stream (or max_tokens of it).

    Args:
        model: a GPT in eval mode, in fp32.
        tokens: the split's token stream (a memmap is fine: read one batch at a time).
        doc_starts: offset of each document's first token in the stream (increasing, first 0).
        bos: the token put in front of the stream (<|endoftext|>).
        batch_size: windows per forward pass.
        device: where the model lives.
        progress: called with the number of tokens scored after each batch.
        max_tokens: the cap (0: every token); see `select_windows`.
    Returns:
        float64 array of summed nats, one per document.
    """
    n_tokens, block_size = len(tokens), model.cfg.block_size
    doc_of = document_ids(n_tokens, doc_starts)
    nats = np.zeros(len(doc_starts), dtype=np.float64)
    for windows in window_batches(n_tokens, block_size, batch_size, max_tokens):
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


def summarize(nats: np.ndarray, documents: list[dict], n_tokens: int, seconds: float,
              scored: np.ndarray | None = None, names: list[str] | None = None) -> dict:
    """The metrics dict for metrics/eval.json from per-document nats and meta.json's documents.

    names (documents.json's val list, in the same order) label the per-document figures; without
    them a document is known by its index in the val split. The figures' names are unique across
    the pipeline's metrics files, so `dvc exp show` needs no file prefixes to tell them apart.

    `scored` (tokens scored per document) is given when a cap left tokens out: each document's
    bytes are then taken in proportion, and documents with nothing scored are left out of the list.
    """
    n_docs = len(documents)
    # each document is scored with the separator that ends it; the last one has none
    doc_tokens = [d["tokens"] + (1 if i < n_docs - 1 else 0) for i, d in enumerate(documents)]
    doc_bytes = [d["bytes"] for d in documents]
    if scored is not None:
        doc_bytes = [b * int(s) / t if t else 0.0 for b, s, t in zip(doc_bytes, scored, doc_tokens, strict=True)]
        doc_tokens = [int(s) for s in scored]
    total_bytes = sum(doc_bytes)
    mean = float(nats.sum() / n_tokens)
    # a list, not a dict: `dvc metrics show/diff` skip lists, so the table keeps to the headline figures
    if names is None or len(names) != n_docs:
        names = [f"val document {i}" for i in range(n_docs)]
    per_doc = [{"name": names[i], "tokens": tokens, "bytes": round(n_bytes) if scored is not None else n_bytes,
                "loss": round(float(doc_nats / tokens), 6),
                "bits_per_byte": round(float(doc_nats / (LN2 * n_bytes)), 6) if n_bytes else 0.0}
               for i, (doc_nats, tokens, n_bytes) in enumerate(zip(nats, doc_tokens, doc_bytes, strict=True))
               if tokens]
    return {
        "val_loss": round(mean, 6),
        "perplexity": round(math.exp(mean), 4),
        "bits_per_byte": round(float(nats.sum() / (LN2 * total_bytes)), 6),
        "eval_tokens": n_tokens,
        "eval_bytes": round(total_bytes) if scored is not None else total_bytes,
        "eval_tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else 0.0,
        "documents": per_doc,
    }


def evaluate_tokens(model: GPT, tokens: np.ndarray, documents: list[dict], bos: int, batch_size: int = 8,
                    device: torch.device | str = "cpu", progress: Progress | None = None,
                    max_tokens: int = 0, names: list[str] | None = None) -> dict:
    """Score a token stream laid out as meta.json describes it; returns the metrics dict.

    With more than max_tokens (> 0) tokens, scores max_tokens of them (see `select_windows`) and
    adds "split_tokens" (the stream's length) to the metrics.

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
    starts = [d["start"] for d in documents]
    nats = score_tokens(model, tokens, starts, bos, batch_size, torch.device(device), progress, max_tokens)
    seconds = time.perf_counter() - started
    if not max_tokens or len(tokens) <= max_tokens:
        return summarize(nats, documents, len(tokens), seconds, names=names)
    windows = select_windows(len(tokens), model.cfg.block_size, max_tokens)
    positions = np.concatenate([np.arange(s, e) for s, e in windows])
    scored = np.bincount(document_ids(len(tokens), starts)[positions], minlength=len(documents))
    return {**summarize(nats, documents, int(scored.sum()), seconds, scored, names), "split_tokens": len(tokens)}


def val_document_names(documents_path: Path | None) -> list[str] | None:
    """The held-out documents' names from prepare's documents.json; None when there is none to read."""
    if documents_path is None or not Path(documents_path).is_file():
        return None
    try:
        names = json.loads(Path(documents_path).read_text(encoding="utf-8")).get("val")
    except (ValueError, AttributeError):
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def heldout_texts(path: Path) -> list[tuple[str, str]]:
    """(name, cleaned text) of each document of an extra held-out set: a .txt/.md file or a folder of
    them, cleaned as prepare cleans books (Gutenberg header and licence, line ends, Unicode). A file
    may hold several documents separated by <|endoftext|>, as prepare's val.txt does."""
    if not path.exists():
        raise GothicError(f"evaluate.extra: {path} does not exist; give a text file or a folder of .txt/.md files")
    files = raw_files(path) if path.is_dir() else [path]
    if not files:
        raise GothicError(f"evaluate.extra: {path}/ holds no .txt or .md files")
    documents = []
    for file in files:
        parts = [p for p in (clean_source(Source(file.name, file, builtin=False), "none") or "").split(EOT) if p]
        documents += [(shown(file) + (f" #{i + 1}" if len(parts) > 1 else ""), p) for i, p in enumerate(parts)]
    return documents


def evaluate_texts(model: GPT, tok: Tokenizer, texts: list[tuple[str, str]], cfg: EvaluateConfig,
                   device: torch.device) -> dict:
    """Score documents as the val split is scored (one stream, <|endoftext|> between documents): the
    headline figures of `evaluate_tokens`."""
    eot = tok.token_to_id(EOT)
    encoded = encode_documents(tok, [text for _, text in texts])
    documents, start = [], 0
    for ids, (_, text) in zip(encoded, texts, strict=True):
        documents.append({"start": start, "tokens": len(ids), "bytes": len(text.encode("utf-8"))})
        start += len(ids) + 1
    stream = np.concatenate([np.concatenate([ids, [eot]]) for ids in encoded])[:-1]
    if len(stream) <= model.cfg.block_size:
        raise GothicError(f"evaluate.extra: {len(stream)} tokens cannot fill one window of {model.cfg.block_size}; "
                          "add text to the held-out set")
    metrics = evaluate_tokens(model, stream, documents, eot, cfg.batch_size, device, None, cfg.max_tokens,
                              [name for name, _ in texts])
    return {k: metrics[k] for k in ("bits_per_byte", "val_loss", "perplexity", "eval_tokens")}


def extra_texts(entries: list[str]) -> dict[str, list[tuple[str, str]]]:
    """evaluate.extra's sets by the name metrics/eval.json gives them: a file's stem, a folder's name."""
    names = [Path(entry).stem if Path(entry).is_file() else Path(entry).name for entry in entries]
    if len(set(names)) < len(names):
        raise GothicError(f"evaluate.extra: two sets have the same name ({', '.join(names)}); rename one")
    return {name: heldout_texts(Path(entry)) for name, entry in zip(names, entries, strict=True)}


def evaluate_checkpoint(checkpoint_path: Path, bin_dir: Path, cfg: EvaluateConfig,
                        progress_factory: Callable[[int], Progress] | None = None,
                        documents_path: Path | None = None) -> dict:
    """The `evaluate` stage's core: load a checkpoint and the val bins, check they belong together,
    and score every val token in fp32.

    Args:
        checkpoint_path: e.g. models/best.pt.
        bin_dir: data/bin with val.bin and meta.json.
        cfg: the `evaluate` params (batch size, token cap, device).
        progress_factory: called with the tokens to score; returns a callback that receives tokens done.
        documents_path: prepare's documents.json, whose val names label the per-document figures.
    Returns:
        the metrics dict (see `summarize`), plus the checkpoint's step.
    """
    device = resolve_device(cfg.device)
    model, info = load_model(checkpoint_path, device=device)
    meta = load_meta(bin_dir)
    check_same_tokenizer(info.tokenizer_identity, checkpoint_path,
                         TokenizerIdentity(int(meta["vocab_size"]), meta["tokenizer_sha256"]), f"the bins in {bin_dir}",
                         "evaluate with the bins and tokenizer the model was trained with")
    extra = extra_texts(cfg.extra)  # read (and refused) before the long part
    tokens = load_split(bin_dir, "val", meta)
    to_score = sum(e - s for s, e in select_windows(len(tokens), model.cfg.block_size, cfg.max_tokens))
    progress = progress_factory(to_score) if progress_factory else None
    # fp32 on purpose: the figure must not depend on the autocast dtype training happened to use
    model = model.float().eval()
    metrics = evaluate_tokens(model, tokens, meta["splits"]["val"]["documents"], int(meta["eot_id"]),
                              cfg.batch_size, device, progress, cfg.max_tokens, val_document_names(documents_path))
    metrics = {"checkpoint_step": info.step, **metrics}
    if extra:
        tok = resolve_tokenizer(checkpoint_path, info, None)[0]
        metrics["extra"] = {name: evaluate_texts(model, tok, docs, cfg, device) for name, docs in extra.items()}
    return metrics
