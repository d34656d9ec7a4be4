"""The GPT: shapes, parameter counts, the KV cache against full forwards, and the modern switches."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from gothic import optim
from gothic.config import ModelConfig, TrainConfig
from gothic.model import GPT, swiglu_hidden
from gothic.optim import orthogonalize

from conftest import tiny_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 97

VARIANTS = {
    "seed": {},
    "rope": {"pos_embedding": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"mlp": "relu2"},
    "swiglu": {"mlp": "swiglu"},
    "untied": {"tie_embeddings": False},
    "no_bias": {"bias": False},
    "modern": {"pos_embedding": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "swiglu", "bias": False,
               "tie_embeddings": False},
}


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_model_config(**overrides), VOCAB).eval()


def test_forward_shapes_and_initial_loss_near_uniform():
    model = make_model()
    idx, targets = torch.randint(0, VOCAB, (2, 3, 20))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 20, VOCAB) and logits.dtype == torch.float32
    # small init => nearly uniform predictions => loss close to ln(vocab)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1
    assert model(idx)[1] is None


def seed_param_count(cfg: ModelConfig, vocab: int) -> int:
    """Closed form for the seed architecture: embeddings, 12 d^2 + 13 d per block, final LayerNorm."""
    d = cfg.n_embd
    return vocab * d + cfg.block_size * d + cfg.n_layer * (12 * d * d + 13 * d) + 2 * d


def test_seed_size_param_counts():
    """The seed config (8 x 512, vocab 4096, block 512) has 27.58M parameters, 27.32M without the
    position table (nanoGPT's count); built on the meta device, so no memory is spent."""
    cfg = ModelConfig()
    with torch.device("meta"):
        model = GPT(cfg, 4096)
    assert model.num_params(non_embedding=False) == seed_param_count(cfg, 4096) == 27_579_392
    assert model.num_params() == 27_579_392 - 512 * 512


def test_untied_head_counts_its_own_matrix():
    tied, untied = make_model(), make_model(tie_embeddings=False)
    extra = VOCAB * tied.cfg.n_embd
    assert untied.num_params(non_embedding=False) == tied.num_params(non_embedding=False) + extra
    # non-embedding drops the input table (and positions) but keeps the head
    assert untied.num_params() == tied.num_params()


def test_swiglu_width_keeps_mlp_parameters_close_to_4x():
    assert swiglu_hidden(512) == 1408  # 8/3 * 512 = 1365.3, rounded up to a multiple of 64
    assert abs(3 * swiglu_hidden(768) - 8 * 768) / (8 * 768) < 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_greedy_decoding_matches_full_forward(variant):
    model = make_model(**VARIANTS[variant])
    prompt = torch.randint(0, VOCAB, (2, 5))
    cache = model.new_cache(batch_size=2)
    with torch.no_grad():
        logits, _ = model(prompt, cache=cache)
        seq = prompt
        for _ in range(model.cfg.block_size - prompt.size(1)):
            full, _ = model(seq)
            torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
            next_id = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            seq = torch.cat([seq, next_id], dim=1)
            logits, _ = model(next_id, cache=cache)
    assert cache.length == model.cfg.block_size


def test_cache_takes_several_tokens_after_a_prefix_and_resets():
    """A chunk of new tokens after cached ones is causal within itself (the is_causal pitfall)."""
    model = make_model(pos_embedding="rope")
    idx = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch_size=1)
        first, _ = model(idx[:, :4], cache=cache)
        rest, _ = model(idx[:, 4:], cache=cache)
        torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)
        cache.reset()
        assert cache.length == 0
        again, _ = model(idx[:, :4], cache=cache)
    torch.testing.assert_close(again, first)


def test_positions_past_block_size_are_refused():
    model = make_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, model.cfg.block_size + 1, dtype=torch.long))
    cache = model.new_cache(batch_size=1)
    model(torch.zeros(1, model.cfg.block_size, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_cache_under_bf16_autocast_stays_close_to_full_forward():
    model = make_model()
    idx = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = model(idx)
        cache = model.new_cache(batch_size=1)
        model(idx[:, :9], cache=cache)
        last, _ = model(idx[:, 9:], cache=cache)
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=0.05, rtol=0.05)


def test_every_norm_computes_in_fp32_under_autocast_and_after_a_bf16_cast():
    """The block norms and the QK-norms alike: no fused-kernel dtype refusal under autocast, and
    eps stays fp32's once the weights are bf16 (nn.RMSNorm's default would become bf16's 0.0078)."""
    model = make_model(**VARIANTS["modern"])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 1 + 2 * 2 + 2 * 2  # final + (block norms, q/k norms) x 2 layers
    idx = torch.randint(0, VOCAB, (1, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(idx)
    model.cast_for_inference(torch.bfloat16)
    for norm in norms:
        x = (torch.randn(3, *norm.normalized_shape) * 1e-2).bfloat16()  # small, where eps would matter
        expected = F.rms_norm(x.float(), norm.normalized_shape, norm.weight.float(),
                              eps=torch.finfo(torch.float32).eps)
        torch.testing.assert_close(norm(x).float(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_learns_a_fixed_batch(variant):
    model = make_model(**VARIANTS[variant]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, VOCAB, (4, 16))
    losses = []
    for _ in range(5):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_tied_head_shares_the_embedding_and_state_dict_round_trips():
    model = make_model()
    assert model.lm_head.weight is model.wte.weight
    copy = make_model(seed=1)
    copy.load_state_dict(model.state_dict())
    assert copy.lm_head.weight is copy.wte.weight
    idx = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(copy(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_dropout_only_in_training_mode():
    model = make_model(dropout=0.5)
    idx = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


@pytest.mark.parametrize("attention_dropout", [True, False])
def test_attention_dropout_false_keeps_dropout_out_of_the_attention_kernel(attention_dropout, monkeypatch):
    """The fused kernel sees dropout_p 0 (it stays on its fast path); the residual branches still drop."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = make_model(dropout=0.5, attention_dropout=attention_dropout).train()
    idx = torch.randint(0, VOCAB, (2, 8))
    assert not torch.equal(model(idx)[0], model(idx)[0])
    assert set(seen) == ({0.5} if attention_dropout else {0.0})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 64), (96, 24)])
def test_newton_schulz_pushes_singular_values_towards_one(shape, dtype):
    """Singular values spread over 30x come out in Muon's band of roughly [0.7, 1.2], in fp32 and in
    bf16 (what bf16 hardware computes it in), returned in the gradient's dtype."""
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))  # (rows, k) orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))  # (cols, k)
    g = 5.0 * u @ torch.diag(torch.logspace(-1.5, 0, k)) @ v.T
    out = orthogonalize(g, dtype=dtype)
    singular = torch.linalg.svdvals(out)
    assert out.shape == shape and out.dtype == g.dtype
    assert singular.min() > 0.6 and singular.max() < 1.25


@pytest.mark.parametrize("device, dtype, bf16_units, expected", [
    ("cuda", "float32", False, torch.bfloat16),
    ("cpu", "bfloat16", True, torch.bfloat16),
    ("cpu", "bfloat16", False, torch.float32),  # emulated bf16 is slower than fp32
    ("cpu", "float32", True, torch.float32),  # a float32 run stays float32 throughout
])
def test_newton_schulz_runs_in_bf16_where_the_hardware_computes_it(monkeypatch, device, dtype, bf16_units, expected):
    monkeypatch.setattr(optim, "cpu_has_bf16_units", lambda: bf16_units)
    cfg = TrainConfig(optimizer="muon", dtype=dtype)
    assert optim.newton_schulz_dtype(cfg, torch.device(device)) == expected
    model = make_model(**VARIANTS["modern"])
    if device == "cpu":
        muon = optim.build_optimizers(model, cfg, torch.device(device))[1]
        assert muon.ns_dtype == expected


@pytest.mark.parametrize("variant", ["seed", "modern"])
def test_last_only_scores_just_the_final_position(variant):
    model = make_model(**VARIANTS[variant])
    idx = torch.randint(0, VOCAB, (2, 11))
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1])
