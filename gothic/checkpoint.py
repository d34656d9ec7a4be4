"""Checkpoints: save and load training state, atomically and safely.

A checkpoint is one `torch.save` file holding only tensors and plain Python values, so it loads
with `torch.load(weights_only=True)`: a file that would need to run code to unpickle is refused,
never executed. Writes are atomic (temp file, fsync, rename), so a crash never leaves a half file.

Contents (FORMAT_VERSION 2): `format_version`, `model` (the uncompiled model's state_dict),
`model_config` (ModelConfig fields), `train_config`, `vocab_size`, `tokenizer` (the text of the
tokenizer.json it was trained with), `tokenizer_sha256`, `step`, `best_val_loss`, `best_step`,
`val_loss`, `tokens_seen`, `wall_time_s`, `history` (logged rows); and in latest.pt only, what
resuming needs: `optimizer`, `scaler`, `sampler`, `rng` (one entry per rank: python, numpy, torch,
cuda). best.pt and final.pt leave those out (`release_state`), so they are a third of the size.

Version 1 (still read) had no `tokenizer`, and best/final were copies of latest.pt; such a
checkpoint needs its tokenizer.json given separately.

Readers elsewhere (generation, evaluation, chat) only need `load_model`:

    model, ckpt = load_model("models/best.pt", device="auto")

`find_checkpoints` and `summarize_checkpoint` list a folder's checkpoints (step, val loss) without
loading their weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import pickle
import pickletools
import random
import struct
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tokenizers import Tokenizer

from gothic.config import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, ModelConfig
from gothic.errors import GothicError
from gothic.files import WriteError, atomic_path
from gothic.model import GPT
from gothic.tokenizer import EOT

FORMAT_VERSION = 2  # 2: the tokenizer travels inside; best/final hold no optimizer state
REQUIRED_KEYS = ("format_version", "model", "model_config", "vocab_size", "tokenizer_sha256", "step",
                 "best_val_loss")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for a `device` param: 'auto' picks cuda > mps > cpu; plain 'cuda' means the
    local rank's GPU under DDP. A device that is not there is a GothicError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GothicError(f"device {name!r} asked for but CUDA is not available; use device: auto or cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "mps" and not torch.backends.mps.is_available():
        raise GothicError("device 'mps' asked for but MPS is not available; use device: auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:  # 'bogus', 'cpu:x': torch's message is a paragraph
        raise GothicError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None


def capture_rng_state(device: torch.device) -> dict:
    """This process's random generator states, as tensors and plain values."""
    _, mt_keys, mt_pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "python": [version, list(py_state), py_gauss],
        "numpy": [torch.from_numpy(mt_keys.astype(np.int64)), mt_pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(state: dict, device: torch.device) -> None:
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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
    with atomic_path(path) as tmp:  # turns OSErrors (ENOSPC, EROFS, ...) into one line, removes tmp
        try:
            torch.save(state, tmp)
        except RuntimeError as e:
            # torch's own writer reports a failed write (a full disk, mostly) without an errno
            raise WriteError(f"cannot write {path}: the write stopped part-way ({_first_line(e)}); the disk is "
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
    path = Path(path)
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
    return _check_contents(path, ckpt)


def _quiet_load(path: Path, **kwargs):
    """torch.load(weights_only=True) without the two-line warning it prints for a pickle of protocol
    > 2 (foreign files only: torch writes 2), which would precede our one-line refusal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, weights_only=True, **kwargs)


def load_checkpoint_info(path: str | Path) -> dict:
    """A checkpoint's plain values (step, run identity, ...) without reading its tensors: the file is
    memory-mapped, so even a large checkpoint is inspected at once. Same errors as load_checkpoint."""
    path = Path(path)
    try:
        ckpt = _quiet_load(path, map_location="cpu", mmap=True)
    except LOAD_ERRORS:
        return load_checkpoint(path)  # the full load gives the precise error (or, for the legacy format, the data)
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
    return detail.partition(". ")[0] or _first_line(e)  # its first sentence: the rest is how to allowlist


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _check_contents(path: Path, ckpt) -> dict:
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise GothicError(f"{path}: not a gothic checkpoint (no format_version); train one with gothic-train")
    version = ckpt["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GothicError(f"{path}: checkpoint format {version!r} is newer than this gothic reads "
                          f"({FORMAT_VERSION}); upgrade gothic")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise GothicError(f"{path}: checkpoint lacks {', '.join(missing)}; the file is damaged")
    # values every reader uses unchecked: a wrong type here would surface as a traceback far away
    kinds = {"model": dict, "model_config": dict, "vocab_size": int, "step": int, "best_val_loss": int | float,
             "tokenizer_sha256": str | None}
    for key, kind in kinds.items():
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise GothicError(f"{path}: {key} is a {type(ckpt[key]).__name__}, not a {_kind_name(kind)}; "
                              "the file is damaged or not from gothic")
    if not MIN_VOCAB_SIZE <= ckpt["vocab_size"] <= MAX_VOCAB_SIZE or ckpt["step"] < 0:
        raise GothicError(f"{path}: impossible vocab_size {ckpt['vocab_size']} or step {ckpt['step']}; "
                          "the file is damaged")
    return ckpt


def _kind_name(kind) -> str:
    return {dict: "mapping", int: "whole number"}.get(kind, "number" if kind == int | float else "string")


def model_config_from(path: Path, ckpt: dict) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with; unknown or invalid fields are a GothicError."""
    raw = ckpt["model_config"]
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    if not isinstance(raw, dict) or raw.keys() - fields:
        raise GothicError(f"{path}: model_config has fields this gothic does not know; upgrade gothic")
    saved_digest = ckpt.get("model_config_sha256")  # absent in files written before it was added
    if saved_digest is not None and saved_digest != config_digest(raw):
        raise GothicError(f"{path}: model_config was changed after the checkpoint was written (its checksum "
                          "differs); the file is damaged or edited: use the original")
    try:
        cfg = ModelConfig(**raw)
    except TypeError as e:
        raise GothicError(f"{path}: invalid model_config ({e})") from None
    problems = cfg.check()
    if problems:
        raise GothicError(f"{path}: invalid model_config: {'; '.join(problems)}")
    return cfg


def check_weights_fit(path: Path, cfg: ModelConfig, vocab_size: int, state: dict) -> None:
    """Refuse weights whose shapes are not the ones cfg and vocab_size imply, before allocating a model.

    A tampered vocab_size or block_size (say 1e9) would otherwise first try to allocate hundreds of
    gigabytes. The expected shapes come from a model built on the meta device (no memory); the
    token embedding and the layer count are compared first, because a huge value would make even
    that model slow to build.
    """
    def refuse(detail: str) -> GothicError:
        return GothicError(f"{path}: weights do not fit the model config it records ({detail}); the file is damaged")

    def shape(key: str) -> tuple | None:
        value = state.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    if shape("wte.weight") != (vocab_size, cfg.n_embd):
        raise refuse(f"vocab_size {vocab_size} and n_embd {cfg.n_embd}, token embedding {shape('wte.weight')}")
    layers = {key.split(".")[1] for key in state if key.startswith("blocks.")}
    if len(layers) != cfg.n_layer:
        raise refuse(f"n_layer {cfg.n_layer}, {len(layers)} layers of weights")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(cfg, vocab_size).state_dict().items()}
    for key in sorted(expected.keys() | state.keys()):
        if shape(key) != expected.get(key):
            raise refuse(f"{key}: {shape(key)} in the file, {expected.get(key)} expected")


def load_weights(model: GPT, state: dict, path: Path) -> None:
    """Copy a state_dict into model; a shape or key mismatch is a GothicError naming the file."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        detail = _first_line(e) if len(str(e)) < 300 else str(e).splitlines()[0][:300]
        raise GothicError(f"{path}: weights do not fit the model config it records ({detail})") from None


# what only resuming needs; load_model leaves it out of the metadata it returns
TRAINING_STATE_KEYS = ("optimizer", "scaler", "sampler", "rng")


def release_state(state: dict) -> dict:
    """A checkpoint's state without what only resuming needs: weights, configs, tokenizer, metrics."""
    return {k: v for k, v in state.items() if k not in TRAINING_STATE_KEYS}


def checkpoint_tokenizer(path: str | Path, info: dict) -> Tokenizer | None:
    """The tokenizer a checkpoint carries (format 2), checked against its recorded hash; None
    for a format-1 checkpoint, which carries none."""
    text = info.get("tokenizer")
    if text is None:
        return None
    if not isinstance(text, str) or hashlib.sha256(text.encode("utf-8")).hexdigest() != info["tokenizer_sha256"]:
        raise GothicError(f"{path}: the tokenizer inside does not match its recorded sha256; the file is damaged")
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises plain Exceptions
        raise GothicError(f"{path}: the tokenizer inside cannot be read ({_first_line(e)})") from None
    if tok.token_to_id(EOT) is None:
        raise GothicError(f"{path}: the tokenizer inside has no {EOT} token; the file is damaged")
    return tok


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build the GPT a checkpoint describes and load its weights.

    Args:
        path: a checkpoint written by training (best.pt, latest.pt, final.pt).
        device: a torch device or a `device` param value ('auto', 'cpu', 'cuda', ...).
    Returns:
        (model in eval mode on device, the checkpoint's metadata: step, best_val_loss,
        model_config, vocab_size, tokenizer_sha256, ... without the weights and training state,
        so a long-lived caller such as the chat does not keep a second copy of the model).
    """
    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    ckpt = load_checkpoint(path)
    cfg = model_config_from(path, ckpt)
    check_weights_fit(path, cfg, ckpt["vocab_size"], ckpt["model"])
    model = GPT(cfg, ckpt["vocab_size"])
    load_weights(model, ckpt.pop("model"), path)
    return model.to(device).eval(), {k: v for k, v in ckpt.items() if k not in TRAINING_STATE_KEYS}


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
    """Step and val loss of a checkpoint, read without loading its tensors.

    mmap=True maps the file instead of reading it, so listing large checkpoints (weights plus
    optimizer state) stays instant; only the few plain values are touched.
    """
    stat = path.stat()
    base = CheckpointSummary(path, stat.st_size, stat.st_mtime)
    try:
        ckpt = _quiet_load(path, map_location="cpu", mmap=True)
    except LOAD_ERRORS:
        return dataclasses.replace(base, error="unreadable")
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        return dataclasses.replace(base, error="not a gothic checkpoint")
    return dataclasses.replace(base, step=_as_int(ckpt.get("step")), val_loss=checkpoint_val_loss(ckpt))


def checkpoint_val_loss(info: dict) -> float | None:
    """The val loss of these weights: the last evaluation's, else the best one recorded."""
    for key in ("val_loss", "best_val_loss"):
        value = info.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def _as_int(value) -> int | None:
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None
