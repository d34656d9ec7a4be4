"""Fine-tune or start over: a new author's text, trained from scratch and from a base, in the same steps.

Stage 1 trains a base (the demo profile) on the corpus without the new author, with whole books
by other authors held out (gothic.corpus). Stage 2 trains on the new author's book split by
chapters (every `--val-every`th chapter held out): from scratch with a tokenizer of its own, as a
user with only that text would, and fine-tuned from the base (train.init_from, its tokenizer) with
each recipe, all for the same number of steps of the same model (the same CPU time; the wall
seconds are printed). Every model is then scored in fp32 on every held-out token of the new
author's chapters and, through evaluate.extra, on the base's held-out books: how much the new
author gained and how much of the base corpus's quality was kept. Training and scoring are the
project's own (gothic.train.train, gothic.evaluate.evaluate_checkpoint).

    python bench/finetune.py [--corpus ../shared/corpus/gothic] [--new-author shelley_frankenstein]
                             [--base-steps 600] [--steps 200] [--recipes demo lr/3 lr/10]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from quality import PLAIN, configs, parse_overrides

from gothic.config import EvaluateConfig, PrepareConfig
from gothic.corpus import Source, clean_source, prepare
from gothic.data import binarize
from gothic.evaluate import evaluate_checkpoint
from gothic.tokenizer import EOT, save_tokenizer, train_tokenizer
from gothic.train import train

from common import RESULTS_DIR, report

ROOT = Path(__file__).resolve().parent.parent
# Fine-tuning recipes on top of the demo profile: the same schedule shape at lower peak rates (the seed's
# table suggests far lower rates for fine-tuning; these measure how much lower pays on a few hundred KB),
# with the cosine schedule, random windows and no weight average they were measured with (Makefile
# FINETUNE_PARAMS).
RECIPES = {
    "demo": PLAIN,
    "lr/3": {**PLAIN, "train.learning_rate": 1.0e-3, "train.min_lr": 1.0e-4, "train.muon_lr": 0.0067},
    "lr/10": {**PLAIN, "train.learning_rate": 3.0e-4, "train.min_lr": 3.0e-5, "train.muon_lr": 0.002},
}
HEADING = re.compile(r"^(?:chapter|letter|book|part)\b[^\n]{0,60}$", re.IGNORECASE | re.MULTILINE)


def chapters(text: str, min_chars: int) -> list[str]:
    """A book cut at its chapter (letter, book, part) headings; pieces shorter than min_chars (a table
    of contents) are dropped."""
    cuts = [0, *(m.start() for m in HEADING.finditer(text)), len(text)]
    pieces = [text[a:b].strip() for a, b in zip(cuts, cuts[1:], strict=False)]
    return [p for p in pieces if len(p) >= min_chars]


def write_split(folder: Path, train_docs: list[str], val_docs: list[str]) -> Path:
    """processed/{train,val}.txt as prepare writes them: documents joined by <|endoftext|>."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", train_docs), ("val", val_docs)):
        (folder / f"{name}.txt").write_text(EOT.join(docs), encoding="utf-8")
    return folder


def encode(processed: Path, tokenizer: Path, out: Path) -> Path:
    binarize(processed, tokenizer, out)
    return out


def run(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict]:
    books = sorted(Path(args.corpus).glob("*.txt"))
    new_book = next((b for b in books if b.stem == args.new_author), None)
    if new_book is None:
        raise SystemExit(f"--new-author {args.new_author}: no {args.new_author}.txt in {args.corpus}")
    # stage 1: the base, on every other book, whole books held out
    raw = work / "base_raw"
    raw.mkdir(exist_ok=True)
    for book in books:
        if book != new_book:
            shutil.copy(book, raw / book.name)
    prepare(PrepareConfig(sources=["raw"], val_fraction=args.val_fraction, seed=args.seed), raw, work / "base")
    base_heldout = work / "heldout" / "base_books"  # the base's held-out books, as evaluate.extra reads them
    base_heldout.mkdir(parents=True, exist_ok=True)
    held_out = [name.removeprefix("raw/") for name in json.loads((work / "base" / "documents.json").read_text())["val"]]
    for name in held_out:
        shutil.copy(raw / name, base_heldout / name)
    base_tok = work / "base" / "tokenizer.json"
    save_tokenizer(train_tokenizer([work / "base" / "train.txt"], args.vocab_size, 2), base_tok)
    model_cfg, base_cfg = configs({}, {**parse_overrides(args.overrides), "train.max_iters": args.base_steps,
                                       "train.warmup_iters": max(1, args.base_steps // 20),
                                       "train.eval_interval": max(1, args.base_steps // 4)})
    started = time.perf_counter()
    train(model_cfg, base_cfg, encode(work / "base", base_tok, work / "base" / "bin"), base_tok, work / "base_run")
    base_seconds = time.perf_counter() - started
    base = work / "base_run" / "best.pt"
    # stage 2: the new author, by chapters
    text = clean_source(Source(new_book.name, new_book, builtin=False), "none")
    parts = chapters(text, args.min_chapter_chars)
    val_docs = parts[args.val_every - 1::args.val_every]
    train_docs = [p for i, p in enumerate(parts) if (i + 1) % args.val_every]
    new = write_split(work / "new", train_docs, val_docs)
    scratch_tok = work / "new" / "scratch_tokenizer.json"
    save_tokenizer(train_tokenizer([new / "train.txt"], args.vocab_size, 2), scratch_tok)
    bins = {"scratch": encode(new, scratch_tok, work / "new" / "bin_scratch"),
            "base": encode(new, base_tok, work / "new" / "bin_base")}
    score = EvaluateConfig(max_tokens=0, device="cpu", extra=[str(base_heldout)])
    rows = [scored("base (no stage 2)", base, bins["base"], score, 0, 0.0)]
    stage_cfg = {**parse_overrides(args.overrides), "train.max_iters": args.steps,
                 "train.warmup_iters": max(1, args.steps // 20), "train.eval_interval": max(1, args.steps // 4)}
    _, scratch_cfg = configs({}, stage_cfg)
    rows.append(trained_row("from scratch", model_cfg, scratch_cfg, bins["scratch"], scratch_tok, work, score))
    for recipe in args.recipes:
        _, cfg = configs(RECIPES[recipe], {**stage_cfg, "train.init_from": str(base)})
        rows.append(trained_row(f"fine-tune ({recipe})", model_cfg, cfg, bins["base"], base_tok, work, score))
    scratch_bpb = rows[1]["new author bpb"]
    for row in rows:
        row["vs scratch"] = f"{row['new author bpb'] / scratch_bpb - 1:+.1%}"
        row["base books vs base"] = f"{row['base books bpb'] / rows[0]['base books bpb'] - 1:+.1%}"
    return rows, {"base_held_out": held_out, "new_author": new_book.name, "chapters": {"train": len(train_docs),
                  "val": len(val_docs)}, "new_author_bytes": {"train": len(EOT.join(train_docs).encode()),
                  "val": len(EOT.join(val_docs).encode())}, "base_steps": args.base_steps, "steps": args.steps,
                  "base_train_s": round(base_seconds, 1)}


def trained_row(name: str, model_cfg, train_cfg, bin_dir: Path, tokenizer: Path, work: Path,
                score: EvaluateConfig) -> dict:
    out = work / re.sub(r"\W+", "_", name)
    started = time.perf_counter()
    train(model_cfg, train_cfg, bin_dir, tokenizer, out)
    return scored(name, out / "best.pt", bin_dir, score, train_cfg.max_iters, time.perf_counter() - started)


def scored(name: str, checkpoint: Path, bin_dir: Path, score: EvaluateConfig, steps: int, seconds: float) -> dict:
    metrics = evaluate_checkpoint(checkpoint, bin_dir, score)
    base_books = next(iter(metrics["extra"].values()))
    print(f"{name}: new author {metrics['bits_per_byte']:.4f} bpb, base books {base_books['bits_per_byte']:.4f} bpb",
          flush=True)
    return {"run": name, "steps": steps, "wall s": round(seconds, 1), "best step": metrics["checkpoint_step"],
            "new author bpb": round(metrics["bits_per_byte"], 4),
            "base books bpb": round(base_books["bits_per_byte"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "gothic"))
    parser.add_argument("--new-author", default="shelley_frankenstein", help="the book (file stem) stage 2 learns")
    parser.add_argument("--base-steps", type=int, default=600, help="stage 1 steps (the demo trains 1,000)")
    parser.add_argument("--steps", type=int, default=200, help="stage 2 steps, the same for every run")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model.*/train.* overrides on top of the demo profile, for both stages")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of the base's books held out")
    parser.add_argument("--val-every", type=int, default=5, help="every Nth chapter of the new author is held out")
    parser.add_argument("--min-chapter-chars", type=int, default=2000)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1337, help="seed of the base's book split")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the splits and runs here (a stopped bench continues them; default: a temp folder)")
    parser.add_argument("--name", default="finetune")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        rows, extra = run(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="gothic-finetune-") as tmp:
            rows, extra = run(args, Path(tmp))
    fine = [r for r in rows if r["run"].startswith("fine-tune")]
    best = min(fine, key=lambda r: r["new author bpb"]) if fine else None
    notes = (f"base: {extra['base_steps']} steps on the books but {extra['new_author']}, held out: "
             f"{', '.join(extra['base_held_out'])}; stage 2: {extra['steps']} steps on {extra['chapters']['train']} "
             f"chapters ({extra['new_author_bytes']['train']:,} bytes), scored on {extra['chapters']['val']} held-out "
             f"chapters ({extra['new_author_bytes']['val']:,} bytes)")
    if best:
        notes += f"; best fine-tune {best['run']}: {best['vs scratch']} bits per byte against from scratch"
    report(args.name, rows, notes, extra=extra, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
