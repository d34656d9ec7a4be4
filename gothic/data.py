"""Token bins: encode the split texts into flat memmap-able arrays, and sample training batches.

Layout of `data/bin/`: `train.bin` and `val.bin` hold one token stream per split (documents
separated by `<|endoftext|>`), `uint16` when the vocabulary fits, `uint32` above; `meta.json`
records the dtype, token and byte counts per split and per document, and the tokenizer's sha256
so training can refuse bins made with another tokenizer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from gothic.config import UINT16_VOCAB_LIMIT
from gothic.corpus import read_documents
from gothic.errors import GothicError
from gothic.files import write_json, write_with
from gothic.tokenizer import eot_id, load_tokenizer, tokenizer_sha256

if TYPE_CHECKING:
    import torch

META_VERSION = 1
SPLITS = ("train", "val")
# Documents are cut into pieces of about this many characters so encode_batch has work for every
# core and the progress bar moves, even for a corpus of a few huge books.
PIECE_CHARS = 1 << 16

Progress = Callable[[int], None]


def bin_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= UINT16_VOCAB_LIMIT else np.uint32)


def split_into_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut text at newlines that stand between two non-space characters, about every `size` chars.

    The byte-level pre-tokenizer always makes such a newline a token of its own, so encoding the
    pieces separately gives exactly the tokens of encoding the whole text.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and not (cut + 1 < len(text) and not text[cut - 1].isspace()
                                 and not text[cut + 1].isspace()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        pieces.append(text[start:cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def encode_documents(tok: Tokenizer, docs: list[str], progress: Progress | None = None,
                     batch_pieces: int = 64) -> list[np.ndarray]:
    """Encode each document with the parallel `encode_batch`; returns one int array per document."""
    pieces, owner = [], []
    for i, doc in enumerate(docs):
        for piece in split_into_pieces(doc):
            pieces.append(piece)
            owner.append(i)
    ids: list[list[int]] = [[] for _ in docs]
    for start in range(0, len(pieces), batch_pieces):
        chunk = pieces[start:start + batch_pieces]
        for j, enc in enumerate(tok.encode_batch(chunk, add_special_tokens=False)):
            ids[owner[start + j]].extend(enc.ids)
        if progress:
            progress(sum(len(p) for p in chunk))
    return [np.asarray(x, dtype=np.int64) for x in ids]


def binarize(processed_dir: Path, tokenizer_path: Path, out_dir: Path,
             progress_factory: Callable[[int], Progress] | None = None) -> dict:
    """Encode `processed_dir/{train,val}.txt` into `out_dir/{train,val}.bin` and `meta.json`.

    Args:
        processed_dir: folder with the texts written by the prepare stage.
        tokenizer_path: tokenizer.json from the tokenize stage.
        out_dir: where the bins and meta.json go.
        progress_factory: called with the total characters to encode; returns a callback that
            receives characters done (the stage passes a rich progress bar).
    Returns:
        the meta dict that was written to meta.json.
    """
    tok = load_tokenizer(tokenizer_path)
    eot = eot_id(tok)
    dtype = bin_dtype(tok.get_vocab_size())
    split_docs = {split: read_documents(processed_dir / f"{split}.txt") for split in SPLITS}
    total_chars = sum(len(d) for docs in split_docs.values() for d in docs)
    progress = progress_factory(total_chars) if progress_factory else None
    meta = {"version": META_VERSION, "dtype": dtype.name, "vocab_size": tok.get_vocab_size(), "eot_id": eot,
            "tokenizer_sha256": tokenizer_sha256(tokenizer_path), "splits": {}}
    for split, docs in split_docs.items():
        encoded = encode_documents(tok, docs, progress)
        stream, documents, offset = [], [], 0
        for doc, ids in zip(docs, encoded, strict=True):
            if stream:  # separator between documents, as in the text files
                stream.append(np.array([eot], dtype=np.int64))
                offset += 1
            stream.append(ids)
            documents.append({"start": offset, "tokens": int(len(ids)), "bytes": len(doc.encode("utf-8"))})
            offset += len(ids)
        tokens = np.concatenate(stream).astype(dtype)
        write_with(out_dir / f"{split}.bin", lambda tmp, arr=tokens: arr.tofile(tmp))
        meta["splits"][split] = {"tokens": int(tokens.size), "bytes": sum(d["bytes"] for d in documents),
                                 "documents": documents}
    write_json(out_dir / "meta.json", meta)
    return meta


def load_meta(bin_dir: Path) -> dict:
    path = Path(bin_dir) / "meta.json"
    if not path.is_file():
        raise GothicError(f"{path}: not found; build the bins first (`dvc repro binarize`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise GothicError(f"{path}: not valid JSON; rebuild it with `dvc repro -f binarize`") from None
    if meta.get("version") != META_VERSION:
        raise GothicError(f"{path}: bins of format {meta.get('version')!r}, this gothic reads {META_VERSION}; "
                          "rebuild them with `dvc repro -f binarize`")
    return meta


def load_split(bin_dir: Path, split: str, meta: dict | None = None) -> np.memmap:
    """Memory-map one split's tokens (read-only); checks its size against meta.json."""
    meta = meta or load_meta(bin_dir)
    path = Path(bin_dir) / f"{split}.bin"
    if not path.is_file():
        raise GothicError(f"{path}: not found; build the bins first (`dvc repro binarize`)")
    data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    if data.size != meta["splits"][split]["tokens"]:
        raise GothicError(f"{path}: holds {data.size} tokens but meta.json says {meta['splits'][split]['tokens']}; "
                          "rebuild with `dvc repro -f binarize`")
    return data


class BatchSampler:
    """Random training windows from a token memmap, reproducible and resumable.

    Batch number n is drawn from a generator seeded with (seed, rank, n), so the sampler's whole
    state is the count of batches drawn: resuming needs only that integer, and each DDP rank
    draws different windows.
    """

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0):
        if data.size <= block_size:
            raise GothicError(f"a split of {data.size} tokens cannot fill one window of block_size={block_size} "
                              "(+1 target); lower model.block_size or add text")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.seed, self.rank, self.batches_drawn = seed, rank, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each int64 of shape (batch_size, block_size)."""
        import torch  # here, not at the top: the binarize stage needs no torch and starts a second faster

        rng = np.random.default_rng([self.seed, self.rank, self.batches_drawn])
        self.batches_drawn += 1
        starts = rng.integers(0, self.data.size - self.block_size, size=self.batch_size)
        window = np.stack([self.data[s:s + self.block_size + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.batches_drawn = int(state["batches_drawn"])


def bins_for(data_dir: Path, train_file: str, val_file: str, tokenizer_path: Path,
             cache_dir: Path) -> tuple[Path, str, str]:
    """The bins gothic-train trains on: (folder, train name, val name).

    Bins (`*.bin` beside a meta.json) are used as they are. Text files, as the seed's CLI takes them
    (`--data-dir data/processed --train-file train.txt`), are encoded once into cache_dir by the
    same `binarize` as the stage, and again only when a text or the tokenizer changes.
    """
    if train_file.endswith(".bin") and val_file.endswith(".bin"):
        return data_dir, train_file, val_file
    texts = {"train": data_dir / train_file, "val": data_dir / val_file}
    for path in texts.values():
        if not path.is_file():
            raise GothicError(f"{path}: not found; write the splits first (gothic-prepare, or `dvc repro prepare`), "
                              "or point --data-dir, --train-file and --val-file at your text files")
    if not Path(tokenizer_path).is_file():
        raise GothicError(f"{tokenizer_path}: tokenizer not found; train one first (gothic-tokenize)")
    stamp = {split: [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
             for split, path in texts.items()}
    stamp["tokenizer_sha256"] = tokenizer_sha256(tokenizer_path)
    stamp_path = cache_dir / "sources.json"
    if (cache_dir / "meta.json").is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return cache_dir, "train.bin", "val.bin"
    with tempfile.TemporaryDirectory() as staging:  # binarize reads {train,val}.txt: name the texts so
        for split, path in texts.items():
            (Path(staging) / f"{split}.txt").symlink_to(path.resolve())
        binarize(Path(staging), Path(tokenizer_path), cache_dir)
    write_json(stamp_path, stamp)
    return cache_dir, "train.bin", "val.bin"
