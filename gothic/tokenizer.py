"""Byte-level BPE tokenizer (HF `tokenizers`): train, save and load it, and encode text of any size.

Byte-level means every string can be encoded (no unknown token) and `<|endoftext|>` is the one
special token, separating documents in the bins and ending generations.

    tok = train_tokenizer([Path("data/processed/train.txt")], vocab_size=4096, min_frequency=2)
    save_tokenizer(tok, Path("data/tokenizer.json"))

Streaming: a text of any size is read in blocks and cut into *pieces* at points where the
byte-level pre-tokenizer always starts a new word (`safe_cut`), so encoding the pieces one by one
gives exactly the tokens of encoding the whole text, in bounded memory (`iter_pieces`). Training
reads the files line by line, as the library's own file reader does, so it learns the same merges
(`training_lines`); above `sample_bytes` it learns from evenly spaced windows of the text instead.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gothic.config import MIN_VOCAB_SIZE
from gothic.errors import GothicError, first_line
from gothic.files import json_object, sha256_file, write_text

EOT = "<|endoftext|>"
# Pieces are cut about every PIECE_CHARS characters: enough work per piece for the batch encoder,
# small enough for its per-token bookkeeping to stay a few MB.
PIECE_CHARS = 1 << 16
# Past this many characters without a newline or space to cut at (no real prose), a piece is cut
# anyway: its tokens at that one point may differ from encoding the whole, the text round-trips.
HARD_CUT_CHARS = 1 << 20
READ_CHARS = 1 << 22
# Windows of this size make up a training sample (see `training_lines`).
SAMPLE_WINDOW_BYTES = 1 << 20


# --- pieces that encode exactly like the whole -----------------------------------------------------
def safe_cut(text: str, lo: int, hi: int) -> int:
    """The first index in [lo, hi) where text can be cut without changing its tokens, or -1.

    Safe are: just after a newline between two non-space characters (the newline is always a
    word of its own), and just before a space between two non-space characters (a word always
    starts at such a space). The pre-tokenizer's pattern has no look-behind, so the words after
    the cut are found the same way. When neither occurs within HARD_CUT_CHARS of lo, lo +
    HARD_CUT_CHARS is returned (if below hi).
    """
    end = min(hi, lo + HARD_CUT_CHARS)
    for char, after in (("\n", 1), (" ", 0)):
        at = text.find(char, max(lo - after, 1), end)
        while at != -1:
            if at + 1 < len(text) and not text[at - 1].isspace() and not text[at + 1].isspace():
                if lo <= at + after < hi:
                    return at + after
            at = text.find(char, at + 1, end)
    return lo + HARD_CUT_CHARS if lo + HARD_CUT_CHARS < hi else -1


def cut_pieces(text: str, start: int, end: int, size: int, final: bool) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_last) covering text[start:end] in pieces of about `size` characters.

    With final=False the text may go on after `end`: the rest from the last cut on is not
    yielded, and the generator returns where it begins.
    """
    # a cut needs the character after it, and must not fall inside a separator still being read
    limit = end if final else end - len(EOT)
    pos = start
    while end - pos > size:
        cut = safe_cut(text, pos + size, limit)
        if cut == -1:
            break
        yield text[pos:cut], False
        pos = cut
    if final:
        yield text[pos:end], True
        return end
    return pos


def split_into_pieces(text: str, size: int | None = None) -> list[str]:
    """A document cut into pieces that encode, one by one, exactly like the whole."""
    return [piece for piece, _ in cut_pieces(text, 0, len(text), size or PIECE_CHARS, final=True)]


def iter_pieces(path: Path, size: int | None = None, read_chars: int | None = None) -> Iterator[tuple[str, bool]]:
    """Stream a split text (documents joined by EOT) as (piece, ends_document) pairs.

    Every document yields at least one piece (an empty one for an empty document), the way
    `text.split(EOT)` gives one string per document; memory stays a few blocks.
    """
    path, size, read_chars = Path(path), size or PIECE_CHARS, read_chars or READ_CHARS
    if not path.is_file():
        raise GothicError(f"{path}: not found; run the prepare stage first (`dvc repro prepare`)")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            buf, eof = "", False
            while not eof:
                block = f.read(read_chars)
                eof = not block
                buf += block
                pos = 0
                while (sep := buf.find(EOT, pos)) != -1:
                    yield from cut_pieces(buf, pos, sep, size, final=True)
                    pos = sep + len(EOT)
                pos = yield from cut_pieces(buf, pos, len(buf), size, final=eof)
                buf = buf[pos:]
    except UnicodeDecodeError as e:
        raise GothicError(f"{path}: not UTF-8 (byte {e.start} of a block); rebuild it with `dvc repro -f prepare`") \
            from None


# --- training ----------------------------------------------------------------------------------------


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


def _raw_lines(path: Path, start: int = 0, limit: int | None = None) -> Iterator[bytes]:
    """The file's lines (bytes, with their line ends) from byte `start`, realigned to the next line
    start, until `limit` bytes are read."""
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            f.readline()  # the rest of the line `start` falls in: begin at a line start
        read = 0
        for line in f:
            yield line
            read += len(line)
            if limit is not None and read >= limit:
                return


def _sequences(lines: Iterable[bytes]) -> Iterator[str]:
    """Lines as the trainer must see them, decoded.

    The library's file reader feeds the trainer one line at a time. Lines are joined here where
    that changes no word (a newline between two non-space characters is a safe cut, see
    `safe_cut`), so fewer strings cross from Python into the trainer; a line longer than a piece
    is cut at safe points, so memory stays bounded.
    """
    joined, size = [], 0
    for raw in lines:
        line = raw.decode("utf-8")
        if len(line) > PIECE_CHARS:
            if joined:
                yield "".join(joined)
                joined, size = [], 0
            yield from split_into_pieces(line)
            continue
        last = joined[-1] if joined else ""
        if joined and not (size < PIECE_CHARS and len(last) > 1 and last[-1] == "\n" and not last[-2].isspace()
                           and not line[0].isspace()):
            yield "".join(joined)
            joined, size = [], 0
        joined.append(line)
        size += len(line)
    if joined:
        yield "".join(joined)


def _windows(files: list[Path], sample_bytes: int) -> Iterator[tuple[Path, int, int | None]]:
    """(file, start, limit) of what to learn from: everything, or when the files hold more than
    sample_bytes (> 0), windows of SAMPLE_WINDOW_BYTES at evenly spaced offsets, sample_bytes in
    all, so every part of the corpus is represented (never just its first documents)."""
    sizes = [Path(p).stat().st_size for p in files]
    total = sum(sizes)
    if not sample_bytes or total <= sample_bytes:
        yield from ((Path(p), 0, None) for p in files)
        return
    n_windows = max(1, sample_bytes // SAMPLE_WINDOW_BYTES)
    for j in range(n_windows):
        offset = j * total // n_windows  # in the files laid end to end
        for path, size in zip(files, sizes, strict=True):
            if offset < size:
                yield Path(path), offset, sample_bytes // n_windows
                break
            offset -= size


def training_lines(files: list[Path], sample_bytes: int = 0) -> Iterator[str]:
    """What the trainer learns from (see `_windows`), as strings to feed it one by one."""
    for path, start, limit in _windows(files, sample_bytes):
        yield from _sequences(_raw_lines(path, start, limit))


def _has_long_line(files: list[Path], limit: int) -> bool:
    for path in files:
        run = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                lines = block.split(b"\n")
                if run + len(lines[0]) > limit or (len(lines) > 2 and max(map(len, lines[1:-1])) > limit):
                    return True
                run = len(lines[-1]) if len(lines) > 1 else run + len(lines[0])
        if run > limit:
            return True
    return False


def _train_on_files(tok: Tokenizer, files: list[Path], sample_bytes: int, trainer) -> bool:
    """The fast way, when no line is long: the library reads the files itself (or a temporary
    file holding the sample's lines), in parallel and without Python. False when it cannot."""
    if not sample_bytes or sum(Path(p).stat().st_size for p in files) <= sample_bytes:
        if _has_long_line(files, HARD_CUT_CHARS):
            return False
        tok.train([str(p) for p in files], trainer)
        return True
    with tempfile.TemporaryDirectory(prefix="gothic-sample-") as tmp:
        sample = Path(tmp) / "sample.txt"
        with open(sample, "wb") as out:
            for path, start, limit in _windows(files, sample_bytes):
                for line in _raw_lines(path, start, limit):
                    if len(line) > HARD_CUT_CHARS:
                        return False
                    out.write(line if line.endswith(b"\n") else line + b"\n")  # never glue two windows' lines
        tok.train([str(sample)], trainer)
    return True


def training_bytes(files: list[Path], sample_bytes: int = 0) -> dict:
    """For the metrics: how much text the tokenizer learned from, and whether it was a sample."""
    total = sum(Path(p).stat().st_size for p in files)
    sampled = bool(sample_bytes) and total > sample_bytes
    return {"train_bytes": total, "trained_on_bytes": sample_bytes if sampled else total, "sampled": sampled}


def train_tokenizer(files: list[Path], vocab_size: int, min_frequency: int, sample_bytes: int = 0) -> Tokenizer:
    """Train a byte-level BPE on text files; deterministic for the same input and settings.

    Memory does not grow with the files' size: the library reads them line by line, and a line
    of over a MB is cut at safe points on the Python side (`training_lines`) instead. With
    sample_bytes > 0 and more text than that, learns from an evenly spaced sample of that size.
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
        files = [Path(p) for p in files]
        if not _train_on_files(tok, files, sample_bytes, build_trainer(vocab_size, min_frequency)):
            tok.train_from_iterator(training_lines(files, sample_bytes), build_trainer(vocab_size, min_frequency))
    except UnicodeDecodeError as e:
        raise GothicError(f"tokenizer training failed on {', '.join(map(str, files))}: not UTF-8 text ({e.reason} "
                          f"at byte {e.start} of a line); convert the file to UTF-8") from None
    except Exception as e:  # tokenizers raises plain Exceptions
        raise GothicError(f"tokenizer training failed on {', '.join(map(str, files))}: {e}") from None
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise GothicError(
            f"the corpus supports only {got} tokens at min_frequency={min_frequency}, not the {vocab_size} "
            f"asked for: lower tokenizer.vocab_size to at most {got} (or add text)")
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    write_text(path, tok.to_str(pretty=True))


def is_tokenizer_file(path: Path) -> bool:
    """Whether path holds a tokenizers JSON (what gothic-tokenize --output may replace)."""
    obj = json_object(path)
    return obj is not None and {"model", "added_tokens"} <= obj.keys()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json; a missing or broken file is a GothicError naming it."""
    path = Path(path)
    if not path.is_file():
        raise GothicError(f"{path}: tokenizer not found (run `dvc repro tokenize` or `gothic-tokenize`)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise GothicError(f"{path}: not a valid tokenizer.json ({first_line(e)})") from None
    if tok.token_to_id(EOT) is None:
        raise GothicError(f"{path}: tokenizer has no {EOT} token; train it with gothic-tokenize")
    return tok


def eot_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOT)


def tokenizer_sha256(path: str | Path) -> str:
    return sha256_file(path)


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, encoded in parallel on every core (offsets are not computed)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast: tokenizers >= 0.20
    return [e.ids for e in encode(texts, add_special_tokens=False)]


# A word: from the start or from a space, then everything up to the next space that stands between
# two non-space characters (spaces next to other white space, or at the end, stay inside).
_WORD = re.compile(r"(?:^| )(?:[^ ]+|(?<=\s) | (?!\S))*")


def words(text: str) -> list[str]:
    """text cut at every space that stands between two non-space characters (each a safe cut, see
    `safe_cut`): mostly single words with their leading space, " castle,". Joined, the words are
    the text (the first may be empty)."""
    return _WORD.findall(text)


class CachedEncoder:
    """Encodes pieces word by word through a cache of each word's tokens: exactly the tokens of
    encoding the pieces (every word boundary is a safe cut), several times faster on real text.

    The library's BPE recomputes the merges of every word missing from its small cache; here each
    distinct word is encoded once (in parallel, by the library) while it stays in the cache, and
    a piece's tokens are the cached bytes of its words joined. The cache is emptied when it
    reaches max_words, so memory stays bounded; very long words are not kept.
    """

    MAX_CACHED_CHARS = 64

    def __init__(self, tok: Tokenizer, dtype, max_words: int = 1 << 21):
        self.tok, self.dtype, self.max_words, self.cache = tok, dtype, max_words, {}

    def encode(self, pieces: list[str]) -> list[bytes]:
        """The tokens of each piece as the bytes of an array of self.dtype."""
        split = [words(piece) for piece in pieces]
        every = set(chain.from_iterable(split))
        missing = list(every.difference(self.cache))
        if len(self.cache) + len(missing) > self.max_words:
            self.cache.clear()
            missing = list(every)
        for word, ids in zip(missing, encode_batch(self.tok, missing), strict=True):
            self.cache[word] = array_bytes(ids, self.dtype)
        encoded = [b"".join(map(self.cache.__getitem__, ws)) for ws in split]
        for word in missing:
            if len(word) > self.MAX_CACHED_CHARS:
                del self.cache[word]
        return encoded


def array_bytes(ids: list[int], dtype) -> bytes:
    import numpy as np  # here: the tokenizer module is imported by stages that need no numpy

    return np.asarray(ids, dtype=dtype).tobytes()


def batched(pieces: Iterable[tuple[str, bool]], batch_chars: int) -> Iterator[list[tuple[str, bool]]]:
    """Group pieces into lists of about batch_chars characters."""
    batch, chars = [], 0
    for item in pieces:
        batch.append(item)
        chars += len(item[0])
        if chars >= batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenizer_stats(tok: Tokenizer, val_text: str) -> dict:
    """Figures for metrics/tokenizer.json: vocab size and compression on held-out text."""
    n_bytes = len(val_text.encode("utf-8"))
    docs = val_text.split(EOT)
    pieces = [piece for doc in docs for piece in split_into_pieces(doc)]
    n_tokens = sum(map(len, encode_batch(tok, pieces))) + len(docs) - 1 if val_text else 0
    return _stats(tok, n_bytes, n_tokens)


_ENCODER: CachedEncoder | None = None  # the current process's, set by _start_encoder


def _start_encoder(tokenizer_path: str, dtype: str) -> None:
    global _ENCODER
    in_worker = multiprocessing.parent_process() is not None
    if in_worker:  # one single-threaded library per process: the processes already fill every core
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = CachedEncoder(load_tokenizer(tokenizer_path), dtype, max_words=1 << 20 if in_worker else 1 << 21)


def _encode_batch(batch: list[tuple[str, bool]]) -> list[tuple[bytes, int, bool]]:
    tokens = _ENCODER.encode([piece for piece, _ in batch])
    return [(ids, len(piece.encode("utf-8")), ends) for ids, (piece, ends) in zip(tokens, batch, strict=True)]


def encode_file(tokenizer_path: Path, text_path: Path, dtype: str,
                batch_chars: int = 1 << 22) -> Iterator[tuple[bytes, int, bool]]:
    """Stream a split text's pieces encoded: (token array bytes of `dtype`, UTF-8 bytes of the
    piece, ends_document), in order; encoded in worker processes on every core when the text is
    large (each with its own word cache), in this process otherwise."""
    from gothic.parallel import ordered_map

    batches = ordered_map(_encode_batch, batched(iter_pieces(text_path), batch_chars), Path(text_path).stat().st_size,
                          _start_encoder, (str(tokenizer_path), dtype), fork=False)
    for batch in batches:
        yield from batch


def tokenizer_stats_file(tok: Tokenizer, val_path: Path, tokenizer_path: Path) -> dict:
    """`tokenizer_stats` of a split text file, streamed: every val byte, in bounded memory."""
    n_bytes, n_tokens, docs = 0, 0, 0
    for ids, piece_bytes, ends in encode_file(tokenizer_path, val_path, "uint32"):
        n_tokens += len(ids) // 4
        n_bytes += piece_bytes
        docs += ends
    n_bytes += len(EOT) * (docs - 1)  # the separators: one token each
    n_tokens = n_tokens + docs - 1 if n_bytes else 0
    return _stats(tok, n_bytes, n_tokens)


def _stats(tok: Tokenizer, n_bytes: int, n_tokens: int) -> dict:
    return {
        "vocab_size": tok.get_vocab_size(),
        "val_bytes": n_bytes,
        "val_tokens": n_tokens,
        "bytes_per_token": round(n_bytes / n_tokens, 4) if n_tokens else 0.0,
    }
