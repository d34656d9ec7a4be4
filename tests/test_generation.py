"""The generation engine: KV cache equivalence, sampling filters, seeds, streaming text, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch

from gothic.cli import generate_main
from gothic.config import SamplingSettings
from gothic.errors import GothicError
from gothic.generation import (
    Engine,
    StreamDecoder,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    generate_tokens,
    sample_next,
    window_keep,
)
from gothic.loading import load_model
from gothic.tokenizer import eot_id

from conftest import save_tiny_checkpoint, tiny_gpt

GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=40)


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    return Engine(tiny_gpt(tiny_tokenizer.get_vocab_size(), block_size=32, weight_std=0.5), tiny_tokenizer)


@pytest.fixture(scope="module")
def checkpoint(tiny_tokenizer, tiny_tokenizer_path, tmp_path_factory):
    model = tiny_gpt(tiny_tokenizer.get_vocab_size(), block_size=32)
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, tiny_tokenizer_path)


def greedy_tokens(model, prompt: list[int], n: int, use_cache: bool) -> list[int]:
    # the penalty keeps greedy decoding from settling into a one-token loop, so the test sees varied text
    settings = SamplingSettings(temperature=0.0, repetition_penalty=1.5, max_new_tokens=n)
    steps = generate_tokens(model, torch.tensor([prompt]), settings, [torch.Generator()], use_cache)
    return [int(t[0]) for t in steps]


# --- KV cache -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_greedy_is_identical_with_and_without_cache_past_block_size(pos_embedding):
    model = tiny_gpt(97, block_size=16, weight_std=0.5, pos_embedding=pos_embedding)
    prompt = [5, 9, 2, 40, 41, 7, 3, 12, 60, 61, 62, 8]  # 12 of 16 positions: the window slides early
    cached = greedy_tokens(model, prompt, 60, use_cache=True)
    recomputed = greedy_tokens(model, prompt, 60, use_cache=False)
    assert cached == recomputed
    assert len(cached) == 60 and len(set(cached)) > 10


def test_sliding_window_never_exceeds_block_size():
    # GPT raises ValueError past block_size, so running 5 windows long proves every slide fits
    model = tiny_gpt(50, block_size=8)
    assert len(greedy_tokens(model, [1] * 8, 40, use_cache=True)) == 40
    assert window_keep(8) == 6 and window_keep(1) == 1


# --- sampling filters -----------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(filter_top_p(logits, p))[0].nonzero().flatten().tolist())
    assert kept(0.4) == {1}  # the top token alone reaches 0.4
    assert kept(0.75) == {1, 3}  # 0.5 + 0.3
    assert kept(0.9) == {1, 3, 0}  # 0.5 + 0.3 + 0.15
    assert kept(1.0) == {0, 1, 2, 3}
    assert kept(1e-6) == {1}  # always at least the most likely token


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5]])
    assert torch.isfinite(filter_top_k(logits, 2)).sum() == 2
    assert torch.isfinite(filter_top_k(logits, 0)).all()  # 0 disables


def test_top_k_1_equals_greedy_at_any_temperature(engine):
    greedy = engine.generate("The castle", GREEDY)[0]
    top1 = engine.generate("The castle", SamplingSettings(temperature=0.1, top_k=1, max_new_tokens=40), seed=5)[0]
    hot = engine.generate("The castle", SamplingSettings(temperature=1.5, top_k=1, max_new_tokens=40), seed=6)[0]
    assert greedy.token_ids == top1.token_ids == hot.token_ids


def test_greedy_breaks_ties_by_lowest_index():
    logits = torch.tensor([[0.0, 2.0, 2.0]])
    one_k = SamplingSettings(temperature=0.7, top_k=1)
    assert sample_next(logits, one_k, [torch.Generator()]).item() == 1
    assert sample_next(logits, GREEDY, [torch.Generator()]).item() == 1


def test_repetition_penalty_lowers_the_probability_of_a_seen_token():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5]])
    for token in range(4):  # a positive and a negative logit both lose probability
        seen = torch.zeros(1, 4, dtype=torch.bool)
        seen[0, token] = True
        before = logits.softmax(-1)[0, token]
        after = apply_repetition_penalty(logits, seen, 1.3).softmax(-1)[0, token]
        assert after < before
    seen = torch.ones(1, 4, dtype=torch.bool)
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)  # 1.0 disables


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    settings = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0)
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(probs.log()[None], settings, [g]) for _ in range(2000)])
    freq = torch.bincount(draws, minlength=3) / 2000
    assert torch.allclose(freq, probs, atol=0.04)


# --- seeds and batches ----------------------------------------------------------------------------


def test_same_seed_gives_the_same_samples(engine):
    settings = SamplingSettings(max_new_tokens=30, temperature=1.0)
    first = engine.generate("The night", settings, num_samples=3, seed=11)
    again = engine.generate("The night", settings, num_samples=3, seed=11)
    other = engine.generate("The night", settings, num_samples=3, seed=12)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    assert len({tuple(c.token_ids) for c in first}) == 3  # rows of a batch differ
    assert [c.seed for c in first] == [11, 12, 13]


def test_sample_i_is_the_same_streamed_alone_or_in_a_batch(engine):
    settings = SamplingSettings(max_new_tokens=30, temperature=1.0)
    batch = engine.generate("Dust lay", settings, num_samples=3, seed=100)
    stream = engine.stream("Dust lay", settings, seed=102)
    assert "".join(stream) == batch[2].text and stream.token_ids == batch[2].token_ids


def test_max_new_tokens_is_respected(engine):
    settings = SamplingSettings(max_new_tokens=7, temperature=1.0)
    for c in engine.generate("The", settings, num_samples=4, seed=0):
        assert len(c.token_ids) <= 7 and c.finish_reason in ("eot", "length")
        assert c.finish_reason == "eot" or len(c.token_ids) == 7


def test_unseeded_streams_report_their_seed(engine):
    settings = SamplingSettings(max_new_tokens=10, temperature=1.0)
    stream = engine.stream("The", settings)
    text = "".join(stream)
    assert "".join(engine.stream("The", settings, seed=stream.seed)) == text


# --- streaming text -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Café — naïve", "the dragon 🐉 slept", "ß∑😀 unseen bytes ✓", "東京"])
def test_stream_pieces_join_to_the_full_decode_and_never_split_a_character(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text).ids
    decoder = StreamDecoder(tiny_tokenizer, eot_id(tiny_tokenizer))
    pieces = [decoder.push(i) for i in ids] + [decoder.finish("length")]
    assert "".join(pieces) == tiny_tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_split_multibyte_character_is_held_until_complete(tiny_tokenizer):
    ids = tiny_tokenizer.encode("😀").ids
    assert len(ids) > 1  # unseen in training: one token per UTF-8 byte
    decoder = StreamDecoder(tiny_tokenizer, eot_id(tiny_tokenizer))
    assert [decoder.push(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]


def test_engine_stream_joins_to_decode_of_its_tokens(engine, tiny_tokenizer):
    stream = engine.stream("Émile paused —", SamplingSettings(max_new_tokens=60, temperature=1.2, top_k=0), seed=3)
    text = "".join(stream)
    assert text == stream.text == tiny_tokenizer.decode(stream.token_ids)


def test_eot_ends_a_sample_and_is_not_shown(tiny_tokenizer):
    eot = eot_id(tiny_tokenizer)
    decoder = StreamDecoder(tiny_tokenizer, eot)
    pieces = [decoder.push(i) for i in tiny_tokenizer.encode("The end").ids + [eot]]
    assert "".join(pieces) == "The end" and decoder.finish_reason == "eot"


@pytest.mark.parametrize("text, stop, shown, reason", [
    ("The castle stood. THE END and more", ["THE END"], "The castle stood. ", "stop"),
    ("The castle stood. THE ENDING", ["THE ENDX"], "The castle stood. THE ENDING", "length"),
    ("Dust\n\nlay thick", ["\n\n", "lay"], "Dust", "stop"),
    ("no stop here", [], "no stop here", "length"),
])
def test_stop_strings_cut_the_text_and_are_held_back_while_ambiguous(tiny_tokenizer, text, stop, shown, reason):
    decoder = StreamDecoder(tiny_tokenizer, eot_id(tiny_tokenizer), stop)
    pieces = []
    for i in tiny_tokenizer.encode(text).ids:
        pieces.append(decoder.push(i))
        if decoder.finish_reason:
            break
        # nothing shown so far may be the start of a stop string that has not finished yet
        assert not any(s[:-1] and "".join(pieces).endswith(s[:len(s) - 1]) for s in stop)
    pieces.append(decoder.finish("length"))
    assert "".join(pieces) == shown and decoder.finish_reason == reason


def test_abandoned_stream_leaves_the_engine_usable(engine):
    settings = SamplingSettings(max_new_tokens=40, temperature=1.0)
    expected = "".join(engine.stream("The castle", settings, seed=9))
    stream = engine.stream("The castle", settings, seed=9)
    next(stream)
    stream.close()  # what Ctrl+C in chat does
    assert stream.finish_reason == "closed"
    assert list(stream) == []
    for _ in engine.stream("The castle", settings, seed=9):
        break  # a for loop left early, then garbage
    assert "".join(engine.stream("The castle", settings, seed=9)) == expected


# --- prompts and settings -------------------------------------------------------------------------


def test_empty_prompt_starts_from_endoftext(engine, tiny_tokenizer):
    ids, notice = engine.prepare_prompt("")
    assert ids == [eot_id(tiny_tokenizer)] and notice is None
    assert engine.generate("", GREEDY)[0].finish_reason in ("eot", "length")


def test_long_prompt_keeps_its_tail_and_says_so(engine):
    ids, notice = engine.prepare_prompt(list(range(1, 101)))
    assert ids == list(range(69, 101)) and "100 tokens" in notice and "last 32" in notice
    stream = engine.stream("word " * 200, GREEDY)
    assert len(stream.prompt_ids) == 32 and stream.notice
    assert len("".join(stream)) > 0


def test_prompt_ids_outside_the_vocabulary_are_refused(engine):
    with pytest.raises(GothicError, match="outside the vocabulary"):
        engine.stream([1, 10_000], GREEDY)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.5, "temperature must be >= 0"),
    ("temperature", math.nan, "temperature must be >= 0"),
    ("top_k", -1, "top-k must be >= 1"),
    ("top_p", 0.0, "top-p must be in"),
    ("top_p", 1.5, "top-p must be in"),
    ("max_new_tokens", 0, "max tokens must be >= 1"),
    ("repetition_penalty", 0.0, "repetition penalty must be > 0"),
])
def test_bad_settings_are_one_line_errors(engine, field, value, message):
    settings = SamplingSettings(**{field: value})
    with pytest.raises(GothicError, match=message):
        engine.stream("The", settings)


def test_temperature_zero_and_top_k_zero_are_valid():
    assert SamplingSettings(temperature=0.0, top_k=0, top_p=1.0).validate().greedy


# --- checkpoint + tokenizer -----------------------------------------------------------------------


def test_from_checkpoint_generates(checkpoint, tiny_tokenizer_path):
    engine = Engine.from_checkpoint(checkpoint, tiny_tokenizer_path, device="cpu")
    assert engine.checkpoint_info.step == 7
    assert engine.generate("The", GREEDY)[0].token_ids


def test_tokenizer_the_checkpoint_was_not_trained_with_is_refused(checkpoint, tiny_tokenizer_path, tmp_path):
    changed = tmp_path / "tokenizer.json"
    changed.write_text(tiny_tokenizer_path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(GothicError, match="is not the tokenizer .* was trained with"):
        Engine.from_checkpoint(checkpoint, changed, device="cpu")


def test_vocab_size_mismatch_is_refused(tiny_tokenizer, tiny_tokenizer_path, tmp_path):
    other = save_tiny_checkpoint(tmp_path / "big.pt", tiny_gpt(512), tiny_tokenizer_path)
    with pytest.raises(GothicError, match="512-token vocabulary"):
        Engine.from_checkpoint(other, tiny_tokenizer_path, device="cpu")
    with pytest.raises(GothicError, match="512-token vocabulary"):
        Engine(tiny_gpt(512), tiny_tokenizer)


# --- gothic-generate ------------------------------------------------------------------------------


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        generate_main(args)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_deterministic_mode_is_reproducible(checkpoint, tiny_tokenizer_path, capsys):
    args = ["--checkpoint", str(checkpoint), "--tokenizer", str(tiny_tokenizer_path), "--prompt",
            "In the shadow of R'lyeh", "--max-tokens", "20", "--temperature", "0.1", "--top-k", "1"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and out.startswith("In the shadow of R'lyeh") and len(out) > len("In the shadow of R'lyeh")
    assert run_cli(args, capsys)[1] == out


def test_cli_seeded_samples_are_reproducible(checkpoint, tiny_tokenizer_path, capsys):
    args = ["--checkpoint", str(checkpoint), "--tokenizer", str(tiny_tokenizer_path), "--prompt", "The",
            "--max-tokens", "15", "--num-samples", "3", "--seed", "4", "--top-p", "0.95", "--repetition-penalty",
            "1.1", "--stats"]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and out.count("--- sample") == 3 and "(seed 6)" in out and err.count("tokens/s") == 3
    assert run_cli(args, capsys)[1] == out


def test_cli_interactive_reads_prompts_until_eof(checkpoint, tiny_tokenizer_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("The castle\n\nDust lay\n"))
    code, out, _ = run_cli(["--checkpoint", str(checkpoint), "--tokenizer", str(tiny_tokenizer_path),
                            "--interactive", "--max-tokens", "5"], capsys)
    assert code == 0 and "The castle" in out and "Dust lay" in out


@pytest.mark.parametrize("extra, message", [
    (["--top-p", "1.5"], "top-p"),
    (["--top-p", "0"], "top-p"),
    (["--top-k", "-1"], "top-k"),
    (["--temperature", "-1"], "temperature"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--num-samples", "0"], "--num-samples"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
])
def test_cli_bad_values_exit_2_with_one_line(checkpoint, tiny_tokenizer_path, capsys, extra, message):
    code, _, err = run_cli(["--checkpoint", str(checkpoint), "--tokenizer", str(tiny_tokenizer_path)] + extra,
                           capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_bad_files_exit_2_with_one_line(checkpoint, tiny_tokenizer_path, tmp_path, capsys):
    changed = tmp_path / "tokenizer.json"
    changed.write_text(tiny_tokenizer_path.read_text(encoding="utf-8") + " ", encoding="utf-8")
    cases = [["--checkpoint", str(tmp_path / "missing.pt"), "--tokenizer", str(tiny_tokenizer_path)],
             ["--checkpoint", str(checkpoint), "--tokenizer", str(tmp_path / "missing.json")],
             ["--checkpoint", str(checkpoint), "--tokenizer", str(changed)]]
    for args in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_extreme_settings_still_draw_the_top_token():
    """A temperature or top-p so small it under/overflows float32 behaves as greedy, never crashes."""
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    generators = [torch.Generator().manual_seed(0)]
    for settings in (SamplingSettings(temperature=1e-60, top_k=0, top_p=1.0),
                     SamplingSettings(temperature=0.8, top_k=0, top_p=1e-56)):
        assert sample_next(logits, settings, generators).tolist() == [1]


# --- the compute dtype ------------------------------------------------------------------------------

@pytest.fixture()
def sharp_checkpoint(tiny_tokenizer, tiny_tokenizer_path, tmp_path):
    """Peaked logits (weight_std 0.5) and the modern switches, rotary included."""
    model = tiny_gpt(tiny_tokenizer.get_vocab_size(), block_size=32, weight_std=0.5, pos_embedding="rope",
                     norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, bias=False)
    return save_tiny_checkpoint(tmp_path / "best.pt", model, tiny_tokenizer_path, carry_tokenizer=True)


def test_auto_dtype_is_fp32_without_bf16_units_and_exact(sharp_checkpoint, monkeypatch):
    """Without bf16 units the weights stay fp32 and generation is exactly the fp32 model's greedy text,
    recomputed here without the cache."""
    import gothic.runtime

    monkeypatch.setattr(gothic.runtime, "cpu_has_bf16_units", lambda: False)
    engine = Engine.from_checkpoint(sharp_checkpoint, device="cpu")
    assert engine.dtype == torch.float32 and all(p.dtype == torch.float32 for p in engine.model.parameters())
    reference, _ = load_model(sharp_checkpoint)
    prompt = engine.tokenizer.encode("The night").ids
    assert greedy_tokens(engine.model, prompt, 30, use_cache=True) == greedy_tokens(reference, prompt, 30, False)


def test_auto_dtype_is_bf16_with_bf16_units_cast_once(sharp_checkpoint, monkeypatch):
    """With bf16 units the weights are held in bf16 (no autocast), the rotary tables stay fp32, the
    KV cache follows the weights, and greedy choices agree with fp32 but for bf16 rounding."""
    import gothic.runtime

    monkeypatch.setattr(gothic.runtime, "cpu_has_bf16_units", lambda: True)
    engine = Engine.from_checkpoint(sharp_checkpoint, device="cpu")
    model = engine.model
    assert engine.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.rope_cos.dtype == model.rope_sin.dtype == torch.float32
    assert model.new_cache(1).keys[0].dtype == torch.bfloat16
    reference, _ = load_model(sharp_checkpoint)
    # teacher-forced: the argmax at every position of one text, so one early flip cannot derail the rest
    ids = torch.tensor([engine.tokenizer.encode("It was a dark and stormy night; the rain fell in torrents").ids[:32]])
    with torch.inference_mode():
        fast = model(ids)[0].float().argmax(-1)
        exact = reference(ids)[0].argmax(-1)
    agreement = (fast == exact).float().mean().item()
    assert agreement >= 0.9, agreement
    assert Engine.from_checkpoint(sharp_checkpoint, device="cpu", dtype="float32").dtype == torch.float32
