"""Export a checkpoint as a folder that Hugging Face transformers loads and/or a GGUF for llama.cpp, with a model card.

    export_checkpoint("models/best.pt", "export", metrics_dir="metrics", samples="samples/samples.md")

writes model.safetensors, config.json, generation_config.json, tokenizer.json (+ tokenizer_config.json)
and README.md; with formats=("gguf",) (or both) model-<type>.gguf and an Ollama Modelfile instead
(gothic.export_gguf). Every gothic block is a pre-norm transformer block, so each choice of switches is one
of a few transformers architectures with the same arithmetic, given the right weight names:

| gothic switches                                        | transformers architecture |
| ------------------------------------------------------ | ------------------------- |
| learned positions, LayerNorm, GELU or ReLU^2 (seed)    | GPT2LMHeadModel           |
| rope, RMSNorm, SwiGLU                                  | LlamaForCausalLM          |
| rope, RMSNorm, QK-norm, SwiGLU, no biases              | Qwen3ForCausalLM          |
| rope, RMSNorm, GELU or ReLU^2                          | ArceeForCausalLM          |
| rope, RMSNorm, QK-norm, GELU or ReLU^2, no biases      | ApertusForCausalLM        |

each with a tied or untied head. gothic's rotary layout (rotate the first half of a head against
the second) is transformers' `rotate_half`, so q and k need no permutation. Biases gothic leaves
out are written as zeros where the target always has them (GPT-2). Any other combination (learned
positions with RMSNorm, rope with LayerNorm, ...) has no exact counterpart: the folder then holds
gothic's own tensor names and config, and `export_checkpoint` says so.

safetensors is the `export` extra; transformers (same extra) is needed only to verify the export.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from gothic.checkpoint import load_model, resolve_tokenizer
from gothic.config import EXPORT_FORMATS, ModelConfig, SamplingSettings, to_dict
from gothic.errors import GothicError
from gothic.export_gguf import EXTRA_HINT, gguf_architecture, gguf_filename
from gothic.files import write_json, write_text
from gothic.model import GPT, ROPE_BASE
from gothic.tokenizer import EOT

TOLERANCE = 1e-4
"""The largest logit difference from gothic that counts as the same model (float32 round-off is ~1e-6)."""


@dataclass
class HFModel:
    """What an export writes: an architecture's config.json fields and its named tensors."""

    architecture: str | None  # None: no transformers architecture computes this model exactly
    config: dict
    tensors: dict[str, Tensor] = field(default_factory=dict)
    reason: str = ""  # why architecture is None


def choose_architecture(cfg: ModelConfig) -> tuple[str | None, str]:
    """The transformers class that computes exactly what this gothic model does, or (None, why not)."""
    gated = cfg.mlp == "swiglu"
    if cfg.pos_embedding == "learned":
        if cfg.norm == "layernorm" and not cfg.qk_norm and not gated:
            return "GPT2LMHeadModel", ""
        return None, ("learned positions exist in transformers only as GPT-2, which has LayerNorm, no QK-norm "
                      "and an ungated MLP")
    if cfg.norm != "rmsnorm":
        return None, "no transformers architecture combines rotary positions with gothic's LayerNorm blocks"
    if gated:
        if not cfg.qk_norm:
            return "LlamaForCausalLM", ""
        return ("Qwen3ForCausalLM", "") if not cfg.bias else \
            (None, "Qwen3 (SwiGLU with QK-norm) has no MLP biases; train with model.bias: false")
    if not cfg.qk_norm:
        return "ArceeForCausalLM", ""
    return ("ApertusForCausalLM", "") if not cfg.bias else \
        (None, "Apertus (an ungated MLP with QK-norm) has no MLP biases; train with model.bias: false")


def to_hf(model: GPT, eot: int) -> HFModel:
    """gothic's weights under the names (and in the shapes) of the chosen architecture."""
    cfg = model.cfg
    arch, reason = choose_architecture(cfg)
    common = {"vocab_size": model.vocab_size, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
              "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32", "use_cache": True}
    if arch is None:
        state = {k: v for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
        return HFModel(None, {"model_type": "gothic", **common, "gothic_model_config": to_dict(cfg)}, state, reason)
    build = _gpt2 if arch == "GPT2LMHeadModel" else _llama_family
    config, tensors = build(model, arch)
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = model.lm_head.weight
    config = {"architectures": [arch], **config, **common}
    return HFModel(arch, config, {k: v.detach().contiguous() for k, v in tensors.items()})


def _gpt2(model: GPT, arch: str) -> tuple[dict, dict[str, Tensor]]:
    cfg = model.cfg
    config = {"model_type": "gpt2", "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
              "n_head": cfg.n_head, "n_inner": 4 * cfg.n_embd,
              # "gelu" is the exact (erf) GELU that F.gelu computes; GPT-2's own default is the tanh one
              "activation_function": "gelu" if cfg.mlp == "gelu" else "relu2",
              "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    t: dict[str, Tensor] = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight}
    # GPT-2's Conv1D stores weights as (in, out): the transpose of nn.Linear's
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        for hf_name, module in (("ln_1", block.norm1), ("ln_2", block.norm2)):
            t |= _norm_tensors(p + hf_name, module)
        for hf_name, linear in (("attn.c_attn", block.attn.qkv), ("attn.c_proj", block.attn.proj),
                                ("mlp.c_fc", block.mlp.fc), ("mlp.c_proj", block.mlp.proj)):
            t[p + hf_name + ".weight"] = linear.weight.t()
            t[p + hf_name + ".bias"] = _bias(linear)
    t |= _norm_tensors("transformer.ln_f", model.norm_f)
    return config, t


def _norm_tensors(prefix: str, norm: torch.nn.LayerNorm) -> dict[str, Tensor]:
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return {prefix + ".weight": norm.weight, prefix + ".bias": bias}


def _bias(linear: torch.nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else torch.zeros(linear.out_features)


# per architecture: model_type, the two norms' names, and whether it takes bias flags
_LLAMA_FAMILY = {
    "LlamaForCausalLM": ("llama", "input_layernorm", "post_attention_layernorm", True),
    "Qwen3ForCausalLM": ("qwen3", "input_layernorm", "post_attention_layernorm", False),
    "ArceeForCausalLM": ("arcee", "input_layernorm", "post_attention_layernorm", True),
    "ApertusForCausalLM": ("apertus", "attention_layernorm", "feedforward_layernorm", False),
}


def _llama_family(model: GPT, arch: str) -> tuple[dict, dict[str, Tensor]]:
    cfg = model.cfg
    model_type, norm1, norm2, takes_bias = _LLAMA_FAMILY[arch]
    head_size = cfg.n_embd // cfg.n_head
    fc_out = model.blocks[0].mlp.fc.out_features
    config = {"model_type": model_type, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
              "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": head_size,
              "intermediate_size": fc_out // 2 if cfg.mlp == "swiglu" else fc_out,
              "hidden_act": "silu" if cfg.mlp == "swiglu" else cfg.mlp,
              "max_position_embeddings": cfg.block_size,
              # torch's RMSNorm with eps=None uses the dtype's machine epsilon
              "rms_norm_eps": torch.finfo(torch.float32).eps,
              # rope_parameters is transformers 5's spelling, rope_theta 4.x's
              "rope_theta": ROPE_BASE, "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE},
              "attention_dropout": 0.0}
    if takes_bias:
        config |= {"attention_bias": cfg.bias, "mlp_bias": cfg.bias}
    t: dict[str, Tensor] = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.norm_f.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        t[p + norm1 + ".weight"] = block.norm1.weight
        t[p + norm2 + ".weight"] = block.norm2.weight
        attn, mlp = block.attn, block.mlp
        # gothic's fused qkv is q, k, v stacked along the output rows, heads contiguous in each
        for name, w in zip(("q_proj", "k_proj", "v_proj"), attn.qkv.weight.chunk(3), strict=True):
            t[p + f"self_attn.{name}.weight"] = w
        if attn.qkv.bias is not None:
            for name, b in zip(("q_proj", "k_proj", "v_proj"), attn.qkv.bias.chunk(3), strict=True):
                t[p + f"self_attn.{name}.bias"] = b
        _linear(t, p + "self_attn.o_proj", attn.proj)
        if attn.q_norm is not None:
            t[p + "self_attn.q_norm.weight"] = attn.q_norm.weight
            t[p + "self_attn.k_norm.weight"] = attn.k_norm.weight
        if cfg.mlp == "swiglu":  # gothic splits fc's output into (gate, value) halves
            gate, up = mlp.fc.weight.chunk(2)
            t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = gate, up
            if mlp.fc.bias is not None:
                t[p + "mlp.gate_proj.bias"], t[p + "mlp.up_proj.bias"] = mlp.fc.bias.chunk(2)
        else:
            _linear(t, p + "mlp.up_proj", mlp.fc)
        _linear(t, p + "mlp.down_proj", mlp.proj)
    return config, t


def _linear(t: dict[str, Tensor], prefix: str, linear: torch.nn.Linear) -> None:
    t[prefix + ".weight"] = linear.weight
    if linear.bias is not None:
        t[prefix + ".bias"] = linear.bias


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
        raise GothicError(f"cannot write {out_dir}: {e.strerror or e}") from None
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
        raise GothicError(f"cannot write {out_dir}: {e.strerror or e}") from None
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
