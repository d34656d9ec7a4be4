"""The GPT: a decoder-only transformer sized by `ModelConfig`. No I/O, no printing.

The default is the seed architecture (GPT-2 style): learned absolute positions, pre-LayerNorm
blocks, causal attention through `scaled_dot_product_attention` (flash kernels where available),
a GELU MLP of 4x width, and a token embedding shared with the output head. `ModelConfig` switches
swap in modern parts: rotary positions, RMSNorm, QK-norm, ReLU^2 or SwiGLU MLPs, an untied head.

Incremental decoding goes through a `KVCache` from `GPT.new_cache`:

    cache = model.new_cache(batch_size=1)
    logits, _ = model(prompt_ids, cache=cache)       # prefill
    logits, _ = model(next_id[:, None], cache=cache)  # one token per step
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gothic.config import ModelConfig

# GPT-2's initialisation: N(0, 0.02) everywhere, and residual output projections scaled down by
# sqrt(2 * n_layer) so the residual stream's variance does not grow with depth (GPT-2 paper, 2.3).
INIT_STD = 0.02
ROPE_BASE = 10000.0


class KVCache:
    """Per-layer key/value buffers for incremental decoding.

    Holds room for `max_len` positions; `length` counts the positions already filled. The model
    writes the keys/values of new tokens at `length ..` and advances `length` after a forward pass.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (batch_size, n_head, max_len, head_size)  # (B, nh, T_max, hs)
        # uninitialised: attention reads only positions < length, which are always written first
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0

    def reset(self) -> None:
        """Forget every cached position (the buffers are reused, not cleared)."""
        self.length = 0


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in fp32 whatever the input; in fp32 it is exactly nn.RMSNorm.

    Under bf16 autocast the input is bf16 and the weight fp32, a mix torch's fused kernel refuses
    (it warns and takes a slower path); with the weights cast to bf16 for generation, nn.RMSNorm's
    default eps would become bf16's (0.0078 instead of 1.2e-7) and shift every normalised value."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).type_as(x)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=cfg.bias)


def rotary_tables(head_size: int, max_len: int) -> tuple[Tensor, Tensor]:
    """cos and sin of RoFormer's rotation angles (Su et al. 2021), each (max_len, head_size / 2)."""
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of each head's channels; x is (B, nh, T, hs)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # each (B, nh, T, hs/2); rotate in fp32 for accuracy
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_size = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual = True  # marks the projection for the scaled-down init
        # QK-norm (Dehghani et al. 2023) keeps attention logits bounded, which steadies training
        self.q_norm = RMSNorm(self.head_size) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_size) if cfg.qk_norm else None
        self.dropout = cfg.dropout if cfg.attention_dropout else 0.0
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None, cache: KVCache | None,
                layer: int) -> Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        start = cache.length if cache is not None else 0
        if cache is not None:
            k, v = self._extend_cache(cache, layer, k, v, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            # one new token after cached ones sees every key: no mask to build (the decode hot path)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # is_causal aligns the mask top-left, which is wrong once cached keys precede the
            # queries: query i (position start + i) may see keys 0 .. start + i.
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.proj(y))

    @staticmethod
    def _extend_cache(cache: KVCache, layer: int, k: Tensor, v: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Store the new keys/values at cache.length; return all keys/values so far, (B, nh, end, hs)."""
        start, end = cache.length, cache.length + k.size(2)
        cache.keys[layer][:, :, start:end] = k
        cache.values[layer][:, :, start:end] = v
        # the cache may hold fp32 while autocast computes in bf16: attention wants one dtype
        return cache.keys[layer][:, :, :end].to(dtype), cache.values[layer][:, :, :end].to(dtype)


def swiglu_hidden(n_embd: int) -> int:
    """8/3 x n_embd keeps SwiGLU's three matrices at the parameter count of a 4x MLP's two
    (Shazeer 2020); rounded up to a multiple of 64 for matmul-friendly shapes."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = swiglu_hidden(cfg.n_embd) if cfg.mlp == "swiglu" else 4 * cfg.n_embd
        # SwiGLU's gate and value projections are one matrix, split after the matmul
        fan_out = 2 * hidden if cfg.mlp == "swiglu" else hidden
        self.fc = nn.Linear(cfg.n_embd, fan_out, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.proj.residual = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":  # ReLU squared (So et al. 2021, Primer)
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg, cfg.n_embd), CausalSelfAttention(cfg)
        self.norm2, self.mlp = make_norm(cfg, cfg.n_embd), MLP(cfg)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None, cache: KVCache | None,
                layer: int) -> Tensor:
        x = x + self.attn(self.norm1(x), rotary, cache, layer)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Decoder-only transformer language model.

    Args:
        cfg: the architecture (`model.*` in params.yaml).
        vocab_size: the tokenizer's vocabulary size.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_embedding == "learned" else None
        if cfg.pos_embedding == "rope":
            cos, sin = rotary_tables(cfg.n_embd // cfg.n_head, cfg.block_size)
            # not persistent: derived from the config, so checkpoints hold only learned weights
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        if cfg.tie_embeddings:
            # weight tying (Press & Wolf 2017): one matrix embeds tokens and scores them
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = INIT_STD / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "residual", False) else INIT_STD
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def num_params(self, non_embedding: bool = True) -> int:
        """Count parameters (a tied matrix once).

        With non_embedding, lookup tables that do no computation are left out: the position
        embedding (as nanoGPT reports) and, when the head is untied, the input token embedding.
        A tied token embedding stays in, because it is also the output head's weight.
        """
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.wpe is not None:
                total -= self.wpe.weight.numel()
            if not self.cfg.tie_embeddings:
                total -= self.wte.weight.numel()
        return total

    def cast_for_inference(self, dtype: torch.dtype) -> GPT:
        """Hold the weights in dtype once (generation then computes in it with no per-step autocast
        casts); the rotary tables stay fp32, since apply_rotary rotates in fp32."""
        rope = {name: buf for name, buf in self.named_buffers() if name.startswith("rope_")}
        self.to(dtype)
        for name, buf in rope.items():
            setattr(self, name, buf)
        return self

    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        """An empty KV cache for up to block_size positions, on the model's device and dtype by default."""
        weight = self.wte.weight
        return KVCache(self.cfg.n_layer, batch_size, self.cfg.n_head, self.cfg.block_size,
                       self.cfg.n_embd // self.cfg.n_head, device=device or weight.device,
                       dtype=dtype or weight.dtype)

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> tuple[Tensor, Tensor | None]:
        """Logits for every position, and the mean cross-entropy against targets when given.

        Args:
            idx: (B, T) int64 token ids; with a cache, the tokens at positions
                cache.length .. cache.length + T - 1.
            targets: (B, T) int64 next-token ids, or None.
            cache: KV cache for incremental decoding; advanced by T.
            last_only: score only the last position (a prefill needs just the next token's
                logits; the head is the largest matmul per position). Not with targets.
        Returns:
            logits (B, T, vocab_size) as float32 ((B, 1, vocab_size) with last_only), and the
            loss (or None).
        """
        B, T = idx.shape
        start = self._check_positions(B, T, cache)
        if last_only and targets is not None:
            raise ValueError("last_only scores one position; the loss needs them all")
        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe.weight[start:start + T]  # (T, C) rows of the table, no index tensor
        else:
            rotary = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])  # (T, hs/2) each
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rotary, cache, layer)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(self.norm_f(x)).float()  # (B, T, vocab); fp32 for a stable softmax
        if cache is not None:
            cache.length += T
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    def _check_positions(self, B: int, T: int, cache: KVCache | None) -> int:
        """The first position of idx; raises ValueError past the context window."""
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"positions {start}..{start + T - 1} exceed block_size={self.cfg.block_size}")
        if cache is not None and B != cache.batch_size:
            raise ValueError(f"batch of {B} sequences for a cache of {cache.batch_size}")
        return start
