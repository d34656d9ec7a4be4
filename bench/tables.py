"""Markdown tables of the latest results (bench/results/*.json), for pasting into bench/README.md.

    python bench/tables.py [NAME ...]     # default: every results file
"""

from __future__ import annotations

import argparse
import json

from common import RESULTS_DIR


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(name: str) -> str:
    data = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    m, rows = data["machine"], data["rows"]
    lines = [f"### {name}", "", f"{m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads)", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows]
    if data.get("notes"):
        lines += ["", data["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in RESULTS_DIR.glob("*.json"))
    print("\n".join(markdown(name) for name in names))


if __name__ == "__main__":
    main()
