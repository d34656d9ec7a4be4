"""Export a checkpoint as a folder that Hugging Face transformers loads and/or a GGUF for llama.cpp, with a model card.

    export_checkpoint("models/best.pt", "export", metrics_dir="metrics", samples="samples/samples.md")

writes model.safetensors, config.json, generation_config.json, tokenizer.json (+ tokenizer_config.json)
and README.md; with formats=("gguf",) (or both) model-<type>.gguf and an Ollama Modelfile instead
(gothic.export_gguf). The weights go under the names of the transformers architecture that computes
the same model (gothic.hf_mapping); a model with no such architecture keeps gothic's own names, and
`export_checkpoint` says so.

safetensors is the `export` extra; transformers (same extra) is needed only to verify the export.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gothic.config import EXPORT_FORMATS, SamplingSettings
from gothic.errors import GothicError
from gothic.export_gguf import EXTRA_HINT, gguf_architecture, gguf_filename
from gothic.files import write_error, write_json, write_text
from gothic.hf_mapping import to_hf
from gothic.loading import load_model, resolve_tokenizer
from gothic.model import GPT
from gothic.tokenizer import EOT

TOLERANCE = 1e-4
"""The largest logit difference from gothic that counts as the same model (float32 round-off is ~1e-6)."""


# --- the folder -------------------------------------------------------------------------------

# what an export folder may hold; anything else means the folder is not ours to replace
EXPORT_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "README.md", "loss.png", "held_out_bits_per_byte.png", "Modelfile"}


@dataclass
class ExportResult:
    out_dir: Path
    architecture: str | None
    reason: str
    max_logit_diff: float | None  # None: transformers is not installed (or not written), so it was not checked
    gguf: GGUFInfo | None = None
    transformers: bool = True  # whether the safetensors folder was written
    gguf_skipped: str = ""  # why no GGUF was written where one was wanted only if llama.cpp computes the model

    def summary(self) -> str:
        """The one line that says what was written and whether transformers (and llama.cpp) compute the same
        model."""
        gguf = self.gguf
        as_gguf = f"{gguf.filename} ({gguf.size}) as llama.cpp's {gguf.architecture}, with a Modelfile" if gguf else ""
        if not self.transformers:
            return f"wrote {self.out_dir}/{as_gguf}"
        if self.architecture is None:
            line = (f"wrote {self.out_dir}/ with gothic's own tensor names: no transformers architecture computes "
                    f"this model exactly ({self.reason})")
        else:
            checked = ("not checked: transformers is not installed" if self.max_logit_diff is None
                       else f"logits match gothic's to {self.max_logit_diff:.1e}")
            line = f"wrote {self.out_dir}/ as transformers' {self.architecture} ({checked})"
        skipped = f"; no GGUF: {self.gguf_skipped}" if self.gguf_skipped else ""
        return line + (f"; and {as_gguf}" if gguf else "") + skipped


@dataclass
class GGUFInfo:
    """The GGUF file of an export, for the one-line summary and the model card."""

    filename: str
    architecture: str  # llama.cpp's name for it
    weight_type: str
    size: str = ""


def cannot_write(out_dir: Path, e: OSError) -> GothicError:
    """A full disk or a read-only folder is the machine's refusal (exit 1, gothic.files.write_error);
    anything else met while writing the folder is still one line."""
    return write_error(out_dir, e) or GothicError(f"cannot write {out_dir}: {e.strerror or e}")


def swap_in(new: Path, out_dir: Path) -> None:
    """Put the folder `new` at out_dir. An earlier export is moved aside first and deleted only once the
    new one is in place, so a folder that cannot be replaced (a mount point: EBUSY) loses nothing."""
    if not out_dir.is_dir():
        new.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old.tmp")  # .dvcignore's pattern: DVC never tracks it
    out_dir.rename(old)
    try:
        new.rename(out_dir)
    except OSError:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, metrics_dir: str | Path | None = None,
                      samples: str | Path | None = None, tokenizer_path: str | Path | None = None,
                      sampling: SamplingSettings | None = None, sources: list[str] | None = None,
                      verify: bool = True, formats: tuple[str, ...] = ("transformers",),
                      gguf_type: str = "f16", gguf_if_possible: bool = False) -> ExportResult:
    """Write the export folder for a checkpoint; with verify (and transformers installed), load it
    back with transformers and measure the largest logit difference from gothic's.

    Args:
        checkpoint: a gothic checkpoint (format 2 carries its tokenizer).
        out_dir: the folder to (re)write: absent, empty, or an earlier export (never anything else).
        metrics_dir: where metrics/corpus.json, eval.json and train.json are, for the model card.
        samples: samples/samples.md, quoted in the model card.
        tokenizer_path: the tokenizer.json for a format-1 checkpoint that carries none.
        sampling: the sampling defaults of generation_config.json and the Modelfile (the sample stage's;
            None: params.yaml's defaults).
        sources: prepare.sources, for the licence line of the model card.
        formats: "transformers" (the safetensors folder) and/or "gguf" (one .gguf file for llama.cpp
            and an Ollama Modelfile).
        gguf_type: the GGUF's weight type, one of config.GGUF_TYPES.
        gguf_if_possible: with formats holding transformers too, a model llama.cpp cannot compute
            gets no GGUF and a note in the summary instead of a refusal (the export stage: a model
            any switches train must not fail the pipeline at its last stage).
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise GothicError(f"unknown export format {unknown[0] if unknown else '(none)'!r}; choose from "
                          f"{', '.join(EXPORT_FORMATS)}")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_replaceable(out_dir)
    if "transformers" in formats:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise GothicError(f"gothic-export needs safetensors: {EXTRA_HINT}") from None
    model, info = load_model(checkpoint, device="cpu")
    tokenizer, tokenizer_json = resolve_tokenizer(checkpoint, info, tokenizer_path)
    eot = tokenizer.token_to_id(EOT)
    hf = to_hf(model, eot)
    gguf, gguf_skipped = None, ""
    if "gguf" in formats:  # refused before anything is written
        arch, why = gguf_architecture(model.cfg)
        if arch is None and not (gguf_if_possible and "transformers" in formats):
            raise GothicError(f"cannot export GGUF: {why}")
        if arch is None:
            gguf_skipped = why
        else:
            gguf = GGUFInfo(gguf_filename(gguf_type), arch, gguf_type)
    # built in a temporary folder beside out_dir, then swapped in: never a half-written export
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as e:
        raise cannot_write(out_dir, e) from None
    diff = None
    try:
        sampling = sampling or SamplingSettings()
        if "transformers" in formats:
            metadata = {"format": "pt", "gothic_checkpoint": checkpoint.name, "gothic_step": str(info.step)}
            save_file(hf.tensors, str(tmp / "model.safetensors"), metadata=metadata)
            write_json(tmp / "config.json", hf.config)
            write_json(tmp / "generation_config.json", generation_config(eot, sampling, model.cfg.block_size))
            write_text(tmp / "tokenizer.json", tokenizer_json)
            write_json(tmp / "tokenizer_config.json", {
                "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "pad_token": EOT,
                "model_max_length": model.cfg.block_size, "clean_up_tokenization_spaces": False})
            diff = max_logit_diff(model, tmp) if verify and hf.architecture and transformers_available() else None
        if gguf is not None:
            from gothic.export_gguf import file_size_text, modelfile, write_gguf

            write_gguf(model, tokenizer_json, tmp / gguf.filename, gguf_type, name=out_dir.name)
            gguf.size = file_size_text(tmp / gguf.filename)
            write_text(tmp / "Modelfile", modelfile(gguf.filename, model.cfg.block_size, sampling))
        from gothic.model_card import model_card

        write_text(tmp / "README.md", model_card(model, info, hf.architecture if "transformers" in formats else None,
                                                 hf.reason, diff, Path(metrics_dir) if metrics_dir else None,
                                                 Path(samples) if samples else None, out_dir.name, sources,
                                                 figures_dir=tmp, gguf=gguf, transformers="transformers" in formats))
        tmp.chmod(0o755)  # mkdtemp makes 0700, and safetensors writes 0600: shared files should be readable
        for path in tmp.iterdir():
            path.chmod(0o644)
        check_replaceable(out_dir)  # again: the folder may have changed while the export was written
        swap_in(tmp, out_dir)
    except OSError as e:  # a full disk, a read-only folder: nothing half-written is left
        raise cannot_write(out_dir, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out_dir, hf.architecture, hf.reason, diff, gguf, "transformers" in formats, gguf_skipped)


def check_replaceable(out_dir: Path) -> None:
    """An export replaces out_dir only when it is absent, empty or an earlier gothic export: a
    GothicError for a file, or a folder holding anything an export does not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise GothicError(f"{out_dir} exists and is not a folder; remove it or choose another --out-dir")
    from gothic.model_card import CARD_TITLE

    names = sorted(p.name for p in out_dir.iterdir())
    foreign = [n for n in names if n not in EXPORT_FILES and not n.endswith(".gguf")]
    card = out_dir / "README.md"
    ours = not names or (not foreign and card.is_file() and any(  # the title follows the card's front matter
        line.startswith(CARD_TITLE) for line in card.read_text(encoding="utf-8", errors="replace").splitlines()))
    if not ours:
        what = f"it holds {foreign[0]}" if foreign else "its README.md is not a gothic model card"
        raise GothicError(f"{out_dir} exists and is not a gothic export ({what}); choose another --out-dir "
                          f"or remove it yourself")


def generation_config(eot: int, sampling: SamplingSettings, block_size: int) -> dict:
    """Sampling defaults as gothic-generate's (or the sample stage's) for transformers' generate(),
    and a length that stays inside the context window: transformers does not slide the window as
    gothic does, and pipeline("text-generation") would otherwise ask for 256 new tokens past it."""
    return {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "do_sample": not sampling.greedy,
            "temperature": sampling.temperature or 1.0, "top_k": sampling.top_k, "top_p": sampling.top_p,
            "repetition_penalty": sampling.repetition_penalty, "max_length": block_size}


# --- checking against transformers ------------------------------------------------------------

def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def load_hf(folder: str | Path):
    """The exported folder as transformers loads it, in eval mode on the CPU. A tensor it expected
    and did not find (or found and did not expect) is a GothicError: it would be left random."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model, report = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                         output_loading_info=True)
    problems = {k: v for k, v in report.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise GothicError(f"{folder}: transformers did not load every tensor: {problems}")
    return model.eval()


@torch.no_grad()
def max_logit_diff(model: GPT, folder: str | Path, n_prompts: int = 4, seed: int = 0) -> float:
    """The largest |logit| difference between gothic and transformers on random prompts of random
    lengths up to the context window."""
    hf = load_hf(folder)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_prompts):
        length = int(torch.randint(1, model.cfg.block_size + 1, (1,), generator=gen))
        ids = torch.randint(0, model.vocab_size, (1, length), generator=gen)
        ours, _ = model(ids)
        theirs = hf(ids).logits.float()
        worst = max(worst, (ours - theirs).abs().max().item())
    return worst if math.isfinite(worst) else math.inf
