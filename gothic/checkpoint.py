"""Checkpoints: the format (one definition, `TrainingCheckpoint`), atomic saves, safe loads, listing.

A checkpoint is one `torch.save` file holding only tensors and plain Python values, so it loads
with `torch.load(weights_only=True)`: a file that would need to run code to unpickle is refused,
never executed. Writes are atomic (temp file, fsync, rename), so a crash never leaves a half file.

`TrainingCheckpoint` is the layout (FORMAT_VERSION 2): the weights, the model and train configs,
the vocabulary size and the tokenizer (the text of its tokenizer.json and its sha256), the run
identity (gothic.rundir), the run's progress (`RunState`: step, losses, tokens, clocks, schedule,
history), and, in latest.pt only, what resuming needs (optimizer, scaler, sampler, rng, and the
weight average with train.ema). best.pt and final.pt leave that out, so they are a third of the
size; with train.ema their model is the average (`published_weights`). Training writes and resumes through
it. Every reader asks `CheckpointInfo`, the typed view of a file's plain values with one table
of what older files mean by a missing key (`INFO_FIELDS`); building the model a file describes is
gothic.loading's (`load_model`).

Version 1 (still read) had no `tokenizer`, and best/final were copies of latest.pt; such a
checkpoint needs its tokenizer.json given separately. `check_same_tokenizer` is the one rule for
"trained with this tokenizer". `find_checkpoints` and `summarize_checkpoint` list a folder's
checkpoints (step, val loss) without loading their weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import pickle
import pickletools
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from gothic.config import DROPOUT_KEYS, MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from gothic.errors import GothicError, first_line
from gothic.files import WriteError, atomic_path

FORMAT_VERSION = 2  # 2: the tokenizer travels inside; best/final hold no optimizer state


# What resuming needs beyond what every checkpoint has; best.pt and final.pt leave it out.
TRAINING_STATE_KEYS = ("optimizer", "scaler", "sampler", "rng", "ema")
# ema (the weight average, gothic.ema) came later and is None without train.ema: a file may lack it
RESUME_KEYS = ("train_config", *(k for k in TRAINING_STATE_KEYS if k != "ema"), "best_step", "val_loss",
               "tokens_seen", "wall_time_s", "history")


# --- the read side: one typed view of a checkpoint's plain values ---------------------------------

REQUIRED = object()
"""INFO_FIELDS' mark for a key every gothic checkpoint has had since format 1."""


def _schedule_end(ckpt: dict) -> int:
    """A file from before `horizon` was saved was heading for the max_iters it was trained with."""
    train = ckpt.get("train_config")
    max_iters = train.get("max_iters") if isinstance(train, dict) else None
    return max_iters if _is_int(max_iters) else ckpt["step"]


Number = int | float
INFO_FIELDS: dict[str, tuple[type, object]] = {
    "format_version": (int, REQUIRED),
    "model_config": (dict, REQUIRED),
    "model_config_sha256": (str | None, None),  # written since model configs were checksummed
    "vocab_size": (int, REQUIRED),
    "tokenizer_sha256": (str | None, REQUIRED),
    "step": (int, REQUIRED),
    "best_val_loss": (Number, REQUIRED),
    "tokenizer": (str | None, None),  # format 1 carried no tokenizer
    "train_config": (dict, lambda _ckpt: {}),
    "run_identity": (dict | None, None),  # written since run keys came (gothic.rundir)
    "best_step": (int, -1),
    "val_loss": (Number, math.inf),
    "tokens_seen": (int, 0),
    "wall_time_s": (Number, 0.0),
    "train_time_s": (Number, 0.0),
    "horizon": (int, _schedule_end),
    "history": (dict, lambda ckpt: {"train": [], "val": []}),  # the logged rows: the model card's loss curve
}
"""Every plain value a reader may ask of a checkpoint: its type, and what a file written before the
key existed means by its absence (REQUIRED: the file is damaged without it; a callable computes the
value from the file's other values; anything else is the value)."""


@dataclass(frozen=True)
class TokenizerIdentity:
    """What "the same tokenizer" compares: the vocabulary size, and the tokenizer.json hash where known."""

    vocab_size: int
    sha256: str | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint's plain values, checked against INFO_FIELDS: what every reader asks instead of
    picking keys out of the loaded dict (the weights and the resume state stay out)."""

    format_version: int
    model_config: dict
    model_config_sha256: str | None
    """The checksum model_config was saved with (gothic.loading.model_config_from checks it)."""
    vocab_size: int
    tokenizer_sha256: str | None
    step: int
    best_val_loss: float
    tokenizer: str | None
    """The tokenizer.json text (format 2); None: give the tokenizer separately."""
    train_config: dict
    run_identity: dict | None
    best_step: int
    val_loss: float
    """The last evaluation's val loss (inf before the first)."""
    tokens_seen: int
    wall_time_s: float
    train_time_s: float
    horizon: int
    """The max_iters the learning-rate schedule was heading for: the run is complete there."""
    history: dict
    """The run's logged rows up to step: {"train": [{step, train_loss, lr, ...}], "val": [{step, val_loss}]}."""

    @classmethod
    def from_dict(cls, path: str | Path, ckpt: dict) -> CheckpointInfo:
        """Check a loaded checkpoint's plain values; a missing or mistyped one is a GothicError naming it."""
        missing = [k for k, (_, fallback) in INFO_FIELDS.items() if fallback is REQUIRED and k not in ckpt]
        if missing:
            raise GothicError(f"{path}: checkpoint lacks {', '.join(missing)}; the file is damaged")
        values = {}
        for key, (kind, fallback) in INFO_FIELDS.items():
            value = ckpt[key] if key in ckpt else fallback(ckpt) if callable(fallback) else fallback
            if not isinstance(value, kind) or isinstance(value, bool):
                raise GothicError(f"{path}: {key} is a {type(value).__name__}, not a {_kind_name(kind)}; the file "
                                  "is damaged or not from gothic")
            values[key] = float(value) if kind is Number else value
        if not MIN_VOCAB_SIZE <= values["vocab_size"] <= MAX_VOCAB_SIZE or values["step"] < 0:
            raise GothicError(f"{path}: impossible vocab_size {values['vocab_size']} or step {values['step']}; "
                              "the file is damaged")
        return cls(**values)

    @property
    def tokenizer_identity(self) -> TokenizerIdentity:
        return TokenizerIdentity(self.vocab_size, self.tokenizer_sha256)

    @property
    def weights_val_loss(self) -> float | None:
        """The val loss of these weights: the last evaluation's, else the best one recorded (None: neither)."""
        return next((v for v in (self.val_loss, self.best_val_loss) if math.isfinite(v)), None)


def _kind_name(kind) -> str:
    names = {dict: "mapping", int: "whole number", Number: "number", str | None: "string", dict | None: "mapping"}
    return names.get(kind, str(kind))


@dataclass
class RunState:
    """A run's progress: what a checkpoint carries besides the weights, configs and resume state."""

    step: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    val_loss: float = math.inf
    tokens_seen: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    """Seconds spent in training steps, over every session of the run (for tokens/s)."""
    horizon: int = 0
    """The max_iters the learning-rate schedule is heading for (the run is complete there)."""
    lr_segment: tuple[int, float] | None = None
    """Set when the run was continued to another max_iters (gothic.optim.get_lr)."""
    log_window: tuple[float, int] = (0.0, 0)
    """Train loss summed over the steps since the last log line, and their number: a run stopped
    between two log lines logs the same mean after it continues as it would have without stopping."""
    history: dict[str, list[dict]] = field(default_factory=lambda: {"train": [], "val": []})
    """Rows for the plots: {"step", "train_loss", "lr", "tokens_per_s"} and {"step", "val_loss"}."""

    def to_dict(self) -> dict:
        return {"step": self.step, "best_val_loss": self.best_val_loss, "best_step": self.best_step,
                "val_loss": self.val_loss, "tokens_seen": self.tokens_seen, "wall_time_s": self.wall_time_s,
                "train_time_s": self.train_time_s, "horizon": self.horizon,
                "lr_segment": list(self.lr_segment) if self.lr_segment else None,
                "log_window": list(self.log_window), "history": self.history}

    @classmethod
    def from_dict(cls, path: Path, info: CheckpointInfo, ckpt: dict) -> RunState:
        """The saved progress (info: the checked plain values of ckpt), the rows of its history and its
        resume-only values checked here; history rows past the saved step (logged after it) are dropped. lr_segment and
        log_window came after format 2 and may be absent."""
        step = info.step
        lr_segment, log_window, history = ckpt.get("lr_segment"), ckpt.get("log_window") or (0.0, 0), info.history
        if lr_segment is not None and not _is_pair(lr_segment, int, Number):
            raise _damaged(path, "lr_segment", "a (step, learning rate) pair")
        if not _is_pair(log_window, Number, int):
            raise _damaged(path, "log_window", "a (loss sum, steps) pair")
        if not (isinstance(history, dict) and set(history) == {"train", "val"} and all(
                isinstance(rows, list) and all(_is_row(r) for r in rows) for rows in history.values())):
            raise _damaged(path, "history", "train and val lists of rows of numbers with a step")
        return cls(step=step, best_val_loss=info.best_val_loss, best_step=info.best_step, val_loss=info.val_loss,
                   tokens_seen=info.tokens_seen, wall_time_s=info.wall_time_s, train_time_s=info.train_time_s,
                   horizon=info.horizon, lr_segment=tuple(lr_segment) if lr_segment else None,
                   log_window=tuple(log_window),
                   history={k: [row for row in rows if row["step"] <= step] for k, rows in history.items()})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_row(row) -> bool:
    """A logged row: its step, and numbers (a string where a loss belongs would reach the plots)."""
    return isinstance(row, dict) and _is_int(row.get("step")) and all(
        isinstance(v, Number) and not isinstance(v, bool) for v in row.values())


def _is_pair(value, first: type, second: type) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2 and not any(isinstance(v, bool) for v in value)
            and isinstance(value[0], first) and isinstance(value[1], second))


def _damaged(path: Path, key: str, expected: str) -> GothicError:
    return GothicError(f"{path}: {key} is not {expected}; the file is damaged: start fresh with "
                       "train.resume: false, or use a copy of the checkpoint")


@dataclass
class TrainingCheckpoint:
    """The checkpoint format: every key a checkpoint file holds, written and read only through here."""

    model: dict
    """The plain model's state_dict (no DDP `module.` or compile `_orig_mod.` prefixes)."""
    model_config: dict
    vocab_size: int
    tokenizer_sha256: str | None
    tokenizer: str | None = None
    """The tokenizer.json text, so a model needs no other file (None: give the tokenizer separately)."""
    train_config: dict = field(default_factory=dict)
    run_identity: dict | None = None
    state: RunState = field(default_factory=RunState)
    optimizer: list[dict] | None = None
    """This and the next four: only in latest.pt, for resuming (TRAINING_STATE_KEYS)."""
    scaler: dict | None = None
    sampler: dict | None = None
    rng: list[dict] | None = None
    ema: dict | None = None
    """The weight average's state (gothic.ema.WeightAverage.state_dict), when train.ema is on."""

    def to_dict(self, resumable: bool = True) -> dict:
        """What torch.save writes (save_checkpoint adds the format version and config checksum). The
        published copy (not resumable: best.pt, final.pt) of a run with a weight average holds the
        average as its model; latest.pt the raw weights, which training continues from."""
        model = self.model if resumable or self.ema is None else published_weights(self.model, self.ema)
        out = {"model": model, "model_config": self.model_config, "train_config": self.train_config,
               "vocab_size": self.vocab_size, "tokenizer_sha256": self.tokenizer_sha256,
               "tokenizer": self.tokenizer, "run_identity": self.run_identity, **self.state.to_dict()}
        if resumable:
            out.update(optimizer=self.optimizer, scaler=self.scaler, sampler=self.sampler, rng=self.rng, ema=self.ema)
        return out

    def save(self, path: str | Path, resumable: bool = True) -> None:
        save_checkpoint(path, self.to_dict(resumable))

    @classmethod
    def load_resumable(cls, path: Path) -> TrainingCheckpoint:
        """A checkpoint to continue training from (latest.pt); one without the state resuming needs
        (best.pt, final.pt, an older file) is a GothicError that says so."""
        ckpt, info = read_checkpoint(Path(path))
        missing = [key for key in RESUME_KEYS if key not in ckpt]
        if missing:
            raise GothicError(f"{path}: holds no training state ({', '.join(missing)}), so it cannot be resumed; "
                              "start fresh with train.resume: false")
        return cls(model=ckpt["model"], model_config=info.model_config, vocab_size=info.vocab_size,
                   tokenizer_sha256=info.tokenizer_sha256, tokenizer=info.tokenizer, train_config=info.train_config,
                   run_identity=info.run_identity, state=RunState.from_dict(path, info, ckpt),
                   **{key: ckpt.get(key) for key in TRAINING_STATE_KEYS})

    def check_continues(self, path: Path, model_config: dict, optimizer: str, n_optimizers: int,
                        vocab_size: int, tokenizer_sha256: str) -> None:
        """Refuse to continue with another tokenizer, vocabulary, model shape or optimizer."""
        check_same_tokenizer(TokenizerIdentity(self.vocab_size, self.tokenizer_sha256), path,
                             TokenizerIdentity(vocab_size, tokenizer_sha256), "the bins' tokenizer",
                             "start fresh (train.resume: false) or use the original tokenizer")
        # the dropout settings shape nothing, so they may change on resume; every other field must match
        diffs = [f"model.{k}: checkpoint {self.model_config.get(k)!r}, params {v!r}"
                 for k, v in model_config.items() if k not in DROPOUT_KEYS and self.model_config.get(k) != v]
        if diffs:
            raise GothicError(f"{path}: a different model shape ({'; '.join(diffs)}); "
                              "restore those params or start fresh with train.resume: false")
        saved = self.train_config.get("optimizer")
        if saved != optimizer or len(self.optimizer) != n_optimizers:
            raise GothicError(f"{path}: trained with optimizer {saved!r}, params say {optimizer!r}")


def published_weights(model: dict, ema: dict) -> dict:
    """The model state_dict with the weight average's tensors (gothic.ema) in place of the raw ones, each
    in the raw one's dtype. A tied weight, listed once in the average, is replaced under every name
    that shares its storage, so the copies stay one tensor."""
    averaged = {model[name].data_ptr(): weight.to(model[name].dtype) for name, weight in ema["weights"].items()}
    return {key: averaged.get(value.data_ptr(), value) for key, value in model.items()}


def check_same_tokenizer(trained: TokenizerIdentity, trained_name: str | Path, other: TokenizerIdentity,
                         other_name: str, remedy: str = "use the tokenizer the model was trained with") -> None:
    """The one rule for "trained with this tokenizer": the same vocabulary size, and the same
    tokenizer.json hash where both sides know it.

    Args:
        trained: the model's side (CheckpointInfo.tokenizer_identity).
        trained_name: how to name the checkpoint (a path, or "the model").
        other: the other side (a tokenizer file, the bins); a None sha256 is unknown.
        other_name: how to name the other side (a tokenizer path, the bins).
        remedy: what the message tells the user to do.
    """
    if trained.vocab_size != other.vocab_size:
        raise GothicError(f"{trained_name} was trained with a {trained.vocab_size}-token vocabulary but "
                          f"{other_name} has {other.vocab_size}: {remedy}")
    if trained.sha256 and other.sha256 and trained.sha256 != other.sha256:
        raise GothicError(f"{other_name} (sha256 {other.sha256[:12]}) is not the tokenizer {trained_name} was "
                          f"trained with (sha256 {trained.sha256[:12]}): {remedy}")


def weights_sha256(state: dict) -> str:
    """A checksum of a state_dict's tensors (names, dtypes, shapes and bytes, in name order): what a
    checkpoint records of its weights, so a flipped bit fails the load instead of changing the model,
    and what names a fine-tune's base in its run key whatever file it came in (gothic.base)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def config_digest(model_config: dict) -> str:
    """A checksum of the model config as saved. Not every field shows in a weight's shape (n_head
    does not, without QK-norm), so an edited field would otherwise load silently into a wrong model."""
    return hashlib.sha256(json.dumps(model_config, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` (tensors and plain values) atomically, stamped with FORMAT_VERSION and the
    model config's checksum."""
    state = {"format_version": FORMAT_VERSION, **state}
    if isinstance(state.get("model_config"), dict):
        state["model_config_sha256"] = config_digest(state["model_config"])
    if isinstance(state.get("model"), dict):
        state["weights_sha256"] = weights_sha256(state["model"])
    with atomic_path(path) as tmp:  # turns OSErrors (ENOSPC, EROFS, ...) into one line, removes tmp
        try:
            torch.save(state, tmp)
        except RuntimeError as e:
            # torch's own writer reports a failed write (a full disk, mostly) without an errno
            raise WriteError(f"cannot write {path}: the write stopped part-way ({first_line(e)}); the disk is "
                             "probably full: free some space and run again (files written before are intact)"
                             ) from None


LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, LookupError, struct.error,
               zipfile.BadZipFile, OSError)
"""What torch.load(weights_only=True) raises for a file it cannot load: a refused pickle, or a
truncated or corrupt file (garbage reaches KeyError, IndexError and struct.error in its unpickler)."""
_IMPORT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})
_MAX_PICKLES = 5  # the legacy (non-zip) torch format is five pickles in a row; then come raw tensor bytes


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a gothic checkpoint under weights_only=True.

    Raises GothicError, naming the file, when it is missing, truncated, not a gothic checkpoint,
    written by a newer gothic, or holds objects that would run code when unpickled.
    """
    return read_checkpoint(Path(path), map_location)[0]


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict, CheckpointInfo]:
    """load_checkpoint's work: the loaded dict, and its checked plain values."""
    if path.is_dir():
        raise GothicError(f"{path}: is a folder; pass a checkpoint file such as models/best.pt")
    if not path.is_file():
        raise GothicError(f"{path}: checkpoint not found")
    try:
        ckpt = _quiet_load(path, map_location=map_location)
    except LOAD_ERRORS as e:
        if isinstance(e, pickle.UnpicklingError) and imports_objects(path):
            raise GothicError(f"{path}: refused to load: it holds Python objects that could run code "
                              "(only tensors and plain values are allowed); not a gothic checkpoint") from None
        raise GothicError(f"{path}: cannot be read ({_load_error_detail(e)}); the file is truncated or not a "
                          "checkpoint") from None
    info = _check_contents(path, ckpt)
    recorded = ckpt.get("weights_sha256")  # absent in files written before it was added
    if isinstance(ckpt.get("model"), dict) and recorded is not None and recorded != weights_sha256(ckpt["model"]):
        raise GothicError(f"{path}: the weights do not match the checksum recorded with them; the file is damaged "
                          "(a flipped bit, a bad copy): use another copy or an earlier checkpoint")
    return ckpt, info


def _quiet_load(path: Path, **kwargs):
    """torch.load(weights_only=True) without the two-line warning it prints for a pickle of protocol
    > 2 (foreign files only: torch writes 2), which would precede our one-line refusal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, weights_only=True, **kwargs)


def read_info(path: str | Path) -> CheckpointInfo:
    """A checkpoint's plain values (step, run identity, ...) without reading its tensors: the file is
    memory-mapped, so even a large checkpoint is inspected at once. Same errors as load_checkpoint."""
    path = Path(path)
    try:
        ckpt = _quiet_load(path, map_location="cpu", mmap=True)
    except LOAD_ERRORS:
        return read_checkpoint(path)[1]  # the full load gives the precise error (or, for the legacy format, the data)
    return _check_contents(path, ckpt)


def imports_objects(path: Path) -> bool:
    """Whether the file holds well-formed pickles that import Python objects (GLOBAL and kin).

    Every weights_only refusal mentions weights_only, garbage included, and a protocol-4 pickle is
    refused as an "Unsupported operand" before its imports are reached; so the file is judged by
    its own opcodes. pickletools parses them and executes none. The pickles are the zip's data.pkl,
    else the file itself (the legacy torch format, or a bare pickle).
    """
    try:
        with _pickle_stream(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools decoding garbage warns of bad escapes
            for _ in range(_MAX_PICKLES):
                start = f.tell()
                pickletools.dis(f, out=io.StringIO())  # raises unless a whole, consistent pickle comes next
                f.seek(start)
                if any(opcode.name in _IMPORT_OPCODES for opcode, _, _ in pickletools.genops(f)):
                    return True
    except Exception:  # whatever pickletools trips on is not a well-formed pickle
        return False
    return False


def _pickle_stream(path: Path) -> BinaryIO:
    if not zipfile.is_zipfile(path):
        return path.open("rb")
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl"), None)
        return io.BytesIO(archive.read(name) if name else b"")


def _load_error_detail(e: BaseException) -> str:
    """The telling part of a load error: torch's unpickler buries it under paragraphs of advice."""
    if isinstance(e, LookupError | struct.error):
        return f"malformed pickle data: {type(e).__name__}"
    _, marker, rest = str(e).partition("WeightsUnpickler error:")
    detail = next((line.strip() for line in rest.splitlines() if line.strip()), "") if marker else ""
    return detail.partition(". ")[0] or first_line(e)  # its first sentence: the rest is how to allowlist


def _check_contents(path: Path, ckpt) -> CheckpointInfo:
    """ckpt's plain values, once it is a gothic checkpoint this gothic reads with every one well typed."""
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise GothicError(f"{path}: not a gothic checkpoint (no format_version); train one with gothic-train")
    version = ckpt["format_version"]
    if not _is_int(version):
        raise GothicError(f"{path}: format_version is a {type(version).__name__}, not a whole number; the file is "
                          "damaged or not from gothic")
    if version > FORMAT_VERSION:
        raise GothicError(f"{path}: checkpoint format {version!r} is newer than this gothic reads "
                          f"({FORMAT_VERSION}); upgrade gothic")
    info = CheckpointInfo.from_dict(path, ckpt)
    if "model" not in ckpt:
        raise GothicError(f"{path}: checkpoint lacks model; the file is damaged")
    if not isinstance(ckpt["model"], dict):
        raise GothicError(f"{path}: model is a {type(ckpt['model']).__name__}, not a mapping; the file is damaged "
                          "or not from gothic")
    return info


CHECKPOINT_NAMES = ("best", "latest", "final")
"""The files training writes, listed first."""


@dataclasses.dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint file as the chat's /models lists it; `error` says why step and val loss are missing."""

    path: Path
    size: int
    modified: float
    step: int | None = None
    val_loss: float | None = None
    error: str | None = None


def find_checkpoints(models_dir: Path) -> list[Path]:
    """Every *.pt under models_dir: best, latest, final first (in that order), then the rest."""
    if not models_dir.is_dir():
        return []
    found = sorted(p for p in models_dir.rglob("*.pt") if p.is_file())
    named = [models_dir / f"{name}.pt" for name in CHECKPOINT_NAMES]
    return [p for p in named if p in found] + [p for p in found if p not in named]


def summarize_checkpoint(path: Path) -> CheckpointSummary:
    """Step and val loss of a checkpoint, read without loading its tensors (read_info maps the file),
    so listing large checkpoints (weights plus optimizer state) stays instant."""
    stat = path.stat()
    base = CheckpointSummary(path, stat.st_size, stat.st_mtime)
    try:
        ckpt = _quiet_load(path, map_location="cpu", mmap=True)
    except LOAD_ERRORS:
        return dataclasses.replace(base, error="unreadable")
    try:
        info = _check_contents(path, ckpt)
    except GothicError:
        return dataclasses.replace(base, error="not a gothic checkpoint")
    return dataclasses.replace(base, step=info.step, val_loss=info.weights_val_loss)
