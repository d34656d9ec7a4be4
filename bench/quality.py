"""Held-out quality in two regimes: train each profile for N minutes (or steps), then bits per byte.

Builds its own split with the project's own code (gothic.corpus: whole documents held out, named
in the output; a BPE tokenizer trained on the training documents only; the bins), then, per
profile, trains from scratch until the training clock reaches the budget (evaluation time is not
counted) and scores every held-out token in fp32 (gothic.evaluate), with the final weights and
with the weights best.pt would hold (the lowest periodic val loss, as gothic.train picks it). The
learning rate warms up and decays on the budget's clock, so every profile gets a full schedule.
Prints the curve and the final figures.

Two regimes (--regimes), both by default:
- ten-minutes: the whole training split, a few passes over it in ten CPU minutes;
- many-passes: the smallest training books only (at least --passes-bytes of text, the same
  held-out books), so the same budget is 30-100 passes over the data: the CPU stand-in for a GPU
  user's run on a shelf of novels, where regularisation and averaging decide the result.

    python bench/quality.py [--corpus builtin|DIR] [--minutes 10 | --steps N] [--profiles seed-arch demo]
                            [--regimes ten-minutes many-passes] [--set model.n_layer=6 ...] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from gothic.config import (
    ConfigError,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
    params_from_dict,
)
from gothic.corpus import prepare
from gothic.data import BatchSampler, BatchStream, binarize, load_meta, load_split
from gothic.ema import WeightAverage
from gothic.evaluate import evaluate_tokens
from gothic.model import GPT
from gothic.optim import build_optimizers, set_lr
from gothic.params_file import parse_value, read_params_dict, set_values
from gothic.runtime import resolve_precision
from gothic.tokenizer import EOT, save_tokenizer, train_tokenizer
from gothic.train import estimate_loss, train_step

from common import RESULTS_DIR, print_table, report

ROOT = Path(__file__).resolve().parent.parent
LN2 = math.log(2)
# Every profile is the project's params.yaml plus overrides, read and checked as the pipeline reads
# them (gothic.config). "demo" is `make demo`'s profile, taken from the Makefile (its one source);
# the others change what they name on top of it, so only that differs.
SEED_ARCH = {"model.pos_embedding": "learned", "model.norm": "layernorm", "model.qk_norm": False, "model.mlp": "gelu",
             "model.tie_embeddings": True, "model.bias": True, "train.optimizer": "adamw"}
# params.yaml's settings of the data-limited toolbox's switches (cosine, random windows, no average): the
# schedule the seed trains with. The demo carries the toolbox itself (issue 20: it won in both regimes), so
# the older tables' "demo-toolbox" is today's "demo".
PLAIN = {"train.ema": 0.0, "train.schedule": "cosine", "train.sampling": "random"}
PROFILES: dict[str, dict] = {
    "demo": {},
    # the demo as it was before the toolbox: the "before" of the two-regime table (bench/README.md)
    "demo-plain": PLAIN,
    # the seed architecture (GPT-2 style, AdamW, cosine) at the demo's shape
    "seed-arch": {**SEED_ARCH, **PLAIN, "train.learning_rate": 1.0e-3, "train.min_lr": 1.0e-4},
    # the modern switches with AdamW instead of Muon
    "modern-adamw": {"train.optimizer": "adamw", "train.learning_rate": 2.0e-3, "train.min_lr": 2.0e-4},
    # params.yaml's optimizer settings (AdamW 3e-4 to 3e-5, weight decay 0.1, cosine) at the demo's
    # size: issue 20's "seed recipe" that the many-passes regime is measured against
    "seed-recipe": {**PLAIN, "train.optimizer": "adamw", "train.learning_rate": 3.0e-4, "train.min_lr": 3.0e-5,
                    "train.weight_decay": 0.1},
    # the toolbox's switches one at a time on top of the plain demo
    "demo-ema": {**PLAIN, "train.ema": 0.99},
    "demo-wsd": {**PLAIN, "train.schedule": "wsd", "train.decay_frac": 0.3},
    "demo-epochs": {**PLAIN, "train.sampling": "epochs"},
    "demo-dropout": {"model.dropout": 0.1},
    # the demo (toolbox included) with dropout on the embeddings and residual branches only (the attention
    # kernel stays fused)
    "demo-toolbox-dropout": {"model.dropout": 0.1, "model.attention_dropout": False},
    # ... three times that dropout: tens of passes over a few hundred KB memorise it (train loss -> 0.3)
    "demo-toolbox-dropout3": {"model.dropout": 0.3, "model.attention_dropout": False},
    # ... with a third of the demo's peak rates, so the memorising comes later
    "demo-toolbox-slow": {"model.dropout": 0.1, "model.attention_dropout": False,
                          "train.learning_rate": 1.0e-3, "train.min_lr": 1.0e-4, "train.muon_lr": 0.007},
}
REGIMES = ("ten-minutes", "many-passes")


@functools.cache
def demo_profile() -> dict:
    """`make demo-params` (`-S key=value ...`) as {key: value}, values read as DVC reads them."""
    try:
        words = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "demo-params"], check=True,
                               capture_output=True, text=True).stdout.split()
    except FileNotFoundError:  # no make (a bare GPU image): the Makefile's assignment, its continuations joined
        text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
        words = re.search(r"^DEMO_PARAMS \?= (.*)$", text, re.M).group(1).split()
    return dict(parse_overrides([w for w in words if w != "-S"]))


# the schedule runs on the budget's clock, expressed in these virtual steps
SCHEDULE_STEPS = 1000
WARMUP_FRACTION = 0.05
CURVE_WINDOWS = 16  # held-out windows scored for each point of the curve (the final figure uses all)


def build_split(corpus: str, work_dir: Path, vocab_size: int, val_fraction: float, seed: int,
                keep_bytes: int = 0) -> tuple[Path, Path, dict]:
    """prepare -> tokenizer (trained on the train documents) -> bins; returns (bin_dir, tokenizer, documents).
    keep_bytes > 0 trains on the smallest training books only (keep_smallest_books)."""
    if corpus == "builtin":
        cfg, raw_dir = PrepareConfig(sources=["builtin"], val_fraction=val_fraction, seed=seed), work_dir / "none"
    else:  # the books only: a folder's README/SOURCES.md is no document
        cfg, raw_dir = PrepareConfig(sources=["raw"], val_fraction=val_fraction, seed=seed), work_dir / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        for book in sorted(Path(corpus).glob("*.txt")):
            shutil.copy(book, raw_dir / book.name)
    processed = work_dir / "processed"
    prepare(cfg, raw_dir, processed)
    documents = json.loads((processed / "documents.json").read_text())
    if keep_bytes:
        documents["train"] = keep_smallest_books(processed, documents["train"], keep_bytes)
    tokenizer_path = work_dir / "tokenizer.json"
    save_tokenizer(train_tokenizer([processed / "train.txt"], vocab_size, 2), tokenizer_path)
    bin_dir = work_dir / "bin"
    binarize(processed, tokenizer_path, bin_dir)
    return bin_dir, tokenizer_path, documents


def keep_smallest_books(processed: Path, names: list[str], keep_bytes: int) -> list[str]:
    """Cut train.txt down to its smallest documents, taken in order of size until they hold keep_bytes
    (the many-passes regime); returns the names kept. prepare wrote them in `names`' order."""
    path = processed / "train.txt"
    texts = path.read_text(encoding="utf-8").split(EOT)
    assert len(texts) == len(names), "train.txt does not hold one text per training document"
    kept, size = [], 0
    for i in sorted(range(len(texts)), key=lambda i: (len(texts[i].encode()), names[i])):
        if size >= keep_bytes:
            break
        kept.append(i)
        size += len(texts[i].encode())
    kept.sort()
    path.write_text(EOT.join(texts[i] for i in kept), encoding="utf-8")
    return [names[i] for i in kept]


def configs(profile: dict, overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """params.yaml (as committed) + the demo profile + the profile's changes + --set, checked by gothic.config."""
    values = {**demo_profile(), **profile, "train.compile": False, "train.device": "cpu", **overrides}
    try:
        params = params_from_dict(set_values(read_params_dict(ROOT / "params.yaml"), values))
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    return params.model, params.train


def curve_bpb(model: GPT, val, windows: int, tokens_per_byte: float) -> float:
    """Bits per byte estimated on the first `windows` held-out windows (a cheap point of the curve)."""
    block = model.cfg.block_size
    n = min(windows, (len(val) - 1) // block)
    x = torch.from_numpy(val[:n * block].astype("int64")).view(n, block)
    y = torch.from_numpy(val[1:n * block + 1].astype("int64")).view(n, block)
    model.eval()
    with torch.inference_mode():
        _, loss = model(x, y)
    model.train()
    return loss.item() * tokens_per_byte / LN2


def train_for(name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, bin_dir: Path, budget_s: float,
              eval_every_s: float, steps: int = 0, cpu_fallback: bool = True) -> tuple[dict, list[dict]]:
    """Train one profile until its training clock reaches budget_s, or for `steps` steps; returns
    (final row, curve rows). cpu_fallback=False runs bf16 autocast even where the CPU emulates it
    (for equal-step quality comparisons)."""
    run = budget_training(name, model_cfg, train_cfg, bin_dir, budget_s, eval_every_s, steps, cpu_fallback)
    meta = load_meta(bin_dir)
    val = load_split(bin_dir, "val", meta)
    step = run.curve[-1]["step"]
    tokens = step * train_cfg.batch_size * train_cfg.grad_accum * model_cfg.block_size

    def held_out(model: GPT) -> dict:
        return evaluate_tokens(model.float().eval(), val, meta["splits"]["val"]["documents"], int(meta["eot_id"]),
                               batch_size=8)

    final = held_out(run.model)
    run.model.load_state_dict(run.best_state)
    best = held_out(run.model)
    row = {"profile": name, "params M": run.model.num_params(non_embedding=False) / 1e6, "steps": step,
           "passes": tokens / meta["splits"]["train"]["tokens"], "tokens": tokens, "tokens/s": tokens / run.clock,
           "train s": run.clock, "held-out loss": final["val_loss"], "held-out bpb": final["bits_per_byte"],
           "best step": run.best_step, "best.pt held-out bpb": best["bits_per_byte"]}
    return row, run.curve


@dataclasses.dataclass
class BudgetRun:
    model: GPT
    """The final weights, as final.pt holds them (the average with train.ema)."""
    curve: list[dict]
    clock: float
    """Seconds of training steps."""
    best_state: dict
    """What best.pt would hold: the weights at the lowest periodic val loss."""
    best_step: int


def budget_training(name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, bin_dir: Path, budget_s: float,
                    eval_every_s: float, steps: int = 0, cpu_fallback: bool = True) -> BudgetRun:
    """The training of train_for: the trained model, the curve rows, seconds of training and best.pt's weights.

    With `steps`, the steps are gothic-train's with train.max_iters=steps (tests/test_bench.py holds
    the weights, final and best, to that, bit for bit), evaluated every train.eval_interval steps; on
    a time budget, the learning rate warms up and decays on the budget's clock instead
    (SCHEDULE_STEPS points of it), so every profile gets a full schedule, and the val loss that picks
    best.pt's weights is taken at the curve's points."""
    meta = load_meta(bin_dir)
    train_tokens, val = load_split(bin_dir, "train", meta), load_split(bin_dir, "val", meta)
    tokens_per_byte = meta["splits"]["val"]["tokens"] / meta["splits"]["val"]["bytes"]
    torch.manual_seed(train_cfg.seed)  # as gothic.train.build_run: the same initial weights, the same dropout masks
    device = torch.device("cpu")
    model = GPT(model_cfg, int(meta["vocab_size"]))
    torch.manual_seed(train_cfg.seed)
    optimizers = build_optimizers(model, train_cfg, device)
    precision = resolve_precision(train_cfg.dtype, device, cpu_fallback)
    ema = WeightAverage(model, train_cfg.ema) if train_cfg.ema else None
    stream = BatchStream(BatchSampler(train_tokens, model_cfg.block_size, train_cfg.batch_size, train_cfg.seed,
                                      epochs=train_cfg.sampling == "epochs"))
    schedule = dataclasses.replace(train_cfg, max_iters=steps) if steps else \
        dataclasses.replace(train_cfg, max_iters=SCHEDULE_STEPS, warmup_iters=round(SCHEDULE_STEPS * WARMUP_FRACTION))
    clock, step, next_eval, losses = 0.0, 0, eval_every_s, []
    best = {"loss": math.inf, "state": model.state_dict(), "step": 0}

    def published():  # the weights the run evaluates and saves: the average with train.ema
        return ema.swapped_in(model) if ema is not None else contextlib.nullcontext()

    def point() -> dict:
        with published():
            return {"profile": name, "train s": round(clock, 1), "step": step,
                    "train loss": sum(losses[-20:]) / len(losses[-20:]) if losses else math.nan,
                    "held-out bpb (est.)": curve_bpb(model, val, CURVE_WINDOWS, tokens_per_byte)}

    def evaluate() -> None:  # gothic.train.evaluate_and_save's val loss and best.pt rule
        with published():
            loss = estimate_loss(model, val, train_cfg.batch_size, train_cfg.eval_iters, train_cfg.seed, precision)
            if loss < best["loss"]:
                best.update(loss=loss, state={k: v.clone() for k, v in model.state_dict().items()}, step=step)

    def done() -> float:  # the share of the budget used
        return step / steps if steps else clock / budget_s

    curve = [point()]
    while done() < 1:
        started = time.perf_counter()
        set_lr(optimizers, step if steps else min(SCHEDULE_STEPS - 1, int(SCHEDULE_STEPS * done())), schedule)
        batches = [stream.next_batch() for _ in range(train_cfg.grad_accum)]
        losses.append(train_step(model, batches, optimizers, precision, train_cfg.grad_clip).item())
        if ema is not None:
            ema.update(model)
        clock += time.perf_counter() - started
        step += 1
        at_point = clock >= next_eval or done() >= 1
        if (step % train_cfg.eval_interval == 0 or done() >= 1) if steps else at_point:
            evaluate()
        if at_point:
            next_eval += eval_every_s
            curve.append(point())
            print(f"{name}: {clock:6.0f}s step {step:5d} train loss {curve[-1]['train loss']:.3f} "
                  f"held-out bpb ~{curve[-1]['held-out bpb (est.)']:.3f}", flush=True)
    if ema is not None:
        with torch.no_grad():
            for p, weight in zip(model.parameters(), ema.weights, strict=True):
                p.copy_(weight)
    return BudgetRun(model, curve, clock, best["state"], best["step"])


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def parse_overrides(items: list[str]) -> dict:
    """`model.x=1` strings -> {"model.x": 1}, values read as YAML like --set does (true, 3e-4, rope)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.startswith(("model.", "train.")) or not value:
            raise SystemExit(f"--set {item!r}: expected model.KEY=VALUE or train.KEY=VALUE")
        out[key] = parse_value(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="builtin",
                        help="'builtin' (the Shakespeare plays) or a folder of .txt books "
                             "(e.g. ../shared/corpus/gothic)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per profile")
    parser.add_argument("--profiles", nargs="+", default=["seed-arch", "demo"], choices=sorted(PROFILES),
                        help="demo: make demo's profile (Makefile DEMO_PARAMS); the others change it (PROFILES)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override for every profile, e.g. model.n_layer=6")
    parser.add_argument("--steps", type=int, default=0,
                        help="train this many steps instead of --minutes (the schedule runs on steps): "
                             "compares quality per step, independent of the machine's speed and load")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="run train.dtype bfloat16 as bf16 autocast even on a CPU without bf16 units "
                             "(several times slower there; with --steps, shows what bf16 does to quality)")
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between curve points")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1337, help="seed of the document split")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--name", default="quality", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep each regime's split and bins here and reuse them (same corpus and settings only)")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES,
                        help="ten-minutes: the whole training split; many-passes: its smallest books only "
                             "(--passes-bytes), seen many times in the same budget")
    parser.add_argument("--passes-bytes", type=int, default=140_000,
                        help="many-passes: keep the smallest training books until they hold this much text "
                             "(on the Gothic split: Machen and Stevenson, 71,502 tokens, ~29 passes in ten minutes)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.overrides)
    rows, curve, held_out, trained_on = [], [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for regime in args.regimes:
            bin_dir, documents = regime_split(args, regime, (args.work_dir or Path(tmp)) / regime)
            held_out[regime], trained_on[regime] = documents["val"], documents["train"]
            print(f"{regime}: held out ({len(documents['val'])} documents): {', '.join(documents['val'])}; "
                  f"training on {len(documents['train'])}", flush=True)
            for name in args.profiles:
                model_cfg, train_cfg = configs(PROFILES[name], overrides)
                # a fresh process per profile: a run after another in the same process trained several
                # times slower (allocator state), which would skew a wall-clock comparison
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_set_threads, initargs=(args.threads,)) as pool:
                    row, points = pool.submit(train_for, name, model_cfg, train_cfg, bin_dir, args.minutes * 60,
                                              args.eval_every, args.steps, not args.emulated_bf16).result()
                rows.append({"regime": regime, **row})
                # each row as it comes: a long screen cut short keeps the rows it finished
                print(f"{regime}: {name}: {row['steps']} steps, {row['passes']:.1f} passes: held-out bpb "
                      f"{row['held-out bpb']:.4f} final, {row['best.pt held-out bpb']:.4f} best.pt "
                      f"(step {row['best step']})", flush=True)
                curve += [{"regime": regime, **p} for p in points]
    print_table("held-out curve", curve)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    notes = (f"corpus {args.corpus}; {budget} of training per profile (torch threads "
             f"{torch.get_num_threads()}); held out: {', '.join(next(iter(held_out.values())))}")
    settings = {name: {**demo_profile(), **PROFILES[name], **overrides} for name in args.profiles}
    first = args.regimes[0]
    report(args.name, rows, notes=notes,
           extra={"held_out": held_out[first], "held_out_by_regime": held_out, "trained_on": trained_on,
                  "profiles": settings, "curve": curve}, results_dir=args.results_dir or RESULTS_DIR)


def regime_split(args: argparse.Namespace, regime: str, work_dir: Path) -> tuple[Path, dict]:
    """The regime's bins and documents: built in work_dir, or the ones an earlier run left there (--work-dir)."""
    if (work_dir / "bin" / "meta.json").is_file():
        return work_dir / "bin", json.loads((work_dir / "documents.json").read_text())
    keep = args.passes_bytes if regime == "many-passes" else 0
    bin_dir, _, documents = build_split(args.corpus, work_dir, args.vocab_size, args.val_fraction, args.seed, keep)
    (work_dir / "documents.json").write_text(json.dumps(documents))  # what was kept, for a reuse
    return bin_dir, documents

if __name__ == "__main__":
    main()
