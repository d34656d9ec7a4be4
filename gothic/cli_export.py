"""gothic-export: a checkpoint -> a folder that transformers loads and/or a GGUF for llama.cpp, with a model card."""

from __future__ import annotations

import sys
from pathlib import Path

from gothic.errors import printable, run_main
from gothic.script_args import script_parser


def export_main(argv: list[str] | None = None) -> None:
    # the scripts' parser: --version, and a usage mistake is one line
    parser = script_parser(
        "gothic-export",
        "Write a checkpoint as a folder that transformers loads (model.safetensors, config.json, "
        "tokenizer.json, generation_config.json) and/or as one GGUF file for llama.cpp with an Ollama "
        "Modelfile, with a README.md model card.")
    from gothic.config import EXPORT_FORMATS, GGUF_TYPES

    parser.add_argument("--format", nargs="+", choices=EXPORT_FORMATS, default=["transformers"],
                        help="transformers (the safetensors folder) and/or gguf (model-<type>.gguf + Modelfile)")
    parser.add_argument("--gguf-type", choices=GGUF_TYPES, default="f16", help="the GGUF's weight type")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"), help="the checkpoint to export")
    parser.add_argument("--out-dir", type=Path, default=Path("export"), help="the folder to (re)write")
    parser.add_argument("--metrics-dir", type=Path, default=Path("metrics"),
                        help="corpus.json, eval.json and train.json for the model card (skipped when absent)")
    parser.add_argument("--samples", type=Path, default=Path("samples/samples.md"),
                        help="samples quoted in the model card (skipped when absent)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer.json, only for older checkpoints that carry none")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back with transformers to compare logits")
    args = parser.parse_args(argv)

    def run() -> int:
        from gothic.export import TOLERANCE, export_checkpoint

        result = export_checkpoint(args.checkpoint, args.out_dir, metrics_dir=args.metrics_dir,
                                   samples=args.samples, tokenizer_path=args.tokenizer, verify=not args.no_verify,
                                   formats=tuple(dict.fromkeys(args.format)), gguf_type=args.gguf_type)
        print(printable(f"gothic-export: {result.summary()}"))
        if result.max_logit_diff is not None and not result.max_logit_diff <= TOLERANCE:
            print(f"gothic-export: error: the exported model's logits differ from gothic's by "
                  f"{result.max_logit_diff:.1e} (> {TOLERANCE:.0e}); please report this", file=sys.stderr)
            return 1
        return 0

    run_main(run, "gothic-export")
