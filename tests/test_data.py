"""Bins: exact round trip, chunked encoding equals whole encoding, batch sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gothic.config import PrepareConfig
from gothic.corpus import prepare
from gothic.data import (
    BatchSampler,
    BatchStream,
    StepBatches,
    bin_dtype,
    binarize,
    encode_documents,
    load_meta,
    load_split,
    split_into_pieces,
)
from gothic.errors import GothicError
from gothic.tokenizer import EOT, iter_pieces, load_tokenizer, save_tokenizer, train_tokenizer


@pytest.fixture
def built(raw_dir, tmp_path):
    processed, bins = tmp_path / "processed", tmp_path / "bin"
    prepare(PrepareConfig(sources=["raw"], val_fraction=0.3), raw_dir, processed)
    save_tokenizer(train_tokenizer([processed / "train.txt"], 300, 2), tmp_path / "tok.json")
    meta = binarize(processed, tmp_path / "tok.json", bins)
    return processed, tmp_path / "tok.json", bins, meta


def test_decoded_bins_equal_cleaned_text_with_separators(built):
    processed, tok_path, bins, meta = built
    tok = load_tokenizer(tok_path)
    for split in ("train", "val"):
        ids = load_split(bins, split).tolist()
        assert tok.decode(ids, skip_special_tokens=False) == (processed / f"{split}.txt").read_text(encoding="utf-8")


def test_meta_records_counts_and_tokenizer(built):
    processed, tok_path, bins, meta = built
    assert load_meta(bins) == meta == json.loads((bins / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 300
    train = meta["splits"]["train"]
    assert train["bytes"] == sum(d["bytes"] for d in train["documents"])
    assert len(train["documents"]) == 2 and train["documents"][1]["start"] == train["documents"][0]["tokens"] + 1
    assert (bins / "train.bin").stat().st_size == 2 * train["tokens"]


def test_dtype_grows_past_uint16():
    assert bin_dtype(65536) == np.uint16 and bin_dtype(65537) == np.uint32


def test_pieces_encode_exactly_like_the_whole(shared_corpus, tmp_path):
    text = (shared_corpus / "stevenson_jekyll_and_hyde.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    tok = train_tokenizer([tmp_path / "t.txt"], 1000, 2)
    pieces = split_into_pieces(text, size=2000)
    assert len(pieces) > 10 and "".join(pieces) == text
    [chunked] = encode_documents(tok, [text])
    assert chunked.tolist() == tok.encode(text).ids


def test_progress_callback_counts_every_byte(built):
    processed, tok_path, bins, meta = built
    totals, done = [], []

    def start(total_bytes):
        totals.append(total_bytes)
        return done.append

    binarize(processed, tok_path, bins, start)
    sizes = sum((processed / f"{split}.txt").stat().st_size for split in ("train", "val"))
    assert totals[0] == sum(done) == sizes


WHITESPACE_TEXT = ("Runs   of  spaces,\ttabs\t\tand\n\n\nblank  \n lines; a line\nthat \n ends\n  indented\n\tx "
                   "\u00a0nbsp\u3000ideographic  don't 'quote' 42 ---  \n") * 40


@pytest.mark.parametrize("text, min_pieces", [(WHITESPACE_TEXT, 40), (WHITESPACE_TEXT.replace("\n", " "), 200)])
def test_every_safe_cut_keeps_the_tokens(tmp_path, text, min_pieces):
    """Cut at every safe point (size=1; at newlines, and at spaces where a text has none): the
    pieces encode exactly like the whole, around runs of spaces, tabs and newlines too, where a
    careless cut would change the words (the tokenizer learns merges of those runs)."""
    (tmp_path / "t.txt").write_text(WHITESPACE_TEXT + WHITESPACE_TEXT.replace("\n", " "), encoding="utf-8")
    tok = train_tokenizer([tmp_path / "t.txt"], 300, 2)
    pieces = split_into_pieces(text, size=1)
    assert len(pieces) > min_pieces and "".join(pieces) == text
    whole = tok.encode(text, add_special_tokens=False).ids
    assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole


def test_a_long_line_is_cut_and_the_bins_stay_exact(tmp_path, tiny_tokenizer_path, tiny_tokenizer):
    """A book without newlines is cut at spaces into bounded pieces, with the exact tokens."""
    processed = tmp_path / "processed"
    processed.mkdir()
    line = ("It was a dark and stormy night; the rain fell in torrents. " * 3000).strip()
    (processed / "train.txt").write_text(line + EOT + line[:5000], encoding="utf-8")
    (processed / "val.txt").write_text(line[:999], encoding="utf-8")
    pieces = list(iter_pieces(processed / "train.txt", size=4096, read_chars=10_000))
    assert max(len(p) for p, _ in pieces) < 4096 + 100 and [e for _, e in pieces].count(True) == 2
    binarize(processed, tiny_tokenizer_path, tmp_path / "bin")
    expected = tiny_tokenizer.encode(line + EOT + line[:5000]).ids
    assert load_split(tmp_path / "bin", "train").tolist() == expected


def test_sampler_is_reproducible_and_resumable(built):
    data = load_split(built[2], "train")
    a = BatchStream(BatchSampler(data, block_size=8, batch_size=4, seed=3))
    first = [a.next_batch() for _ in range(3)]
    b = BatchStream(BatchSampler(data, block_size=8, batch_size=4, seed=3))
    b.load_state_dict({"batches_drawn": 2})
    x, y = b.next_batch()
    assert x.equal(first[2][0]) and y.equal(first[2][1])
    assert x.shape == (4, 8) and x[:, 1:].equal(y[:, :-1])
    assert not first[1][0].equal(first[0][0])
    # batch n is a pure function of (seed, n): numbering it twice draws it twice the same
    sampler = BatchSampler(data, block_size=8, batch_size=4, seed=3)
    assert sampler.batch(1)[0].equal(first[1][0]) and sampler.batch(1)[0].equal(sampler.batch(1)[0])
    assert not BatchSampler(data, block_size=8, batch_size=4, seed=4).batch(0)[0].equal(first[0][0])


def epoch_starts(stream: BatchStream, batches: int) -> list[int]:
    """The start of every window in the stream's next batches (the data are 0, 1, 2, ...: a window's
    first token is its start)."""
    return [int(x[0]) for _ in range(batches) for x in stream.next_batch()[0]]


def test_epoch_sampling_sees_every_window_once_per_epoch_then_reshuffles():
    data = np.arange(1003, dtype=np.uint16)
    sampler = BatchSampler(data, block_size=8, batch_size=5, seed=3, epochs=True)
    per_epoch = sampler.windows_per_epoch
    assert per_epoch == 125  # (1003 - 1) // 8 windows of 8 inputs and their next token
    stream = BatchStream(sampler)
    starts = epoch_starts(stream, 2 * per_epoch // 5)  # batch_size 5 divides 125: exactly two epochs
    first, second = starts[:per_epoch], starts[per_epoch:]
    for epoch in (first, second):
        assert len(set(epoch)) == per_epoch  # no window twice within an epoch
        offset = epoch[0] % 8
        assert sorted(epoch) == [offset + 8 * k for k in range(per_epoch)]  # non-overlapping, every one
        assert max(epoch) + 8 < data.size  # the last target token exists
    assert first != second  # shuffled afresh (and cut from a new offset) each epoch
    x, y = sampler.batch(0)
    assert x[:, 1:].equal(y[:, :-1]) and y[:, -1].equal(x[:, -1] + 1)
    assert stream.state_dict() == {"seed": 3, "rank": 0, "batches_drawn": 50, "epoch": 2, "epoch_windows_done": 0}


def test_epoch_sampling_crosses_epochs_inside_a_batch_and_resumes_exactly():
    data = np.arange(203, dtype=np.uint16)  # 25 windows of 8: batches of 4 straddle the epochs' ends

    def make() -> BatchStream:
        return BatchStream(BatchSampler(data, block_size=8, batch_size=4, seed=1, epochs=True))

    straight = make()
    starts = epoch_starts(straight, 13)  # 52 windows: two epochs and 2 windows of the third
    assert len(set(starts[:25])) == 25 and len(set(starts[25:50])) == 25
    saved = make()
    epoch_starts(saved, 7)
    state = saved.state_dict()
    assert (state["epoch"], state["epoch_windows_done"]) == (1, 3)  # 28 windows = one epoch and 3
    resumed = make()
    resumed.load_state_dict(state)
    assert epoch_starts(resumed, 6) == starts[28:]
    with pytest.raises(ValueError, match="epoch position"):
        make().load_state_dict({**state, "epoch": 0})


def test_stream_ranks_take_turns_through_one_numbered_stream(built):
    """Rank r of W takes batches r, r + W, ...: two ranks together see what one process sees."""
    sampler = BatchSampler(load_split(built[2], "train"), block_size=8, batch_size=4, seed=3)
    single = BatchStream(sampler)
    ranks = [BatchStream(sampler, rank, 2) for rank in (0, 1)]
    for _ in range(2):
        for stream in ranks:
            assert stream.next_batch()[0].equal(single.next_batch()[0])
    assert ranks[1].state_dict()["batches_drawn"] == single.state_dict()["batches_drawn"] == 4


@pytest.mark.parametrize("prefetch", [False, True])
def test_step_batches_draw_the_stream_in_order_and_count_only_steps_taken(built, prefetch):
    """With or without the background prefetch (CUDA's), each step gets the stream's next batches,
    the stream's position is the steps taken, and a stream moved by a resume is followed."""
    sampler = BatchSampler(load_split(built[2], "train"), block_size=8, batch_size=4, seed=3)
    plain, stream = BatchStream(sampler), BatchStream(sampler)
    steps = StepBatches(stream, 2, torch.device("cpu"), prefetch=prefetch)
    try:
        for _ in range(3):
            expected = [plain.next_batch() for _ in range(2)]
            got = steps.next()
            assert all(x.equal(ex) and y.equal(ey) for (x, y), (ex, ey) in zip(got, expected, strict=True))
            assert stream.state_dict() == plain.state_dict()
        stream.load_state_dict({"batches_drawn": 1})  # as resume_run does
        assert steps.next()[0][0].equal(sampler.batch(1)[0])
    finally:
        steps.close()


def test_split_smaller_than_block_is_an_error(built):
    data = load_split(built[2], "val")
    with pytest.raises(GothicError, match="cannot fill one window of block_size"):
        BatchSampler(data, block_size=data.size, batch_size=1, seed=0)


def test_missing_bins_are_a_clear_error(tmp_path):
    with pytest.raises(GothicError, match="dvc repro binarize"):
        load_meta(tmp_path)


def test_outputs_are_readable_by_others(built):
    bins = built[2]
    assert (bins / "meta.json").stat().st_mode & 0o044 == 0o044


def test_a_failure_leaves_every_bin_as_it_was(built, monkeypatch):
    """train.bin, val.bin and meta.json are replaced together or not at all."""
    processed, tok_path, bins, meta = built
    before = {p.name: p.read_bytes() for p in bins.iterdir()}
    (processed / "val.txt").write_bytes(b"\xff\xfe not UTF-8")
    with pytest.raises(GothicError, match="val.txt: not UTF-8"):
        binarize(processed, tok_path, bins)
    assert {p.name: p.read_bytes() for p in bins.iterdir()} == before
