"""gothic's weights under the names and shapes of a transformers architecture, and back (`to_hf`, `from_hf`).

Every gothic block is a pre-norm transformer block, so each choice of switches is one of a few
transformers architectures with the same arithmetic, given the right weight names:

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

The export (gothic.export) writes what to_hf gives; a fine-tune reads an export back through
from_hf (gothic.base). Kept apart from the export so that training, which may read an export as its
base, does not depend on the model card, the GGUF writer or the plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from gothic.config import ModelConfig, to_dict
from gothic.errors import GothicError
from gothic.model import GPT, ROPE_BASE


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
    # gothic_model_config: what reading the folder back needs (a fine-tune's base, gothic.base); transformers
    # keeps an unknown key as a plain attribute
    common = {"vocab_size": model.vocab_size, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
              "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32", "use_cache": True,
              "gothic_model_config": to_dict(cfg)}
    if arch is None:
        state = {k: v for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
        return HFModel(None, {"model_type": "gothic", **common}, state, reason)
    build = _gpt2 if arch == "GPT2LMHeadModel" else _llama_family
    config, tensors = build(model, arch)
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = model.lm_head.weight
    config = {"architectures": [arch], **config, **common}
    return HFModel(arch, config, {k: v.detach().contiguous() for k, v in tensors.items()})


@torch.no_grad()
def from_hf(tensors: dict[str, Tensor], cfg: ModelConfig, vocab_size: int, source: Path) -> dict[str, Tensor]:
    """gothic's state_dict from an export's tensors: the inverse of to_hf.

    to_hf only renames, transposes, slices and pads with zeros, so running it on a probe model whose
    every weight entry holds its own position (1, 2, ...; float64 holds them exactly) says, for each
    exported entry, which gothic entry it came from. The mapping keeps one owner (to_hf) and the
    inverse cannot drift from it. A missing tensor, a shape that differs or an entry no tensor fills
    is a GothicError naming the folder.
    """
    probe = GPT(cfg, vocab_size).double()
    params = dict(probe.named_parameters())  # a tied head appears once, as wte.weight
    sizes = [p.numel() for p in params.values()]
    positions = torch.arange(1, sum(sizes) + 1, dtype=torch.float64)
    for p, chunk in zip(params.values(), positions.split(sizes), strict=True):
        p.copy_(chunk.view_as(p))
    flat = torch.zeros(sum(sizes) + 1)
    filled = torch.zeros(sum(sizes) + 1, dtype=torch.bool)
    for name, where in to_hf(probe, 0).tensors.items():
        if name not in tensors or tuple(tensors[name].shape) != tuple(where.shape):
            found = "missing" if name not in tensors else f"of shape {tuple(tensors[name].shape)}"
            raise GothicError(f"{source}: the tensor {name} is {found}, not what its config.json implies "
                              f"{tuple(where.shape)}; the export is damaged: export it again")
        index = where.reshape(-1).long()
        kept = index > 0  # 0: a zero bias to_hf wrote where gothic has none
        flat[index[kept]] = tensors[name].reshape(-1)[kept].float()
        filled[index[kept]] = True
    if not filled[1:].all():
        raise GothicError(f"{source}: the export does not hold every weight of the model its config.json describes; "
                          "export it again")
    model = GPT(cfg, vocab_size)
    for p, chunk in zip(model.parameters(), flat[1:].split(sizes), strict=True):
        p.copy_(chunk.view_as(p))
    return model.state_dict()


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
