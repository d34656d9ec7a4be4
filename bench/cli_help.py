"""How long each console script takes to answer --help: now (torch imported only after parsing)
against the same call with torch imported first, which is what every script did before.

    python bench/cli_help.py [--repeats 5] [--warmups 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS_DIR, report

SCRIPTS = {"gothic-prepare": "prepare_main", "gothic-tokenize": "tokenize_main", "gothic-train": "train_main",
           "gothic-generate": "generate_main", "gothic-chat": "chat_main"}


def best_wall(argv: list[str], repeats: int, warmups: int) -> float:
    """Fastest of `repeats` runs of a fresh process, after `warmups` untimed ones that fill the page cache."""
    for _ in range(warmups):
        subprocess.run(argv, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmups", type=int, default=1, help="untimed runs first (0: the first run is timed cold)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    rows = []
    for script, main_name in SCRIPTS.items():
        torch_first = (f"import torch\nfrom gothic import cli\ntry:\n    cli.{main_name}(['--help'])\n"
                       "except SystemExit:\n    pass")
        now = best_wall([str(bin_dir / script), "--help"], args.repeats, args.warmups)
        before = best_wall([sys.executable, "-c", torch_first], args.repeats, args.warmups)
        rows.append({"script": script, "--help s": round(now, 3), "torch imported first s": round(before, 3),
                     "x faster": round(before / now, 1)})
    notes = f"best of {args.repeats} fresh processes each, after {args.warmups} untimed"
    report("cli_help", rows, notes=notes, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
