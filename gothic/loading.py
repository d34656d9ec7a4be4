"""A trained model from a checkpoint file: the GPT it describes, its weights, and its tokenizer.

`load_model` is what most readers need:

    model, info = load_model("models/best.pt", device="auto")  # info.step, info.best_val_loss, ...

Everything a file claims is checked before it costs memory: the model config against its
checksum and the config's own bounds, the weights' shapes against a model built on the meta
device, and the tokenizer inside against its recorded sha256. Fine-tuning (gothic.base) and
resuming (gothic.train) use the same checks and `load_weights`; `resolve_tokenizer` is the one
lookup of a checkpoint's tokenizer (inside it, given, or the legacy file beside it).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.overrides import TorchFunctionMode

from gothic.checkpoint import (
    CheckpointInfo,
    TokenizerIdentity,
    check_same_tokenizer,
    config_digest,
    read_checkpoint,
)
from gothic.config import ModelConfig, build_section
from gothic.errors import GothicError, first_line
from gothic.model import GPT
from gothic.runtime import resolve_device
from gothic.tokenizer import EOT, load_tokenizer, tokenizer_sha256


def model_config_from(path: Path, info: CheckpointInfo) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with; unknown or invalid fields are a GothicError."""
    raw = info.model_config
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    if raw.keys() - fields:
        raise GothicError(f"{path}: model_config has fields this gothic does not know; upgrade gothic")
    saved_digest = info.model_config_sha256  # None in files written before it was added
    if saved_digest is not None and saved_digest != config_digest(raw):
        raise GothicError(f"{path}: model_config was changed after the checkpoint was written (its checksum "
                          "differs); the file is damaged or edited: use the original")
    cfg, problems = build_section(ModelConfig, raw, "model")  # a string where a number belongs, too
    if problems:
        raise GothicError(f"{path}: invalid model_config: {'; '.join(problems)}")
    return cfg


class _ShapesOnly(TorchFunctionMode):
    """Skips nn.init.normal_: a meta tensor has no values to draw, and drawing them anyway imports
    torch._dynamo (1.2 s on first use), which every process that loads a checkpoint would wait for."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.init.normal_:
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


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
    with torch.device("meta"), _ShapesOnly():
        expected = {k: tuple(v.shape) for k, v in GPT(cfg, vocab_size).state_dict().items()}
    for key in sorted(expected.keys() | state.keys()):
        if shape(key) != expected.get(key):
            raise refuse(f"{key}: {shape(key)} in the file, {expected.get(key)} expected")


def first_nonfinite(state: dict) -> str | None:
    """The name of the first weight holding NaN or an infinity (None: all finite)."""
    return next((key for key, value in state.items()
                 if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()),
                None)


def load_weights(model: GPT, state: dict, path: Path) -> None:
    """Copy a state_dict into model; a shape or key mismatch, or a weight that is not finite (a diverged
    run, a damaged file: it would give NaN losses and tracebacks downstream) is a GothicError naming the file."""
    if (key := first_nonfinite(state)) is not None:
        raise GothicError(f"{path}: the weights hold NaN or infinite values ({key}); the run that wrote it diverged "
                          "or the file is damaged: use an earlier checkpoint or train again")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        detail = first_line(e)[:300]
        raise GothicError(f"{path}: weights do not fit the model config it records ({detail})") from None


def checkpoint_tokenizer(path: str | Path, info: CheckpointInfo) -> Tokenizer | None:
    """The tokenizer a checkpoint carries (format 2), checked against its recorded hash; None
    for a format-1 checkpoint, which carries none."""
    if info.tokenizer is None:
        return None
    if hashlib.sha256(info.tokenizer.encode("utf-8")).hexdigest() != info.tokenizer_sha256:
        raise GothicError(f"{path}: the tokenizer inside does not match its recorded sha256; the file is damaged")
    try:
        tok = Tokenizer.from_str(info.tokenizer)
    except Exception as e:  # tokenizers raises plain Exceptions
        raise GothicError(f"{path}: the tokenizer inside cannot be read ({first_line(e)})") from None
    if tok.token_to_id(EOT) is None:
        raise GothicError(f"{path}: the tokenizer inside has no {EOT} token; the file is damaged")
    return tok


def resolve_tokenizer(path: str | Path, info: CheckpointInfo, tokenizer_path: str | Path | None = None,
                      fallback: Path | None = None) -> tuple[Tokenizer, str]:
    """The tokenizer to use with a checkpoint, and its tokenizer.json text: tokenizer_path when given
    (checked to be the one the model was trained with), else the one inside (format 2), else
    fallback (a format-1 checkpoint carried none). No tokenizer at all is a GothicError."""
    if tokenizer_path is None:
        tokenizer = checkpoint_tokenizer(path, info)
        if tokenizer is not None:
            return tokenizer, info.tokenizer
        if fallback is None or not fallback.is_file():
            raise GothicError(f"{path} is an older checkpoint that carries no tokenizer: pass --tokenizer PATH "
                              "(the tokenizer.json it was trained with)")
        tokenizer_path = fallback
    tokenizer = load_tokenizer(tokenizer_path)
    check_same_tokenizer(info.tokenizer_identity, path,
                         TokenizerIdentity(tokenizer.get_vocab_size(), tokenizer_sha256(tokenizer_path)),
                         str(tokenizer_path))
    return tokenizer, Path(tokenizer_path).read_bytes().decode("utf-8")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, CheckpointInfo]:
    """Build the GPT a checkpoint describes and load its weights.

    Args:
        path: a checkpoint written by training (best.pt, latest.pt, final.pt).
        device: a torch device or a `device` param value ('auto', 'cpu', 'cuda', ...).
    Returns:
        (model in eval mode on device, the checkpoint's plain values: step, best_val_loss,
        model_config, vocab_size, tokenizer, ...; no weights or training state, so a long-lived
        caller such as the chat does not keep a second copy of the model).
    """
    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    ckpt, info = read_checkpoint(path)
    cfg = model_config_from(path, info)
    check_weights_fit(path, cfg, info.vocab_size, ckpt["model"])
    model = GPT(cfg, info.vocab_size)
    load_weights(model, ckpt.pop("model"), path)
    return model.to(device).eval(), info
