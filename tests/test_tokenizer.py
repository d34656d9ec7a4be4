"""BPE training: deterministic, byte-level complete, clear errors."""

from __future__ import annotations

import pytest

from gothic.cli import tokenize_main
from gothic.errors import GothicError
from gothic.tokenizer import (
    EOT,
    build_trainer,
    empty_tokenizer,
    eot_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
    training_bytes,
    training_lines,
)

from conftest import TINY_TEXT


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TINY_TEXT * 30 + EOT + TINY_TEXT.upper() * 30, encoding="utf-8")
    return path


def test_training_is_byte_identical_across_runs(text_file, tmp_path):
    for name in ("a.json", "b.json"):
        save_tokenizer(train_tokenizer([text_file], 300, 2), tmp_path / name)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_round_trip_with_unseen_characters_and_special_token(text_file, tmp_path):
    save_tokenizer(train_tokenizer([text_file], 300, 2), tmp_path / "tok.json")
    tok = load_tokenizer(tmp_path / "tok.json")
    assert tok.get_vocab_size() == 300
    text = "Zebra ünïcödé 🦇 — " + EOT + " night"
    ids = tok.encode(text).ids
    assert ids.count(eot_id(tok)) == 1
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_vocab_below_byte_alphabet_is_refused(text_file):
    with pytest.raises(GothicError, match="below the 257 byte symbols"):
        train_tokenizer([text_file], 100, 2)


def test_vocab_larger_than_corpus_supports_is_refused(text_file):
    with pytest.raises(GothicError, match=r"supports only \d+ tokens .* lower tokenizer.vocab_size"):
        train_tokenizer([text_file], 50_000, 2)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(GothicError, match="no such file"):
        train_tokenizer([tmp_path / "nope.txt"], 300, 2)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(GothicError, match="file is empty"):
        train_tokenizer([tmp_path / "empty.txt"], 300, 2)


def test_load_broken_tokenizer_names_the_file(tmp_path):
    (tmp_path / "tok.json").write_text("{not json")
    with pytest.raises(GothicError, match="tok.json: not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "tok.json")


def test_cli_matches_seed_flags(text_file, tmp_path, capsys):
    out = tmp_path / "cli.json"
    with pytest.raises(SystemExit) as info:
        tokenize_main(["--files", str(text_file), "--vocab-size", "300", "--min-frequency", "2", "--output", str(out)])
    assert info.value.code == 0 and load_tokenizer(out).get_vocab_size() == 300
    # the CLI and the stage share one core function: same input, same bytes
    save_tokenizer(train_tokenizer([text_file], 300, 2), tmp_path / "core.json")
    assert out.read_bytes() == (tmp_path / "core.json").read_bytes()


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        tokenize_main(["--files", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("long_line_chars", [1 << 20, 10_000])
def test_training_streams_lines_like_the_library_reads_files(text_file, tmp_path, monkeypatch, long_line_chars):
    """With a line past long_line_chars, lines go from Python, joined or cut at safe points: the
    same merges as `Tokenizer.train` reading the file itself (the path taken otherwise)."""
    monkeypatch.setattr("gothic.tokenizer.HARD_CUT_CHARS", long_line_chars)
    long_line = ("a very long line without any newline at all, " * 4000).strip()
    text_file.write_text(text_file.read_text(encoding="utf-8") + long_line + "\n\n\n  tail\n", encoding="utf-8")
    reference = empty_tokenizer()
    reference.train([str(text_file)], build_trainer(300, 2))
    assert train_tokenizer([text_file], 300, 2).to_str() == reference.to_str()


def test_a_large_corpus_is_sampled_evenly_and_deterministically(tmp_path, monkeypatch):
    monkeypatch.setattr("gothic.tokenizer.SAMPLE_WINDOW_BYTES", 10_000)
    books = [tmp_path / f"book{i}.txt" for i in range(3)]
    for i, path in enumerate(books):
        path.write_text("".join(f"book {i} line {j} of the tale\n" for j in range(40_000)), encoding="utf-8")
    total = sum(p.stat().st_size for p in books)
    lines = list(training_lines(books, sample_bytes=total // 3))
    sampled = sum(len(line.encode()) for line in lines)
    n_windows = total // 3 // 10_000
    assert total // 3 - n_windows <= sampled < total // 3 + 30 * n_windows  # + at most a line per window
    assert all(line.endswith("\n") and line.startswith("book ") for line in lines)  # whole lines only
    assert {line.split()[1] for line in lines} == {"0", "1", "2"}  # every part of the corpus
    assert lines == list(training_lines(books, sample_bytes=total // 3))
    assert list(training_lines(books, sample_bytes=total)) == list(training_lines(books))
    assert training_bytes(books, total // 3) == {"train_bytes": total, "trained_on_bytes": total // 3, "sampled": True}
    assert training_bytes(books, 0)["sampled"] is False
    tok = train_tokenizer(books, 300, 2, sample_bytes=total // 3)
    assert tok.get_vocab_size() == 300 and tok.to_str() == train_tokenizer(books, 300, 2, total // 3).to_str()


def test_stage_records_what_it_learned_from(text_file, tmp_path, monkeypatch):
    import importlib.util
    import json
    import shutil

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("tokenize_stage", ROOT / "stages" / "tokenize.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    processed = tmp_path / "processed"
    processed.mkdir()
    shutil.copy(text_file, processed / "train.txt")
    (processed / "val.txt").write_text("The castle stood." + EOT + "Émile paused.", encoding="utf-8")
    (tmp_path / "params.yaml").write_text("tokenizer:\n  vocab_size: 300\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    stage.main("processed", "tokenizer.json", "metrics/tokenizer.json")
    metrics = json.loads((tmp_path / "metrics" / "tokenizer.json").read_text())
    size = text_file.stat().st_size
    assert metrics["sampled"] is False and metrics["trained_on_bytes"] == metrics["train_bytes"] == size
    assert metrics["val_bytes"] == len(("The castle stood." + EOT + "Émile paused.").encode())
    assert metrics["val_tokens"] > 2
