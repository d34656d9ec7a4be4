"""gothic-export: each architecture switch loads in transformers and computes gothic's logits and greedy text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from gothic.config import SamplingSettings
from gothic.export import TOLERANCE, export_checkpoint, generation_config, load_hf, max_logit_diff
from gothic.generation import generate_tokens
from gothic.hf_mapping import choose_architecture

from conftest import save_tiny_checkpoint, tiny_gpt

pytest.importorskip("transformers", reason="the export extra (transformers) is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one entry per transformers architecture, with the switches that pick it (plus bias/tying variants)
CASES = {
    "seed (GPT-2)": ({}, "GPT2LMHeadModel"),
    "GPT-2, ReLU^2, untied, no biases": ({"mlp": "relu2", "tie_embeddings": False, "bias": False}, "GPT2LMHeadModel"),
    "rope + RMSNorm + SwiGLU, biases": ({"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
                                        "LlamaForCausalLM"),
    "rope + RMSNorm + SwiGLU, untied, no biases": ({"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu",
                                                    "tie_embeddings": False, "bias": False}, "LlamaForCausalLM"),
    "+ QK-norm": ({"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False,
                   "tie_embeddings": False}, "Qwen3ForCausalLM"),
    "rope + RMSNorm + ReLU^2, biases": ({"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "relu2"},
                                        "ArceeForCausalLM"),
    "rope + RMSNorm + GELU, untied": ({"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "gelu", "bias": False,
                                      "tie_embeddings": False}, "ArceeForCausalLM"),
    "demo profile (QK-norm + ReLU^2)": ({"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True,
                                        "bias": False, "tie_embeddings": False}, "ApertusForCausalLM"),
}


def random_model(vocab_size: int, **switches):
    """A tiny GPT with spread-out weights and norm gains, so a wrong mapping cannot hide in near-zero logits."""
    model = tiny_gpt(vocab_size, block_size=64, weight_std=0.3, **switches)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model


def save_with_tokenizer(path: Path, model, tokenizer_path: Path) -> Path:
    return save_tiny_checkpoint(path, model, tokenizer_path, step=3, best_val_loss=5.0, carry_tokenizer=True)


def gothic_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    settings = SamplingSettings(max_new_tokens=n, temperature=0.0)
    return [int(t[0]) for t in generate_tokens(model, prompt, settings, [torch.Generator()])]


@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_gothic_in_transformers(name, tmp_path, tiny_tokenizer_path):
    switches, architecture = CASES[name]
    model = random_model(300, **switches)
    ckpt = save_with_tokenizer(tmp_path / "best.pt", model, tiny_tokenizer_path)
    result = export_checkpoint(ckpt, tmp_path / "export")
    assert result.architecture == architecture
    assert result.max_logit_diff is not None and result.max_logit_diff <= TOLERANCE

    hf = load_hf(tmp_path / "export")  # raises if any tensor is missing or unexpected
    assert type(hf).__name__ == architecture
    assert max_logit_diff(model, tmp_path / "export", n_prompts=6, seed=1) <= TOLERANCE
    prompt = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=50,
                             eos_token_id=None, pad_token_id=0)[0, 8:].tolist()
    ours = gothic_greedy(model, prompt, 50)
    assert len(ours) == 50 and ours == theirs
    assert len(set(ours)) > 1, "peaked random weights should not repeat one token"


def test_a_wrong_mapping_would_be_caught(tmp_path, tiny_tokenizer_path):
    """The negative control: one swapped weight shows up as a logit difference far above the tolerance."""
    model = random_model(300)
    export_checkpoint(save_with_tokenizer(tmp_path / "best.pt", model, tiny_tokenizer_path), tmp_path / "export")
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.mul_(-1)
    assert max_logit_diff(model, tmp_path / "export") > 100 * TOLERANCE


def test_folder_loads_with_the_transformers_tokenizer_and_generation_config(tmp_path, tiny_tokenizer_path,
                                                                            tiny_tokenizer):
    from transformers import AutoTokenizer, GenerationConfig

    model = random_model(300)
    export_checkpoint(save_with_tokenizer(tmp_path / "best.pt", model, tiny_tokenizer_path), tmp_path / "out",
                      sampling=SamplingSettings(temperature=0.7, top_k=20, top_p=0.95))
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= names
    assert not any(n.startswith(".") for n in (p.name for p in tmp_path.iterdir())), "temporary folder left behind"
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = "The castle stood — Émile paused."
    assert tok(text)["input_ids"] == tiny_tokenizer.encode(text).ids
    assert tok.eos_token == "<|endoftext|>"
    gen = GenerationConfig.from_pretrained(str(tmp_path / "out"))
    assert (gen.temperature, gen.top_k, gen.top_p, gen.do_sample) == (0.7, 20, 0.95, True)
    assert gen.eos_token_id == tiny_tokenizer.token_to_id("<|endoftext|>")


def test_export_sampling_defaults_are_the_seeds_balanced_preset():
    """export_checkpoint without `sampling` (gothic-export) writes SamplingSettings' defaults, the ones
    params.yaml's sample section ships with (the seed's "balanced" preset: temperature 0.8, top-k 40).
    params.yaml itself is not read: its values are the user's to change (test_config checks its shape)."""
    defaults = SamplingSettings()
    assert (defaults.max_new_tokens, defaults.temperature, defaults.top_k, defaults.top_p,
            defaults.repetition_penalty) == (200, 0.8, 40, 0.9, 1.0)
    config = generation_config(0, defaults, block_size=64)
    assert config["max_length"] == 64
    assert (config["temperature"], config["top_k"], config["top_p"], config["do_sample"]) == (0.8, 40, 0.9, True)


def test_model_card_quotes_data_evaluation_and_samples(tmp_path, tiny_tokenizer_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "corpus.json").write_text(json.dumps({"train": {"documents": 11, "bytes": 123456},
                                                     "val": {"documents": 1, "bytes": 7890}}))
    (metrics / "eval.json").write_text(json.dumps({"val_loss": 1.5, "perplexity": 4.48, "bits_per_byte": 0.987654,
                                                   "tokens": 2000, "bytes": 7890}))
    samples = tmp_path / "samples.md"
    samples.write_text("# Samples\n\n## The night was\n\nThe night was dark and full of dread.\n")
    model = random_model(300)
    export_checkpoint(save_with_tokenizer(tmp_path / "best.pt", model, tiny_tokenizer_path), tmp_path / "out",
                      metrics_dir=metrics, samples=samples, sources=["builtin"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "\n#### The night was\n" in card and "\n# Samples" not in card
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (tmp_path / "out").iterdir()), "others must read the files"
    for expected in ("11 documents, 123,456 bytes", "1 documents, 7,890 bytes", "0.987654", "bits per byte",
                     "The night was dark and full of dread.", "public domain", "GPT2LMHeadModel",
                     "AutoModelForCausalLM.from_pretrained(\"out\")", "gothic-export --format gguf",
                     f"{model.num_params(non_embedding=False):,}"):
        assert expected in card, expected


def test_a_model_without_a_transformers_counterpart_is_still_written(tmp_path, tiny_tokenizer_path, capsys):
    from gothic.cli_export import export_main

    switches = {"pos_embedding": "learned", "norm": "rmsnorm"}
    assert choose_architecture(tiny_gpt(300, **switches).cfg)[0] is None
    ckpt = save_with_tokenizer(tmp_path / "best.pt", random_model(300, **switches), tiny_tokenizer_path)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"),
                     "--metrics-dir", str(tmp_path / "none"), "--samples", str(tmp_path / "none.md")])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "no transformers architecture computes this model exactly" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gothic" and config["gothic_model_config"]["norm"] == "rmsnorm"
    from safetensors.torch import load_file

    assert "blocks.0.attn.qkv.weight" in load_file(str(tmp_path / "out" / "model.safetensors"))


def test_export_without_safetensors_is_one_clear_line(tmp_path, tiny_tokenizer_path, monkeypatch, capsys):
    from gothic.cli_export import export_main

    ckpt = save_with_tokenizer(tmp_path / "best.pt", random_model(300), tiny_tokenizer_path)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # what an absent package looks like to import
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'gothic[export]'" in err
    assert not (tmp_path / "out").exists()


def test_older_checkpoint_exports_with_its_tokenizer_given(tmp_path, tiny_tokenizer_path):
    from gothic.errors import GothicError

    ckpt = save_tiny_checkpoint(tmp_path / "old.pt", random_model(300), tiny_tokenizer_path)
    with pytest.raises(GothicError, match="carries no tokenizer"):
        export_checkpoint(ckpt, tmp_path / "out")
    result = export_checkpoint(ckpt, tmp_path / "out", tokenizer_path=tiny_tokenizer_path)
    assert result.architecture == "GPT2LMHeadModel"
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == tiny_tokenizer_path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_text_generation_with_its_defaults_stays_in_the_context(name, tmp_path, tiny_tokenizer_path,
                                                                         tiny_tokenizer):
    """The most common client, as the README calls it: pipeline("text-generation") with no arguments
    would ask for 256 new tokens; the export's generation config stops at the context window."""
    from transformers import pipeline
    from transformers.utils import logging

    logging.disable_progress_bar()
    switches, _ = CASES[name]
    model = random_model(300, **switches)  # block_size 64
    export_checkpoint(save_with_tokenizer(tmp_path / "best.pt", model, tiny_tokenizer_path), tmp_path / "export")
    generator = pipeline("text-generation", model=str(tmp_path / "export"))
    ids = generator("The night was", return_tensors=True)[0]["generated_token_ids"]
    eot = tiny_tokenizer.token_to_id("<|endoftext|>")
    assert len(ids) == model.cfg.block_size or ids[-1] == eot, len(ids)  # the whole context, unless it ended at EOT
    assert len(ids) <= model.cfg.block_size
