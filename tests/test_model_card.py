"""The exported model card as the Hugging Face Hub reads it: front matter, evaluation results, figures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from gothic.export import export_checkpoint
from gothic.plots import HEIGHT, WIDTH

from conftest import save_tiny_checkpoint, tiny_gpt

pytest.importorskip("transformers", reason="the export extra (transformers) is not installed")
from huggingface_hub import ModelCard  # noqa: E402  (installed with transformers)

HISTORY = {"train": [{"step": s, "train_loss": 5.0 - s / 10, "lr": 1e-3, "tokens_per_s": 1.0} for s in range(1, 9)],
           "val": [{"step": 4, "val_loss": 4.9}, {"step": 8, "val_loss": 4.6}]}
EVAL = {"val_loss": 1.5, "perplexity": 4.48, "bits_per_byte": 0.987654, "eval_tokens": 2000, "eval_bytes": 7890,
        "documents": [{"name": "Dracula", "tokens": 1000, "bytes": 4000, "loss": 1.4, "bits_per_byte": 0.95},
                      {"name": "Carmilla", "tokens": 1000, "bytes": 3890, "loss": 1.6, "bits_per_byte": 1.02}]}


def export(tmp_path, tokenizer_path, sources: list[str]):
    metrics = tmp_path / "metrics"
    metrics.mkdir(exist_ok=True)
    (metrics / "eval.json").write_text(json.dumps(EVAL))
    checkpoint = save_tiny_checkpoint(tmp_path / "best.pt", tiny_gpt(300, block_size=64), tokenizer_path, step=8,
                                      carry_tokenizer=True, history=HISTORY)
    out = tmp_path / "out"
    export_checkpoint(checkpoint, out, metrics_dir=metrics, sources=sources, verify=False)
    return out


def assert_real_png(path, size=(WIDTH, HEIGHT)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        image.verify()  # the whole file decodes
    with Image.open(path) as image:
        low, high = image.convert("L").getextrema()
        assert high - low > 100, "a blank image"  # lines and text on a white background


def test_the_front_matter_is_what_huggingface_hub_reads(tmp_path, tiny_tokenizer_path):
    out = export(tmp_path, tiny_tokenizer_path, ["builtin"])
    text = (out / "README.md").read_text()
    assert text.startswith("---\n") and "\n---\n\n# gothic GPT" in text
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag, data.language) == \
        ("mit", "transformers", "text-generation", ["en"])
    assert "gothic" in data.tags and data.model_name == "gothic-gpt"
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"bits_per_byte": 0.987654, "perplexity": 4.48, "loss": 1.5}
    assert {r.task_type for r in data.eval_results} == {"text-generation"}
    assert "0.987654" in card.text and "## Evaluation" in card.text  # the body stays as it was


def test_text_of_unknown_licence_is_not_called_mit(tmp_path, tiny_tokenizer_path):
    data = ModelCard.load(export(tmp_path, tiny_tokenizer_path, ["builtin", "raw"]) / "README.md").data
    assert data.license == "other" and data.license_name == "training-text-licences" and data.language == ["en"]
    data = ModelCard.load(export(tmp_path, tiny_tokenizer_path, ["raw"]) / "README.md").data
    assert data.license == "other" and data.language is None  # data/raw/ may be in any language


def test_the_card_shows_the_loss_curve_and_the_documents_as_real_images(tmp_path, tiny_tokenizer_path):
    out = export(tmp_path, tiny_tokenizer_path, ["builtin"])
    card = (out / "README.md").read_text()
    assert "![train and validation loss](loss.png)" in card
    assert "![held-out bits per byte of each document](held_out_bits_per_byte.png)" in card
    for name in ("loss.png", "held_out_bits_per_byte.png"):
        assert_real_png(out / name)
        assert (out / name).stat().st_mode & 0o044 == 0o044
    assert not list(out.glob("*.html"))  # the card's folder is for the Hub: images only
