"""A fine-tune's base: the model `train.init_from` names, read from a gothic checkpoint or an export folder.

    base = load_base("data/base/best.pt")  # or an export folder: data/base/gothic-gpt
    base.model_config, base.state, base.tokenizer_json, base.weights_sha256

A checkpoint (best.pt, final.pt or latest.pt, format 1 or 2) gives its weights, model config and the
tokenizer it carries; an export folder (gothic-export, the `gothic-gpt` DVC artifact) gives its
tensors mapped back to gothic's names (gothic.hf_mapping.from_hf), the model config its config.json
records and its tokenizer.json. Either way the run trains the base's shape with the base's tokenizer,
frozen: the `tokenize` stage writes that tokenizer byte for byte instead of learning one, so the new
books are encoded with the ids the weights know. The weights' sha256 (the same figure whatever file
they came in) joins the run key, so a fine-tune resumes exactly and another base starts a fresh run.

The pipeline reads a base only from data/base/, a folder DVC tracks as a dependency of the stages that
read it: a base elsewhere would change without DVC noticing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from gothic.checkpoint import TokenizerIdentity, read_checkpoint, weights_sha256
from gothic.config import DROPOUT_KEYS, ModelConfig, build_section, to_dict
from gothic.errors import GothicError
from gothic.files import atomic_path, check_inside
from gothic.loading import check_weights_fit, checkpoint_tokenizer, first_nonfinite, model_config_from
from gothic.tokenizer import EOT

PIPELINE_BASE_DIR = Path("data/base")
"""Where the pipeline's stages take a base from (a dependency of tokenize and train in dvc.yaml)."""
EXPORT_NEEDS = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class Base:
    path: Path
    model_config: ModelConfig
    vocab_size: int
    state: dict
    """The weights, under gothic's names, on the CPU."""
    tokenizer_json: str
    """The text of the tokenizer.json the base was trained with, byte for byte."""
    weights_sha256: str

    @property
    def tokenizer_identity(self) -> TokenizerIdentity:
        """What "the same tokenizer" compares (gothic.checkpoint.check_same_tokenizer)."""
        return TokenizerIdentity(self.vocab_size, hashlib.sha256(self.tokenizer_json.encode("utf-8")).hexdigest())


def load_base(path: str | Path) -> Base:
    """The base at path: a gothic checkpoint file or an export folder; anything else is a GothicError."""
    path = Path(path)
    if not path.exists():
        raise GothicError(f"train.init_from: {path} does not exist; give a gothic checkpoint (models/best.pt) or "
                          "an export folder (export/)")
    return _from_export(path) if path.is_dir() else _from_checkpoint(path)


def _from_checkpoint(path: Path) -> Base:
    ckpt, info = read_checkpoint(path)  # refuses what is not a gothic checkpoint, a truncated file, a flipped bit
    if info.tokenizer is None:
        raise GothicError(f"{path}: this checkpoint (format 1) carries no tokenizer, and a fine-tune must use the "
                          "base's own: export it (gothic-export --checkpoint ...) and start from the export folder, "
                          "which holds its tokenizer.json")
    checkpoint_tokenizer(path, info)  # its recorded sha256, an <|endoftext|>
    cfg = model_config_from(path, info)
    check_weights_fit(path, cfg, info.vocab_size, ckpt["model"])
    return Base(path, cfg, info.vocab_size, ckpt["model"], info.tokenizer, weights_sha256(ckpt["model"]))


def _from_export(folder: Path) -> Base:
    missing = [name for name in EXPORT_NEEDS if not (folder / name).is_file()]
    if missing:
        what = ("is not a gothic checkpoint or export folder" if len(missing) == len(EXPORT_NEEDS)
                else f"is an export without {', '.join(missing)}")
        raise GothicError(f"train.init_from: {folder} {what}; give models/best.pt or a complete export folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tokenizer_json = (folder / "tokenizer.json").read_bytes().decode("utf-8")
    except (OSError, ValueError) as e:
        raise GothicError(f"{folder}: cannot read the export ({e}); export it again") from None
    raw = config.get("gothic_model_config") if isinstance(config, dict) else None
    if not isinstance(raw, dict):
        raise GothicError(f"{folder}/config.json records no gothic_model_config (an export from an older gothic, or "
                          "not gothic's): export the checkpoint again with this gothic, or start from the checkpoint")
    cfg, problems = build_section(ModelConfig, raw, "model")
    vocab_size = config.get("vocab_size")
    if problems or not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
        raise GothicError(f"{folder}/config.json: invalid model config ({'; '.join(problems) or 'vocab_size'}); "
                          "export it again")
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise GothicError("reading an export folder needs safetensors: pip install 'gothic[export]'") from None
    try:
        tensors = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise GothicError(f"{folder}/model.safetensors cannot be read ({e}); the export is damaged") from None
    try:
        tokenizer = Tokenizer.from_str(tokenizer_json)
    except Exception:  # tokenizers raises plain Exceptions
        tokenizer = None
    if tokenizer is None or tokenizer.token_to_id(EOT) is None or tokenizer.get_vocab_size() != vocab_size:
        raise GothicError(f"{folder}/tokenizer.json is not the gothic tokenizer of this model (config.json's "
                          f"{vocab_size}-token vocabulary, with {EOT}); the export is damaged: export it again")
    from gothic.hf_mapping import from_hf

    state = from_hf(tensors, cfg, vocab_size, folder)
    if (key := first_nonfinite(state)) is not None:
        raise GothicError(f"{folder}: the weights hold NaN or infinite values ({key}); use another base")
    return Base(folder, cfg, vocab_size, state, tokenizer_json, weights_sha256(state))


def write_base_tokenizer(base: Base, path: Path) -> Tokenizer:
    """Write the base's tokenizer.json byte for byte (the ids its weights know) and return it."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(base.tokenizer_json.encode("utf-8"))
    return Tokenizer.from_str(base.tokenizer_json)


def shape_from_base(params_cfg: ModelConfig, base: Base) -> tuple[ModelConfig, str | None]:
    """The model a fine-tune trains: the base's shape, with params' dropout settings (they shape nothing), and a
    note naming every model.* value of params that the base overrides (None when they agree)."""
    wanted, saved = to_dict(params_cfg), to_dict(base.model_config)
    diffs = [f"{k} {wanted[k]!r} -> {v!r}" for k, v in saved.items() if k not in DROPOUT_KEYS and wanted[k] != v]
    cfg = ModelConfig(**{**saved, **{k: wanted[k] for k in DROPOUT_KEYS}})
    note = (f"the model's shape comes from the base {base.path}: model.{'; model.'.join(diffs)} (the model "
            "params are ignored where they differ)") if diffs else None
    return cfg, note


def check_pipeline_base(init_from: str) -> None:
    """The stages' rule: a base lives in data/base/, the folder dvc.yaml tracks for them."""
    if init_from:
        check_inside(init_from, PIPELINE_BASE_DIR, "train.init_from", "the pipeline's base")
