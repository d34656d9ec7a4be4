"""Token bins: encode the split texts into flat memmap-able arrays, and sample training batches.

Layout of `data/bin/`: `train.bin` and `val.bin` hold one token stream per split (documents
separated by `<|endoftext|>`), `uint16` when the vocabulary fits, `uint32` above; `meta.json`
records the dtype, token and byte counts per split and per document, and the tokenizer's sha256
so training can refuse bins made with another tokenizer.

`binarize` streams: the texts are read in blocks and cut into pieces that encode exactly like
the whole (gothic.tokenizer.iter_pieces), batches of pieces are encoded word by word through a
bounded cache (gothic.tokenizer.CachedEncoder), in worker processes on every core for a large
text (gothic.tokenizer.encode_file), and the tokens are appended to the bins in order, so memory
stays flat whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from gothic.config import UINT16_VOCAB_LIMIT
from gothic.errors import GothicError
from gothic.files import atomic_paths, json_text, write_json
from gothic.tokenizer import EOT, encode_batch, encode_file, eot_id, load_tokenizer, split_into_pieces, tokenizer_sha256

if TYPE_CHECKING:
    import torch

__all__ = ["split_into_pieces", "binarize", "encode_documents", "load_meta", "load_split", "BatchSampler",
           "BatchStream", "StepBatches",
           "TrainingData", "load_training_data", "data_fingerprint"]

META_VERSION = 1
SPLITS = ("train", "val")
Progress = Callable[[int], None]


def bin_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= UINT16_VOCAB_LIMIT else np.uint32)


def encode_documents(tok: Tokenizer, docs: list[str]) -> list[np.ndarray]:
    """Encode whole documents in memory (small inputs); one int64 array per document."""
    return [np.asarray([i for ids in encode_batch(tok, split_into_pieces(doc)) for i in ids], dtype=np.int64)
            for doc in docs]


def encode_split(tokenizer_path: Path, text_path: Path, out, dtype: np.dtype, eot: int,
                 progress: Progress | None = None) -> dict:
    """Encode one split text into the open binary file `out`; returns its meta.json entry."""
    separator = np.array([eot], dtype=dtype).tobytes()
    documents, offset, doc_tokens, doc_bytes, doc_started = [], 0, 0, 0, False
    for ids, n_bytes, ends in encode_file(tokenizer_path, text_path, dtype.name):
        if not doc_started and documents:  # separator between documents, as in the text
            out.write(separator)
            offset += 1
            if progress:
                progress(len(EOT))
        doc_started = True
        out.write(ids)
        doc_tokens += len(ids) // dtype.itemsize
        doc_bytes += n_bytes
        if progress:
            progress(n_bytes)
        if ends:
            documents.append({"start": offset, "tokens": doc_tokens, "bytes": doc_bytes})
            offset += doc_tokens
            doc_tokens, doc_bytes, doc_started = 0, 0, False
    return {"tokens": offset, "bytes": sum(d["bytes"] for d in documents), "documents": documents}


def binarize(processed_dir: Path, tokenizer_path: Path, out_dir: Path,
             progress_factory: Callable[[int], Progress] | None = None) -> dict:
    """Encode `processed_dir/{train,val}.txt` into `out_dir/{train,val}.bin` and `meta.json`.

    The three outputs are replaced together, and only when both splits encoded without error.

    Args:
        processed_dir: folder with the texts written by the prepare stage.
        tokenizer_path: tokenizer.json from the tokenize stage.
        out_dir: where the bins and meta.json go.
        progress_factory: called with the total bytes to read; returns a callback that receives
            bytes done (the stage passes a rich progress bar).
    Returns:
        the meta dict that was written to meta.json.
    """
    tok = load_tokenizer(tokenizer_path)
    dtype = bin_dtype(tok.get_vocab_size())
    texts = {split: Path(processed_dir) / f"{split}.txt" for split in SPLITS}
    for path in texts.values():
        if not path.is_file():
            raise GothicError(f"{path}: not found; run the prepare stage first (`dvc repro prepare`)")
    progress = progress_factory(sum(p.stat().st_size for p in texts.values())) if progress_factory else None
    meta = {"version": META_VERSION, "dtype": dtype.name, "vocab_size": tok.get_vocab_size(), "eot_id": eot_id(tok),
            "tokenizer_sha256": tokenizer_sha256(tokenizer_path), "splits": {}}
    out_dir = Path(out_dir)
    with atomic_paths(*(out_dir / f"{split}.bin" for split in SPLITS), out_dir / "meta.json") as tmps:
        for split, tmp in zip(SPLITS, tmps, strict=False):
            with open(tmp, "wb") as out:
                meta["splits"][split] = encode_split(tokenizer_path, texts[split], out, dtype, eot_id(tok), progress)
        tmps[-1].write_text(json_text(meta), encoding="utf-8")
    return meta


def load_meta(bin_dir: Path) -> dict:
    path = Path(bin_dir) / "meta.json"
    if not path.is_file():
        raise GothicError(f"{path}: not found; build the bins first (`dvc repro binarize`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise GothicError(f"{path}: not valid JSON; rebuild it with `dvc repro -f binarize`") from None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise GothicError(f"{path}: bins of format {version!r}, this gothic reads {META_VERSION}; "
                          "rebuild them with `dvc repro -f binarize`")
    if problem := meta_problem(meta):
        raise GothicError(f"{path}: {problem}; the file is damaged: rebuild the bins with `dvc repro -f binarize`")
    return meta


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a meta.json's values (None: they are what binarize writes)."""
    if meta.get("dtype") not in ("uint16", "uint32"):
        return f"dtype {meta.get('dtype')!r} is not uint16 or uint32"
    if not _count(meta.get("vocab_size")) or not _count(meta.get("eot_id")) or meta["eot_id"] >= meta["vocab_size"]:
        return "vocab_size and eot_id are not token counts (eot_id below vocab_size)"
    if not isinstance(meta.get("tokenizer_sha256"), str):
        return "tokenizer_sha256 is not a string"
    splits = meta.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        return f"splits is not a mapping of {' and '.join(SPLITS)}"
    for name, split in splits.items():
        documents = split.get("documents") if isinstance(split, dict) else None
        if not (_count(split.get("tokens") if documents is not None else None) and isinstance(documents, list)
                and all(isinstance(d, dict) and all(_count(d.get(k)) for k in ("start", "tokens", "bytes"))
                        for d in documents)):
            return f"the {name} split has no token count or document list"
    return None


def load_split(bin_dir: Path, split: str, meta: dict | None = None) -> np.memmap:
    """Memory-map one split's tokens (read-only); checks its size against meta.json."""
    meta = meta or load_meta(bin_dir)
    path = Path(bin_dir) / f"{split}.bin"
    if not path.is_file():
        raise GothicError(f"{path}: not found; build the bins first (`dvc repro binarize`)")
    data = memmap_tokens(path, meta["dtype"])
    if data.size != meta["splits"][split]["tokens"]:
        raise GothicError(f"{path}: holds {data.size} tokens but meta.json says {meta['splits'][split]['tokens']}; "
                          "rebuild with `dvc repro -f binarize`")
    return data


def memmap_tokens(path: Path, dtype: str) -> np.ndarray:
    """A bin's tokens, memory-mapped read-only; a size that is no whole number of tokens (a cut or
    foreign file) or an empty file is a GothicError."""
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size == 0 or size % itemsize:
        raise GothicError(f"{path}: {size} bytes is no whole number of {dtype} tokens (or none); the file is cut or "
                          "not a bin: rebuild the bins with `dvc repro -f binarize`")
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


@dataclass
class TrainingData:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_sha256: str
    fingerprint: str = ""
    """Identifies the bins (gothic.rundir.data_fingerprint), part of the run key."""
    tokenizer_json: str = ""
    """The tokenizer.json text; every checkpoint carries it, so a model needs no other file."""


def _load_tokens(bin_dir: Path, file_name: str, split: str, meta: dict, block_size: int,
                 remedy: str = "lower model.block_size or add text") -> np.ndarray:
    """Memory-map one split; a split too short for a single window is a GothicError saying `remedy`."""
    if file_name == f"{split}.bin":
        data = load_split(bin_dir, split, meta)
    else:  # a differently named file: meta.json cannot vouch for its length
        path = bin_dir / file_name
        if not path.is_file():
            raise GothicError(f"{path}: not found; build the bins first (`dvc repro binarize`)")
        data = memmap_tokens(path, meta["dtype"])
    if data.size <= block_size:
        raise GothicError(f"{bin_dir / file_name}: {data.size} tokens cannot fill one window of "
                          f"model.block_size={block_size} (+1 target); {remedy}")
    return data


def load_training_data(bin_dir: Path, tokenizer_path: Path, block_size: int, train_file: str = "train.bin",
                       val_file: str = "val.bin", too_short: str = "lower model.block_size or add text"
                       ) -> TrainingData:
    """Open the bins and check they were built with this tokenizer (too_short: what to do about a split
    shorter than one window)."""
    meta = load_meta(bin_dir)
    if not Path(tokenizer_path).is_file():
        raise GothicError(f"{tokenizer_path}: tokenizer not found (run `dvc repro tokenize` or pass --tokenizer)")
    tokenizer_json = Path(tokenizer_path).read_bytes().decode("utf-8")  # bytes: the hash covers exactly these
    sha = tokenizer_sha256(tokenizer_path)
    if sha != meta.get("tokenizer_sha256"):
        raise GothicError(f"{bin_dir}/meta.json: bins were built with another tokenizer than {tokenizer_path}; "
                          "rebuild them with `dvc repro binarize`")
    return TrainingData(_load_tokens(bin_dir, train_file, "train", meta, block_size, too_short),
                        _load_tokens(bin_dir, val_file, "val", meta, block_size, too_short), int(meta["vocab_size"]),
                        sha, data_fingerprint(bin_dir / "meta.json"), tokenizer_json)


def data_fingerprint(meta_path: Path) -> str:
    """Which bins a run trains on: the hash of their meta.json (token counts and tokenizer hash)."""
    return hashlib.sha256(meta_path.read_bytes()).hexdigest()[:16]


class BatchSampler:
    """Training windows from a token memmap, reproducible and resumable.

    Batch number n is a pure function of (seed, n): `batch(n)` draws it from a generator seeded
    with them, so whoever numbers the batches (BatchStream, or estimate_loss's fixed batches) needs
    no sampler state, and resuming needs only the next number.

    Two ways to pick the windows (train.sampling):
    - random (the seed's): every window starts at a random offset, so some text is seen twice
      before other text is seen once;
    - epochs: the data is cut into `windows_per_epoch` non-overlapping windows (from an offset
      drawn per epoch, so the cuts move), shuffled per epoch; batches take them in that order, so
      every window is seen once before any is seen again. Window number g of the stream is the
      (g mod W)-th of epoch g // W: still a pure function of (seed, n).
    """

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int, epochs: bool = False):
        if data.size <= block_size:
            raise GothicError(f"a split of {data.size} tokens cannot fill one window of block_size={block_size} "
                              "(+1 target); lower model.block_size or add text")
        self.data, self.block_size, self.batch_size, self.seed = data, block_size, batch_size, seed
        self.epochs = epochs
        self.windows_per_epoch = (data.size - 1) // block_size
        """Whole windows (block_size inputs and the next token as the last target) in the data."""
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its shuffled window starts): the last one used

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number n: (inputs, targets), each int64 of shape (batch_size, block_size)."""
        import torch  # here, not at the top: the binarize stage needs no torch and starts a second faster

        starts = self._epoch_starts(n) if self.epochs else self._random_starts(n)
        window = np.stack([self.data[s:s + self.block_size + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())

    def _random_starts(self, n: int) -> np.ndarray:
        # the 0 once held a rank; kept so runs and checkpoints from before draw the same windows
        rng = np.random.default_rng([self.seed, 0, n])
        return rng.integers(0, self.data.size - self.block_size, size=self.batch_size)

    def _epoch_starts(self, n: int) -> list[int]:
        first = n * self.batch_size
        return [self.epoch_order(g // self.windows_per_epoch)[g % self.windows_per_epoch]
                for g in range(first, first + self.batch_size)]

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The window starts of one epoch, in the order they are trained on."""
        order = self._order  # one read: a prefetch thread may replace it meanwhile
        if order is None or order[0] != epoch:
            rng = np.random.default_rng([self.seed, 1, epoch])  # 1: another stream than the random windows'
            slack = self.data.size - 1 - self.windows_per_epoch * self.block_size  # tokens no window covers
            offset = int(rng.integers(0, slack + 1))
            order = self._order = (epoch, offset + self.block_size * rng.permutation(self.windows_per_epoch))
        return order[1]

    def position(self, batches: int) -> tuple[int, int]:
        """(epoch, windows of it done) once `batches` batches are drawn, with sampling by epochs."""
        return divmod(batches * self.batch_size, self.windows_per_epoch)


class BatchStream:
    """The training batches in order: one numbered stream shared by all ranks, rank r of W taking
    batches r, r + W, r + 2W, ...

    So W ranks x grad_accum k see exactly the batches that one process with grad_accum k x W sees
    (the same global batch), and a resumed run continues the stream at any world size: the state
    is the count of batches consumed by all ranks together.
    """

    def __init__(self, sampler: BatchSampler, rank: int = 0, world_size: int = 1):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.consumed = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        (batch,) = self.batches_at(self.consumed, 1)
        self.skip(1)
        return batch

    def batches_at(self, position: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The `count` batches this rank takes next once `position` batches are consumed (the stream
        does not move: a prefetch draws ahead with it)."""
        return [self.sampler.batch(position + i * self.world_size + self.rank) for i in range(count)]

    def skip(self, count: int) -> None:
        """Move past this rank's next `count` batches (and the other ranks' beside them)."""
        self.consumed += count * self.world_size

    def state_dict(self) -> dict:
        """The position; with sampling by epochs also the epoch and the windows of it done (what
        the position means, written so a reader sees how far the run went through its data)."""
        state = {"seed": self.sampler.seed, "rank": 0, "batches_drawn": self.consumed}
        if self.sampler.epochs:
            state["epoch"], state["epoch_windows_done"] = self.sampler.position(self.consumed)
        return state

    def load_state_dict(self, state: dict) -> None:
        consumed = state["batches_drawn"]
        if not isinstance(consumed, int) or isinstance(consumed, bool) or consumed < 0:
            raise ValueError(f"batches_drawn {consumed!r} is not a count")
        if self.sampler.epochs and (state["epoch"], state["epoch_windows_done"]) != self.sampler.position(consumed):
            raise ValueError("the epoch position does not match batches_drawn")
        self.consumed = consumed


class StepBatches:
    """Each optimizer step's `count` batches from a BatchStream, on the training device.

    On CUDA a background thread draws the next step's batches into pinned memory while the GPU
    trains on this step's, and they are copied without blocking the host; elsewhere each step's are
    drawn when asked for. The batches are the same either way (batch n is a function of n), and
    the stream's position counts only the steps taken, so a checkpoint never records a prefetch.
    """

    def __init__(self, stream: BatchStream, count: int, device: torch.device, prefetch: bool | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.stream, self.count, self.device = stream, count, device
        prefetch = device.type == "cuda" if prefetch is None else prefetch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch else None
        self.pending = None  # (stream position, future of its batches)

    def _draw(self, position: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.stream.batches_at(position, self.count)
        if self.device.type != "cuda":
            return batches
        return [(x.pin_memory(), y.pin_memory()) for x, y in batches]  # pinned: the copy can run async

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        position = self.stream.consumed
        if self.pending is not None and self.pending[0] == position:
            batches = self.pending[1].result()
        else:  # the first step, or the stream was moved (a resume)
            batches = self._draw(position)
        self.stream.skip(self.count)
        if self.pool is not None:
            self.pending = (self.stream.consumed, self.pool.submit(self._draw, self.stream.consumed))
        return [(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in batches]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
