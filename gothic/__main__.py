"""`python -m gothic COMMAND ...`: every gothic-* script behind one entry point, for when the scripts
are not on PATH, and for DDP: `torchrun --standalone --nproc_per_node 2 -m gothic train ...`.

    python -m gothic train --max-iters 200      # the same as gothic-train --max-iters 200
"""

from __future__ import annotations

import sys

# command -> (module, function); imported only when chosen, so `--help` stays fast
COMMANDS = {
    "prepare": ("gothic.cli", "prepare_main"),
    "tokenize": ("gothic.cli", "tokenize_main"),
    "train": ("gothic.cli", "train_main"),
    "generate": ("gothic.cli", "generate_main"),
    "chat": ("gothic.cli", "chat_main"),
    "export": ("gothic.cli_export", "export_main"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = f"usage: python -m gothic {{{','.join(COMMANDS)}}} [ARGS ...]   (each has --help)"
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return
        wrong = f"unknown command {argv[0]!r}; " if argv else ""
        print(f"python -m gothic: {wrong}{usage}", file=sys.stderr)
        raise SystemExit(2)
    module, function = COMMANDS[argv[0]]
    getattr(__import__(module, fromlist=[function]), function)(argv[1:])


if __name__ == "__main__":
    main()
