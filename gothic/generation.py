"""The generation engine: the one sampler behind the `sample` stage, `gothic-generate` and `gothic-chat`.

Two layers, so each can be tested alone, both driven by `gothic.config.SamplingSettings`:

* token level (no tokenizer): the logit filters (`apply_repetition_penalty`, `filter_top_k`,
  `filter_top_p`), `sample_next` and `generate_tokens`, which runs the model with a KV cache (one
  prefill, then one token per step) and yields a batch of sampled ids per step;
* text level: `Engine` (model + tokenizer + device) turns prompts into text, streaming pieces that
  never split a UTF-8 character.

    engine = Engine.from_checkpoint("models/best.pt", device="auto")  # the tokenizer travels inside
    settings = SamplingSettings(max_new_tokens=200, temperature=0.8, top_k=40, top_p=0.9)
    stream = engine.stream("In the shadow of R'lyeh", settings, seed=1, stop=["\\n\\n"])
    if stream.notice:                 # the prompt was cut to fit the context; say so once
        show(stream.notice)
    try:
        for piece in stream:          # str pieces, joined they equal the decoded continuation
            show(piece)
    except KeyboardInterrupt:
        stream.close()                # abandoning a stream is safe: the engine stays usable
    stream.finish_reason              # "eot" | "stop" | "length" | "closed"
    texts = [c.text for c in engine.generate("The night was", settings, num_samples=3, seed=1)]

Rules every caller gets:

* Prompt: text (encoded here) or token ids. An empty prompt starts from `<|endoftext|>` (a document
  start). A prompt longer than the context keeps its last `block_size` tokens; `notice` says so.
* Context window: the model sees at most `block_size` tokens. When the next token would overflow
  it, the window slides: it keeps the last `window_keep(block_size)` tokens and re-prefills the
  cache from them, so a slide costs one prefill every `block_size - keep` tokens instead of one
  full forward per token. With `use_cache=False` the engine recomputes the same window from
  scratch every step, so greedy output is identical with and without the cache.
* Sampling: repetition penalty (CTRL) -> temperature -> top-k -> top-p -> draw. Temperature 0 or
  top-k 1 is greedy (argmax, first index on ties). top_k 0 and top_p 1.0 disable those filters.
* Seeds: sample i of a call draws from its own `torch.Generator` seeded with `seed + i`, so sample i
  is the same whether it is streamed alone or drawn in a batch, on any device (sampling runs on
  the CPU; only float rounding in batched matmuls can make a batch differ). `seed=None` picks a
  fresh seed, readable afterwards from `TextStream.seed` / `Completion.seed`.
* Stopping: at `<|endoftext|>` (never shown), at the first stop string (cut before it; text that
  could still become a stop string is held back until it cannot), or after `max_new_tokens`.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders

from gothic.checkpoint import CheckpointInfo, TokenizerIdentity, check_same_tokenizer
from gothic.config import SamplingSettings, num_samples_problem
from gothic.errors import GothicError
from gothic.loading import load_model, resolve_tokenizer
from gothic.runtime import inference_dtype, resolve_device
from gothic.tokenizer import eot_id, load_tokenizer

if TYPE_CHECKING:
    from gothic.model import GPT

LEGACY_TOKENIZER = Path("data/tokenizer.json")
"""Where a format-1 checkpoint (which carries no tokenizer) finds its tokenizer by default."""

# ---------------------------------------------------------------------------------------------
# small helpers


_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> tuple[str, bool]:
    """Text from argv or stdin that holds bytes which are not UTF-8 -> (clean text, whether it did).

    Python hands such bytes over as lone surrogates (U+DC80..U+DCFF, "surrogateescape"), which the
    tokenizer, the terminal and UTF-8 files all refuse. Each becomes the Latin-1 character of its
    byte (b'caf\\xe9' -> 'café': a Latin-1 terminal or file is the usual source); any other lone
    surrogate becomes U+FFFD. Valid text is returned as it is.
    """
    def fix(match: re.Match) -> str:
        code = ord(match.group())
        return chr(code - 0xDC00) if 0xDC80 <= code <= 0xDCFF else "\ufffd"

    fixed = _SURROGATE.sub(fix, text)
    return fixed, fixed != text


def window_keep(block_size: int) -> int:
    """Tokens kept when the context window slides: three quarters of it.

    Keeping most of the window keeps the text coherent; dropping a quarter means the cost of the
    re-prefill is paid once every block_size/4 tokens rather than on every token.
    """
    return max(1, block_size - block_size // 4)


# ---------------------------------------------------------------------------------------------
# token level: logit filters and the decoding loop


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): for tokens in `seen`, positive logits are divided by
    `penalty` and negative ones multiplied, so a seen token always loses probability when penalty > 1.

    Args:
        logits: (B, V) float.
        seen: (B, V) bool, True for tokens already in the context.
    """
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (others -> -inf); k <= 0 or k >= V keeps all."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    keep = torch.topk(logits, k, dim=-1).indices
    # scatter the kept indices rather than compare with the k-th value, so ties never keep more than k
    mask = torch.ones_like(logits, dtype=torch.bool).scatter(-1, keep, False)
    return logits.masked_fill(mask, -math.inf)


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability reaches p (always at least the top token); p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # a token is dropped once the more likely tokens before it already reach p
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # a p that rounds to 0 in float32 must still leave the top token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def sample_next(logits: torch.Tensor, settings: SamplingSettings, generators: Sequence[torch.Generator],
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row from next-token logits.

    Args:
        logits: (B, V) float32 on the CPU.
        settings: the sampling knobs (validated).
        generators: one CPU torch.Generator per row; row i draws only from generators[i].
        seen: (B, V) bool of tokens in each row's context, for the repetition penalty.
    Returns:
        (B,) int64 token ids.
    """
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.greedy:
        return logits.argmax(dim=-1)
    # shift the row maximum to 0 and divide in float64, so a tiny temperature (which float32 would
    # round to 0, or overflow every logit to inf) leaves the top token and sends the rest to -inf;
    # softmax and the filters ignore the shift
    logits = (logits - logits.max(dim=-1, keepdim=True).values).double()
    logits = filter_top_p(filter_top_k(logits / settings.temperature, settings.top_k), settings.top_p)
    probs = logits.softmax(dim=-1)
    draws = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(draws)


def _last_logits(model: GPT, idx: torch.Tensor, cache) -> torch.Tensor:
    """Next-token logits (B, V) as float32 on the CPU, where sampling happens."""
    with torch.inference_mode():
        logits, _ = model(idx, cache=cache, last_only=True)
    return logits[:, -1, :].float().cpu()


def generate_tokens(model: GPT, prompt_ids: torch.Tensor, settings: SamplingSettings,
                    generators: Sequence[torch.Generator], use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield a (B,) int64 CPU tensor of sampled ids per step, at most settings.max_new_tokens times.

    Knows nothing about text or stopping: the caller stops pulling when it is done, and may close
    the generator at any point (the cache lives and dies with it).

    Args:
        model: a GPT in eval mode.
        prompt_ids: (B, T) int64, 1 <= T <= block_size, on the model's device.
        settings: sampling knobs.
        generators: one CPU generator per row.
        use_cache: False recomputes the whole window every step (same tokens, for comparisons).
    """
    block_size = model.cfg.block_size
    batch, prompt_len = prompt_ids.shape
    if not 1 <= prompt_len <= block_size:
        raise ValueError(f"prompt of {prompt_len} tokens must be 1..{block_size} long (trim it first)")
    device = prompt_ids.device
    seen = None  # (B, V) tokens in each row's text so far, kept only when the penalty needs it
    if settings.repetition_penalty != 1.0:
        seen = torch.zeros(batch, model.vocab_size, dtype=torch.bool).scatter_(1, prompt_ids.cpu(), True)
    cache = None
    if use_cache:
        with torch.inference_mode():
            cache = model.new_cache(batch, device=device)
    context, window_start = prompt_ids, 0
    logits = _last_logits(model, context, cache)  # prefill
    for step in range(settings.max_new_tokens):
        next_ids = sample_next(logits, settings, generators, seen)
        yield next_ids
        if step == settings.max_new_tokens - 1:
            return  # no forward pass for a token nobody will sample
        if seen is not None:
            seen.scatter_(1, next_ids[:, None], True)
        context = torch.cat([context, next_ids[:, None].to(device)], dim=1)
        if context.size(1) - window_start > block_size:
            # slide: both modes move the window at the same step, so they see the same tokens
            window_start = context.size(1) - window_keep(block_size)
            if cache is not None:
                with torch.inference_mode():  # a cache that clears its buffers may touch them only here
                    cache.reset()
            logits = _last_logits(model, context[:, window_start:], cache)
        elif cache is not None:
            logits = _last_logits(model, context[:, -1:], cache)
        else:
            logits = _last_logits(model, context[:, window_start:], None)


# ---------------------------------------------------------------------------------------------
# text level: UTF-8-safe streaming, stop strings, the engine


@dataclass(frozen=True, slots=True)
class Completion:
    """One finished sample."""

    text: str
    """The continuation (without the prompt, cut before a stop string)."""
    token_ids: list[int]
    """Sampled ids before <|endoftext|> (a stop string's tokens included)."""
    finish_reason: str
    """'eot', 'stop' or 'length'."""
    seed: int


class StreamDecoder:
    """Turns one sample's token ids into text pieces: whole characters only, stop strings held back.

    push() each sampled id and show what it returns; finish() at the end flushes the rest. Joined,
    the pieces equal tokenizer.decode(ids) (cut before the first stop string, if any).
    """

    def __init__(self, tokenizer: Tokenizer, eot: int, stop: Sequence[str] = ()):
        self._tok, self._eot, self._stop = tokenizer, eot, _clean_stops(stop)
        self._decoder = decoders.DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.text = ""  # decoded so far, cut at a stop string once one is found
        self.emitted = 0  # characters of self.text handed out
        self.finish_reason: str | None = None

    def push(self, token_id: int) -> str:
        """Take one sampled id; return the text that became safe to show (maybe '')."""
        if token_id == self._eot:
            return self.finish("eot")
        self.ids.append(token_id)
        # DecodeStream returns None while a multi-byte character is incomplete
        self.text += self._decoder.step(self._tok, token_id) or ""
        return self._release(final=False)

    def finish(self, reason: str) -> str:
        """End the row; return whatever was held back (incomplete bytes decode as U+FFFD)."""
        if self.finish_reason is not None:
            return ""
        full = self._tok.decode(self.ids)
        if full.startswith(self.text):  # DecodeStream's output is always a prefix of the full decode
            self.text = full
        self.finish_reason = reason
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        hits = [i for i in (self.text.find(s, self.emitted) for s in self._stop) if i >= 0]
        if hits:
            end = min(hits)
            self.text = self.text[:end]
            self.finish_reason = "stop"
        elif not final:
            end -= self._stop_prefix_len()
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest


class TextStream:
    """The text pieces of one sample, produced lazily as it is iterated.

    Attributes available before iterating: `prompt_ids` (what the model sees first), `notice`
    (a one-line message when the prompt was cut, else None), `seed`. After (or during):
    `text`, `token_ids`, `finish_reason` (None while running).
    """

    def __init__(self, engine: Engine, prompt_ids: list[int], notice: str | None, settings: SamplingSettings,
                 seed: int, stop: Sequence[str], use_cache: bool):
        self.prompt_ids, self.notice, self.seed = prompt_ids, notice, seed
        self._row = StreamDecoder(engine.tokenizer, engine.eot, stop)
        self._pieces = self._run(engine, settings, use_cache)

    def _run(self, engine: Engine, settings: SamplingSettings, use_cache: bool) -> Iterator[str]:
        steps = engine.token_steps(self.prompt_ids, settings, [self.seed], use_cache)
        try:
            for ids in steps:
                piece = self._row.push(int(ids[0]))
                if piece:
                    yield piece
                if self._row.finish_reason is not None:
                    return
            if piece := self._row.finish("length"):
                yield piece
        finally:
            steps.close()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating; safe at any point, the engine stays usable."""
        self._pieces.close()
        if self._row.finish_reason is None:
            self._row.finish_reason = "closed"

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def text(self) -> str:
        """The continuation shown so far."""
        return self._row.text[:self._row.emitted]

    @property
    def token_ids(self) -> list[int]:
        return list(self._row.ids)

    @property
    def finish_reason(self) -> str | None:
        return self._row.finish_reason


class Engine:
    """A model, its tokenizer and a device; generates text. Holds no per-generation state, so any
    number of streams can be opened, abandoned or closed one after another."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, device: torch.device | str = "cpu",
                 checkpoint_info: CheckpointInfo | None = None):
        self.model = model.eval()
        self.checkpoint_info = checkpoint_info
        """The checkpoint's plain values (step, best_val_loss, ...) when loaded from one, else None."""
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = model.wte.weight.dtype
        """What the weights are held and computed in (Engine.from_checkpoint casts them once)."""
        self.eot = eot_id(tokenizer)
        check_same_tokenizer(TokenizerIdentity(model.vocab_size), "the model",
                             TokenizerIdentity(tokenizer.get_vocab_size()), "the tokenizer")

    @classmethod
    def from_checkpoint(cls, checkpoint_path: str | Path, tokenizer_path: str | Path | None = None,
                        device: str = "auto", dtype: str = "auto") -> Engine:
        """Load a checkpoint and its tokenizer, with the weights cast once to the dtype generation
        computes in (gothic.runtime.inference_dtype: `auto` is bf16 where the device has it natively,
        else fp32).

        Without tokenizer_path, the tokenizer inside the checkpoint (format 2), else (an older
        checkpoint) data/tokenizer.json. A given tokenizer the model was not trained with is a
        GothicError.
        """
        if tokenizer_path is not None:
            load_tokenizer(tokenizer_path)  # a bad path fails at once, before the slow model load
        target = resolve_device(device)
        compute_dtype = inference_dtype(target, dtype)
        model, info = load_model(checkpoint_path, device=target)
        model.cast_for_inference(compute_dtype)
        tokenizer, _ = resolve_tokenizer(checkpoint_path, info, tokenizer_path, fallback=LEGACY_TOKENIZER)
        return cls(model, tokenizer, target, info)

    @property
    def block_size(self) -> int:
        return self.model.cfg.block_size

    def prepare_prompt(self, prompt: str | Sequence[int]) -> tuple[list[int], str | None]:
        """Prompt text or ids -> (ids the model starts from, notice or None).

        Empty -> [<|endoftext|>]; longer than the context -> its last block_size tokens.
        """
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(repair_text(prompt)[0], add_special_tokens=False).ids
        else:
            ids = [int(i) for i in prompt]
            vocab = self.model.vocab_size
            if bad := [i for i in ids if not 0 <= i < vocab]:
                raise GothicError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        if not ids:
            return [self.eot], None
        if len(ids) <= self.block_size:
            return ids, None
        notice = (f"prompt is {len(ids)} tokens, longer than the {self.block_size}-token context: "
                  f"using its last {self.block_size} tokens")
        return ids[-self.block_size:], notice

    def token_steps(self, prompt_ids: list[int], settings: SamplingSettings, seeds: Sequence[int],
                    use_cache: bool = True) -> Iterator[torch.Tensor]:
        """The token-level loop for len(seeds) samples of one (prepared) prompt; settings are validated
        by the caller (stream, generate), once per call."""
        batch = torch.tensor([prompt_ids] * len(seeds), dtype=torch.long, device=self.device)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return generate_tokens(self.model, batch, settings, generators, use_cache)

    def stream(self, prompt: str | Sequence[int], settings: SamplingSettings, seed: int | None = None,
               stop: Sequence[str] = (), use_cache: bool = True) -> TextStream:
        """One sample, as text pieces while it is generated.

        Bad settings or prompt ids raise GothicError here, before anything is generated.
        """
        settings.validate()
        ids, notice = self.prepare_prompt(prompt)
        seed = new_seed() if seed is None else seed
        return TextStream(self, ids, notice, settings, seed, stop, use_cache)

    def generate(self, prompt: str | Sequence[int], settings: SamplingSettings, num_samples: int = 1,
                 seed: int | None = None, stop: Sequence[str] = (), use_cache: bool = True) -> list[Completion]:
        """num_samples continuations of one prompt, decoded as one batch (sample i uses seed + i)."""
        settings.validate()
        if problem := num_samples_problem(num_samples):
            raise GothicError(problem)
        ids, _ = self.prepare_prompt(prompt)
        seed = new_seed() if seed is None else seed
        seeds = [seed + i for i in range(num_samples)]
        rows = [StreamDecoder(self.tokenizer, self.eot, stop) for _ in seeds]
        steps = self.token_steps(ids, settings, seeds, use_cache)
        for next_ids in steps:
            for row, token_id in zip(rows, next_ids.tolist(), strict=True):
                if row.finish_reason is None:
                    row.push(token_id)
            if all(row.finish_reason is not None for row in rows):
                steps.close()
                break
        for row in rows:
            row.finish("length")
        return [Completion(r.text, r.ids, r.finish_reason, s) for r, s in zip(rows, seeds, strict=True)]


def _clean_stops(stop: Sequence[str]) -> tuple[str, ...]:
    if isinstance(stop, str):  # a lone string is one stop string, not a set of characters
        stop = (stop,)
    return tuple(s for s in stop if s)


def new_seed() -> int:
    """A fresh seed for an unseeded call (reported back so the sample can be reproduced)."""
    return secrets.randbits(31)
