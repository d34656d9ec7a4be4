"""The `sample` stage's core: fixed prompts and seeds in, `samples/samples.md` and figures out.

`samples.md` is deterministic for a given checkpoint and params (no timings in it), so
`git diff` and `dvc exp` compare what two experiments write. The figures (metrics/sample.json)
are computed on words (lower-cased runs of letters, digits and inner apostrophes) of the
generated continuations, the prompt left out:

* `distinct_n` (n = 1, 2, 3): distinct word n-grams / all word n-grams over all samples
  (Li et al. 2016); low means the model says the same things again and again.
* `repeated_4gram_rate`: share of each sample's word 4-grams that already occurred earlier in the
  same sample, pooled over samples (Welleck et al. 2019's seq-rep-4); high means loops.
* `longest_shared_ngram_max` / `_mean`: the longest run of words that also occurs, in order, in
  the training text; long runs mean memorised text.
* `sample_tokens_per_second`: generated tokens per second of generation (batched per prompt).

    run = draw_samples(engine, cfg)
    shared = shared_ngrams(run, load_text_index(Path("data/processed/train.txt")))
    markdown = render_markdown(run, shared, checkpoint_name="models/best.pt", step=1000)
    metrics = sample_metrics(run, shared)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from gothic.config import SampleConfig, SamplingSettings
from gothic.errors import GothicError
from gothic.generation import Completion, Engine
from gothic.tokenizer import EOT

WORD = re.compile(r"\w+(?:['’]\w+)*")
DISTINCT_NS = (1, 2, 3)
REPEAT_N = 4


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[list[str]], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over texts (0.0 when there are none)."""
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(texts: list[list[str]], n: int = REPEAT_N) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text, pooled over texts."""
    total = repeats = 0
    for t in texts:
        grams = ngrams(t, n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else 0.0


class TextIndex:
    """Answers "does this run of words occur in the training text?" by substring search over the
    text's words joined by single spaces (fast enough for a few MB and a few hundred queries)."""

    def __init__(self, text: str):
        # "|" is never part of a word, so a run cannot bridge two documents
        self._haystack = " " + " | ".join(" ".join(words(doc)) for doc in text.split(EOT)) + " "

    def __contains__(self, run: list[str]) -> bool:
        return f" {' '.join(run)} " in self._haystack


def load_text_index(path: Path) -> TextIndex:
    """Index a training text file; a missing one is a GothicError naming it."""
    try:
        return TextIndex(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GothicError(f"{path}: training text not found (run `dvc repro prepare`)") from None


def longest_shared_ngram(tokens: list[str], index: TextIndex) -> list[str]:
    """The longest run of consecutive words of `tokens` that occurs in the indexed text.

    From each start only a run longer than the best so far is tried, so the searches number
    about len(tokens) plus the best length, not len(tokens) squared.
    """
    best_start, best_len = 0, 0
    for start in range(len(tokens)):
        n = best_len + 1
        while start + n <= len(tokens) and tokens[start:start + n] in index:
            best_start, best_len = start, n
            n += 1
    return tokens[best_start:best_start + best_len]


@dataclass(frozen=True, slots=True)
class PromptSamples:
    prompt: str
    completions: list[Completion]


@dataclass(frozen=True, slots=True)
class SampleRun:
    settings: SamplingSettings
    seed: int
    results: list[PromptSamples]
    seconds: float
    """Wall time spent generating (for tokens/s only; never written to samples.md)."""

    @property
    def new_tokens(self) -> int:
        return sum(len(c.token_ids) + (c.finish_reason == "eot") for r in self.results for c in r.completions)


def draw_samples(engine: Engine, cfg: SampleConfig) -> SampleRun:
    """cfg.num_samples continuations of each prompt in one batch; every prompt uses cfg.seed, so
    adding a prompt does not change the samples of the others."""
    results, seconds = [], 0.0
    for prompt in cfg.prompts:
        started = time.perf_counter()
        completions = engine.generate(prompt, cfg, num_samples=cfg.num_samples, seed=cfg.seed)
        seconds += time.perf_counter() - started
        results.append(PromptSamples(prompt, completions))
    return SampleRun(cfg, cfg.seed, results, seconds)


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in text, so the sample shows verbatim."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def shared_ngrams(run: SampleRun, index: TextIndex) -> list[list[str]]:
    """Each sample's longest word run shared with the training text, in run order."""
    return [longest_shared_ngram(words(c.text), index) for r in run.results for c in r.completions]


def render_markdown(run: SampleRun, shared: list[list[str]], checkpoint_name: str, step: int | None = None) -> str:
    """samples.md: the settings, then each prompt's samples (prompt + continuation, verbatim)
    with its longest word n-gram shared with the training text (`shared`, from `shared_ngrams`)."""
    s = run.settings
    lines = ["# Samples", "",
             f"Checkpoint `{checkpoint_name}`" + (f" (step {step})" if step is not None else "") +
             f"; temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, repetition penalty "
             f"{s.repetition_penalty}, at most {s.max_new_tokens} new tokens, seed {run.seed} (+ i for sample i).",
             ""]
    shared_runs = iter(shared)
    for number, result in enumerate(run.results, 1):
        title = " ".join(result.prompt.split()) or "(empty: starts from <|endoftext|>)"
        lines += [f"## Prompt {number}: {title}", ""]
        for i, c in enumerate(result.completions, 1):
            text = result.prompt + c.text
            fence, common = _fence(text), next(shared_runs)
            lines += [f"### Sample {i} (seed {c.seed}, {len(c.token_ids)} tokens, ended by {c.finish_reason})", "",
                      fence + "text", text, fence, "",
                      f"Longest word n-gram shared with the training text: {len(common)} words"
                      + (f" (\"{' '.join(common)}\")" if common else ""), ""]
    return "\n".join(lines)


def sample_metrics(run: SampleRun, shared: list[list[str]]) -> dict:
    """The figures for metrics/sample.json (see the module docstring)."""
    texts = [words(c.text) for r in run.results for c in r.completions]
    lengths = [len(run_) for run_ in shared]
    metrics = {f"distinct_{n}": round(distinct_n(texts, n), 4) for n in DISTINCT_NS}
    metrics[f"repeated_{REPEAT_N}gram_rate"] = round(repeated_ngram_rate(texts), 4)
    metrics["longest_shared_ngram_max"] = max(lengths, default=0)
    metrics["longest_shared_ngram_mean"] = round(sum(lengths) / len(lengths), 2) if lengths else 0.0
    metrics["samples"] = len(texts)
    metrics["new_tokens"] = run.new_tokens
    metrics["sample_tokens_per_second"] = round(run.new_tokens / run.seconds, 1) if run.seconds > 0 else 0.0
    return metrics
