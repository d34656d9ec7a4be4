"""The sample stage: text statistics on known inputs, deterministic samples.md, the stage itself."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gothic.config import SampleConfig, SamplingSettings
from gothic.errors import GothicError
from gothic.generation import Completion, Engine
from gothic.samples import (
    PromptSamples,
    SampleRun,
    TextIndex,
    distinct_n,
    draw_samples,
    load_text_index,
    longest_shared_ngram,
    render_markdown,
    repeated_ngram_rate,
    sample_metrics,
    shared_ngrams,
    words,
)
from gothic.tokenizer import EOT

from conftest import GENERATION_TEXT, ROOT, committed_text, save_tiny_checkpoint, tiny_gpt


def test_words_are_lowercased_and_keep_inner_apostrophes():
    assert words("The Lord's hall — R'lyeh, 1890!") == ["the", "lord's", "hall", "r'lyeh", "1890"]


def test_distinct_n_on_a_known_case():
    texts = [["a", "b", "a", "b"], ["a", "c"]]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)  # a, b, c out of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab, ba, ac out of ab ba ab ac
    assert distinct_n([["a"]], 2) == 0.0  # no bigrams at all


def test_repeated_ngram_rate_counts_repeats_within_a_sample():
    loop = ["the", "night", "was", "dark"] * 3  # 9 four-grams, 4 distinct
    assert repeated_ngram_rate([loop], 4) == pytest.approx(5 / 9)
    # the same 4-gram in two different samples is not a repeat
    assert repeated_ngram_rate([loop[:4], loop[:4]], 4) == 0.0


def test_longest_shared_ngram_finds_the_longest_run():
    index = TextIndex(f"The night was dark and stormy.{EOT}Dust lay thick upon the table.")
    sample = words("and so dust lay thick upon the floor, the night was dark")
    assert longest_shared_ngram(sample, index) == ["dust", "lay", "thick", "upon", "the"]
    # runs never bridge documents or the word gaps: "stormy dust" is not in the text
    assert longest_shared_ngram(["stormy", "dust"], index) == ["stormy"]
    assert longest_shared_ngram(["zzz"], index) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abc"), max_size=30), st.lists(st.sampled_from("abcd"), max_size=12))
def test_longest_shared_ngram_matches_brute_force(corpus, sample):
    index = TextIndex(" ".join(corpus))
    brute = max((j - i for i in range(len(sample)) for j in range(i + 1, len(sample) + 1)
                 if f" {' '.join(sample[i:j])} " in f" {' '.join(corpus)} "), default=0)
    assert len(longest_shared_ngram(sample, index)) == brute


def test_missing_training_text_is_a_clear_error(tmp_path):
    with pytest.raises(GothicError, match="training text not found"):
        load_text_index(tmp_path / "train.txt")


def fake_run(text: str) -> SampleRun:
    completion = Completion(text=text, token_ids=[1, 2, 3], finish_reason="length", seed=5)
    return SampleRun(SamplingSettings(), 5, [PromptSamples("The night", [completion])], seconds=0.5)


def test_markdown_shows_samples_verbatim_even_with_backticks():
    run = fake_run(" was ```dark``` and # not a heading")
    md = render_markdown(run, [["the", "night"]], "models/best.pt", step=3)
    assert "````text\nThe night was ```dark``` and # not a heading\n````" in md
    assert "(step 3)" in md and '2 words ("the night")' in md


def test_metrics_are_computed_from_the_continuations():
    metrics = sample_metrics(fake_run(" was dark, dark, dark."), [["dark"]])
    assert metrics["distinct_1"] == pytest.approx(2 / 4) and metrics["longest_shared_ngram_max"] == 1
    assert metrics["new_tokens"] == 3 and metrics["sample_tokens_per_second"] == pytest.approx(6.0)


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    return Engine(tiny_gpt(tiny_tokenizer.get_vocab_size(), weight_std=0.5), tiny_tokenizer)


def test_samples_md_is_deterministic(engine):
    cfg = SampleConfig(prompts=["The castle", ""], num_samples=2, max_new_tokens=20, device="cpu")
    index = TextIndex(GENERATION_TEXT)
    first = draw_samples(engine, cfg)
    again = draw_samples(engine, cfg)
    md = render_markdown(first, shared_ngrams(first, index), "best.pt")
    assert md == render_markdown(again, shared_ngrams(again, index), "best.pt")
    assert md.count("### Sample") == 4 and "starts from <|endoftext|>" in md
    metrics = sample_metrics(first, shared_ngrams(first, index))
    assert metrics["samples"] == 4 and 0 <= metrics["distinct_2"] <= 1 and metrics["sample_tokens_per_second"] > 0


def test_stage_writes_samples_and_metrics(tiny_tokenizer, tiny_tokenizer_path, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("sample_stage", ROOT / "stages" / "sample.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    (tmp_path / "params.yaml").write_text(
        committed_text("params.yaml").replace("max_new_tokens: 200", "max_new_tokens: 12")
        .replace("device: auto", "device: cpu"), encoding="utf-8")
    shutil.copy(tiny_tokenizer_path, tmp_path / "tokenizer.json")
    (tmp_path / "train.txt").write_text(GENERATION_TEXT, encoding="utf-8")
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", tiny_gpt(tiny_tokenizer.get_vocab_size()), tiny_tokenizer_path)
    monkeypatch.chdir(tmp_path)
    stage.main(str(ckpt), "tokenizer.json", "train.txt", "samples/samples.md", "metrics/sample.json")
    metrics = json.loads((tmp_path / "metrics" / "sample.json").read_text())
    assert {"distinct_1", "distinct_2", "distinct_3", "repeated_4gram_rate", "longest_shared_ngram_max",
            "sample_tokens_per_second"} <= metrics.keys()
    md = (tmp_path / "samples" / "samples.md").read_text(encoding="utf-8")
    assert "The night was" in md and "In the shadow of the castle" in md
