"""A gothic model as one GGUF file for llama.cpp (and so Ollama, LM Studio, text-generation-webui), and
the Ollama Modelfile beside it. Written through the ggml project's own `gguf` package (the `export`
extra): its GGUFWriter lays out the binary format and its quants module packs bf16 and q8_0.

    write_gguf(model, tokenizer_json, Path("export/model-f16.gguf"), "f16")

Each gothic architecture is one llama.cpp graph with the same arithmetic, given the right tensor
names (from gguf's own tables) and metadata:

| gothic switches                                   | llama.cpp architecture  | how exact                    |
| ------------------------------------------------- | ----------------------- | ---------------------------- |
| learned positions, LayerNorm, GELU (seed)         | gpt2                    | GELU as tanh, via f16 table  |
| rope, RMSNorm, SwiGLU                             | llama                   | exact (q, k rows permuted)   |
| rope, RMSNorm, QK-norm, SwiGLU, no biases         | qwen3                   | exact                        |
| rope, RMSNorm, ReLU^2, no biases                  | arcee                   | exact (q, k rows permuted)   |
| rope, RMSNorm, QK-norm, ReLU^2, no biases (demo)  | apertus                 | exact: xIELU with a_p=1,     |
|                                                   |                         | a_n=0, beta=0 is ReLU^2      |

llama.cpp's llama and arcee graphs rotate adjacent pairs of channels, gothic (like transformers)
the first half of a head against the second: permuting the rows of q and k, as llama.cpp's own
converter does, makes the two the same. llama.cpp's GPT-2 computes GPT-2's tanh GELU through a
float16 lookup table where gothic computes the exact (erf) one: not bit-for-bit, a difference of
about 1e-3 in an activation (see `TOLERANCES`). Nothing in llama.cpp computes GELU without a gate
after rotary positions, ReLU^2 with learned positions, or biases in Arcee's MLP: those are refused
in one line that names the nearest switches that export.

The tokenizer is declared as what it is: GPT-2's byte-level BPE (tokenizer.ggml.model "gpt2") with
GPT-2's pre-tokenizer regex (pre "gpt-2", the HF ByteLevel pre-tokenizer gothic trains with), our
merges, and `<|endoftext|>` as the end-of-text token; no BOS is added, as gothic adds none.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from gothic.config import GGUF_TYPES, ModelConfig, SamplingSettings
from gothic.errors import GothicError
from gothic.model import GPT, ROPE_BASE
from gothic.tokenizer import EOT

EXTRA_HINT = "install the export extra: pip install 'gothic[export]' (make setup does)"

# The largest |logit| difference from gothic's float32 logits that counts as the same model, per weight
# type, for llama.cpp with a float32 KV cache on prompts up to the context. Measured on 2-layer models
# of width 64 with spread-out random weights (logits of standard deviation ~1.2; bench/README.md):
# f32 5e-6 to 8e-6 (float32 round-off in another summation order); f16 0.006-0.014 and bf16 0.03-0.08
# (each weight, and in llama.cpp each matmul's activations, rounded to 11 and 8 significant bits);
# q8_0 0.16-0.31 (8 bits per weight, one scale per 32). The tolerances leave about 2x headroom, and a
# wrong mapping (logits one token off) is 10x past each.
TOLERANCES = {"f32": 1e-4, "f16": 0.03, "bf16": 0.15, "q8_0": 0.5}
# added for llama.cpp's GPT-2, whose GELU is the tanh approximation read from a float16 table
# (measured 2.6e-3 with f32 weights)
GPT2_TOLERANCE = 0.01


def gguf_tolerance(arch: str, weight_type: str) -> float:
    return TOLERANCES[weight_type] + (GPT2_TOLERANCE if arch == "gpt2" else 0.0)


def gguf_architecture(cfg: ModelConfig) -> tuple[str | None, str]:
    """The llama.cpp architecture that computes this model, or (None, why not and what exports)."""
    rotary, ungated = "model.pos_embedding: rope, model.norm: rmsnorm", "model.mlp: relu2 and model.bias: false"
    if cfg.pos_embedding == "learned":
        if cfg.norm == "layernorm" and not cfg.qk_norm and cfg.mlp == "gelu":
            return "gpt2", ""
        return None, ("llama.cpp has learned positions only in GPT-2 (LayerNorm, no QK-norm, a GELU MLP): keep "
                      f"model.norm: layernorm, model.qk_norm: false, model.mlp: gelu, or train with {rotary}")
    if cfg.norm != "rmsnorm":
        return None, f"llama.cpp has no architecture with rotary positions and LayerNorm; train with {rotary}"
    if cfg.mlp == "swiglu":
        if not cfg.qk_norm:
            return "llama", ""
        return ("qwen3", "") if not cfg.bias else \
            (None, "llama.cpp's qwen3 (SwiGLU with QK-norm) has no biases; train with model.bias: false")
    if cfg.mlp == "gelu":
        return None, (f"no llama.cpp architecture has an ungated GELU MLP after rotary positions; train with "
                      f"{ungated} (arcee, or apertus with QK-norm), or model.mlp: swiglu (llama, qwen3)")
    if cfg.bias:
        return None, "llama.cpp's ReLU^2 architectures (arcee, apertus) have no biases; train with model.bias: false"
    return ("apertus" if cfg.qk_norm else "arcee"), ""


def gguf_filename(weight_type: str) -> str:
    return f"model-{weight_type}.gguf"


def write_gguf(model: GPT, tokenizer_json: str, path: Path, weight_type: str = "f16", name: str = "gothic") -> None:
    """Write the model and its tokenizer as one GGUF file at path (the caller makes it atomic).

    Raises GothicError for an architecture llama.cpp does not compute or an unknown weight type."""
    try:
        import gguf
    except ImportError:
        raise GothicError(f"GGUF export needs the gguf package: {EXTRA_HINT}") from None
    if weight_type not in GGUF_TYPES:
        raise GothicError(f"unknown GGUF weight type {weight_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    cfg = model.cfg
    arch, reason = gguf_architecture(cfg)
    if arch is None:
        raise GothicError(f"cannot write GGUF: {reason}")
    writer = gguf.GGUFWriter(str(path), arch)
    try:
        _add_metadata(writer, gguf, model, arch, weight_type, name)
        _add_tokenizer(writer, gguf, tokenizer_json)
        for tensor_name, tensor in _tensors(model, arch, gguf).items():
            _add_tensor(writer, gguf, tensor_name, tensor, weight_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _add_metadata(writer, gguf, model: GPT, arch: str, weight_type: str, name: str) -> None:
    cfg = model.cfg
    head_size = cfg.n_embd // cfg.n_head
    writer.add_name(name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(model.blocks[0].mlp.proj.in_features)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_head)
    writer.add_vocab_size(model.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[weight_type]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if arch == "gpt2":
        writer.add_layer_norm_eps(model.blocks[0].norm1.eps)
        return
    # torch's RMSNorm with eps=None uses float32's machine epsilon, in every norm (QK-norms too)
    writer.add_layer_norm_rms_eps(torch.finfo(torch.float32).eps)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_rope_dimension_count(head_size)
    writer.add_key_length(head_size)
    writer.add_value_length(head_size)
    if arch == "apertus":
        # xIELU(x) = a_p x^2 + beta x for x > 0, else a_n (expm1(min(x, eps)) - x) + beta x, where ggml
        # takes a_p = softplus(alpha_p) and a_n = beta + softplus(alpha_n) from the stored parameters:
        # alpha_p = ln(e - 1) gives a_p = 1 (to float32 rounding), alpha_n = -100 gives a_n = 0 exactly
        # (1 + exp(-100) is 1 in float32), and beta = 0: ReLU^2.
        n = cfg.n_layer
        writer.add_xielu_alpha_p([math.log(math.e - 1)] * n)
        writer.add_xielu_alpha_n([-100.0] * n)
        writer.add_xielu_beta([0.0] * n)
        writer.add_xielu_eps([-1e-6] * n)


def _add_tokenizer(writer, gguf, tokenizer_json: str) -> None:
    spec = json.loads(tokenizer_json)
    bpe, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if bpe.get("type") != "BPE" or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") \
            or not pre.get("use_regex", True) or spec.get("normalizer"):
        raise GothicError("cannot write GGUF: the tokenizer is not gothic's byte-level BPE (GPT-2 pre-tokenizer, "
                          "no normalizer); retrain it with gothic-tokenize")
    vocab = {**bpe["vocab"], **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise GothicError("cannot write GGUF: the tokenizer's ids are not 0..n-1")
    # tokenizers >= 0.20 saves a merge as [left, right], older releases as "left right"
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    eot = vocab[EOT]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_pad_token_id(eot)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def _rope_pairs(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q or k reordered so that llama.cpp's adjacent-pair rotation is gothic's half rotation:
    in each head, channel i of the first half and channel i of the second become rows 2i and 2i+1."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _tensors(model: GPT, arch: str, gguf) -> dict[str, torch.Tensor]:
    """gothic's weights under llama.cpp's names, in nn.Linear's (out, in) layout (the writer stores
    the dimensions reversed, as ggml expects)."""
    T = gguf.MODEL_TENSOR

    def name(kind, bid=None, suffix="weight"):
        return gguf.TENSOR_NAMES[kind].format(bid=bid) + "." + suffix

    cfg = model.cfg
    # the output head is always written: apertus requires it, and for a tied head it is the embedding
    t = {name(T.TOKEN_EMBD): model.wte.weight, name(T.OUTPUT): model.lm_head.weight,
         name(T.OUTPUT_NORM): model.norm_f.weight}
    if arch == "gpt2":
        t[name(T.POS_EMBD)] = model.wpe.weight
        t[name(T.OUTPUT_NORM, suffix="bias")] = _or_zeros(model.norm_f.bias, model.norm_f.weight)
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        t[name(T.ATTN_NORM, i)], t[name(T.FFN_NORM, i)] = block.norm1.weight, block.norm2.weight
        linears = {T.ATTN_OUT: attn.proj, T.FFN_DOWN: mlp.proj}
        if arch == "gpt2":  # llama.cpp's GPT-2 takes every bias (gothic's absent ones are zeros)
            linears |= {T.ATTN_QKV: attn.qkv, T.FFN_UP: mlp.fc}
            for kind, norm in ((T.ATTN_NORM, block.norm1), (T.FFN_NORM, block.norm2)):
                t[name(kind, i, "bias")] = _or_zeros(norm.bias, norm.weight)
            for kind, linear in linears.items():
                t[name(kind, i)] = linear.weight
                t[name(kind, i, "bias")] = _or_zeros(linear.bias, torch.empty(linear.out_features))
            continue
        permute = arch in ("llama", "arcee")
        q_k_v = zip((T.ATTN_Q, T.ATTN_K, T.ATTN_V), attn.qkv.weight.chunk(3),
                    attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None,) * 3, strict=True)
        for kind, w, b in q_k_v:
            rotated = permute and kind != T.ATTN_V
            t[name(kind, i)] = _rope_pairs(w, cfg.n_head) if rotated else w
            if b is not None:
                t[name(kind, i, "bias")] = _rope_pairs(b, cfg.n_head) if rotated else b
        if attn.q_norm is not None:
            t[name(T.ATTN_Q_NORM, i)], t[name(T.ATTN_K_NORM, i)] = attn.q_norm.weight, attn.k_norm.weight
        if cfg.mlp == "swiglu":  # gothic's fc is (gate, value) stacked
            gate_up = zip((T.FFN_GATE, T.FFN_UP), mlp.fc.weight.chunk(2),
                          mlp.fc.bias.chunk(2) if mlp.fc.bias is not None else (None, None), strict=True)
            for kind, w, b in gate_up:
                t[name(kind, i)] = w
                if b is not None:
                    t[name(kind, i, "bias")] = b
        else:
            linears[T.FFN_UP] = mlp.fc
        for kind, linear in linears.items():
            t[name(kind, i)] = linear.weight
            if linear.bias is not None:
                t[name(kind, i, "bias")] = linear.bias
    return t


def _or_zeros(bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return bias if bias is not None else torch.zeros(like.shape)


def _add_tensor(writer, gguf, tensor_name: str, tensor: torch.Tensor, weight_type: str) -> None:
    """Matrices in the chosen type; vectors (norms, biases) stay float32, as llama.cpp's converter
    keeps them. A matrix whose rows do not split into q8_0's blocks of 32 is written as f16."""
    data = tensor.detach().float().contiguous().numpy()
    Q = gguf.GGMLQuantizationType
    qtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[weight_type] if data.ndim == 2 else Q.F32
    if qtype == Q.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        qtype = Q.F16
    if qtype in (Q.F32, Q.F16):
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype))
    else:
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def modelfile(gguf_name: str, block_size: int, sampling: SamplingSettings) -> str:
    """An Ollama Modelfile: plain continuation of the prompt, the sampling defaults (the sample stage's),
    and generation that ends at `<|endoftext|>` or at the context window."""
    lines = [f"FROM ./{gguf_name}",
             "# a base model: the prompt is continued as it is, with no chat template",
             'TEMPLATE """{{ .Prompt }}"""',
             f"PARAMETER num_ctx {block_size}",
             f"PARAMETER num_predict {min(sampling.max_new_tokens, block_size)}",
             f"PARAMETER temperature {sampling.temperature}",
             f"PARAMETER top_k {sampling.top_k}",
             f"PARAMETER top_p {sampling.top_p}",
             f"PARAMETER repeat_penalty {sampling.repetition_penalty}",
             f'PARAMETER stop "{EOT}"']
    return "\n".join(lines) + "\n"


def file_size_text(path: Path) -> str:
    size = os.path.getsize(path)
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"

