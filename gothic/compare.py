"""`make compare`: experiments side by side in any terminal width, and their charts in one folder.

`dvc exp show` puts every experiment on a row and every figure in a column: 135 columns for the
headline figures alone, so at 80 it shows `…` and the params that differ are off-screen. Here the
table is turned: one column per experiment, the metrics in one table and only the params that differ
in another, the experiments split into as many groups as the width needs. The figures are DVC's
(`dvc exp show --csv`, its precision); the charts are dvc.yaml's plots of the same experiments,
rendered by gothic.plots into dvc_plots/compare/.

    python -m gothic.compare            # the tables, and the charts
    python -m gothic.compare --md       # (or --csv) dvc exp show's own table, in that format
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gothic.config import SECTIONS
from gothic.errors import GothicError, run_main

# what `make compare` leaves to `dvc exp show`: corpus statistics, step counts, speeds, code hashes, outputs
DROP = "|".join((
    r"(train|val)\.(documents|bytes|words)$", r"vocab_size$", r"val_(bytes|tokens)$", r"bytes_per_token$",
    r".*step$", r"train_loss$", r"last_val_loss$", r"tokens_seen$", r".*tokens_per_second$", r"wall_time_s$",
    r"model_params.*", r"eval_(tokens|bytes)$", r"samples$", r"new_tokens$", r"distinct_[13]$",
    r"longest_shared_ngram_mean$", r"Created$", r"Executor$", r".*\.py$", r"train_bytes$",
    r"trained_on_bytes$", r"sampled$", r"split_tokens$", r"data/", r"models/", r"metrics/", r"samples/",
    r"train\.resume$"))
CHARTS_DIR = Path("dvc_plots/compare")
VALUE_WIDTH = 22  # a wider value (a list of prompts) folds onto more lines
MISSING = "!"  # dvc exp show's mark for a figure a revision does not have


@dataclass
class Column:
    """One experiment (or the workspace, or the commit they branch from) and its figures."""

    name: str
    values: dict[str, str]
    state: str = ""  # dvc exp show's State: Failed, Running, ... ('' for a finished one)

    def has_results(self, metrics: list[str]) -> bool:
        return any(self.values[m] not in (MISSING, "") for m in metrics)


def dvc_exp_show(args: list[str], drop: str = DROP) -> str:
    cmd = ["dvc", "exp", "show", "--no-pager", "--hide-queued", "--precision", "4", "--drop", drop, *args]
    proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True)  # this venv's dvc
    if proc.returncode != 0:
        why = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no output")
        raise GothicError(f"`{' '.join(cmd[:3])}` failed: {why}")
    return proc.stdout


def read_columns(text: str) -> tuple[list[Column], list[str], list[str]]:
    """Parse `dvc exp show --csv` (with rev and typ kept) into columns, metric names and param names.

    The CSV does not say which figures are params: every param is in one of params.yaml's sections
    (`train.seed`); the rest are metrics, top-level keys of gothic's metrics files or nested ones
    (`extra.NAME.bits_per_byte`)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return [], [], []
    fields = [f for f in rows[0] if f not in ("Experiment", "rev", "typ", "State", "parent")]
    columns = [Column(row["Experiment"] or row["rev"], {f: row[f] or "" for f in fields}, row.get("State") or "")
               for row in rows]
    is_param = {f: f.partition(".")[0] in SECTIONS and "." in f for f in fields}
    return columns, [f for f in fields if not is_param[f]], [f for f in fields if is_param[f]]


def choose(columns: list[Column], metrics: list[str]) -> tuple[list[Column], list[str]]:
    """The columns worth showing, and a note for each one left out (no results; the same as an experiment)."""
    shown, notes = [], []
    for col in columns:
        twin = next((c.name for c in columns if c is not col and c.values == col.values), None)
        if not col.has_results(metrics):
            why = {"Failed": "its run failed", "Running": "still running"}.get(col.state, "not run here")
            notes.append(f"{col.name}: no results ({why})")
        elif col.name == "workspace" and twin:  # the experiment last run or applied
            notes.append(f"workspace: the same as {twin}")
        else:
            shown.append(col)
    return shown, notes


def column_groups(columns: list[Column], labels: list[str], fields: list[str], width: int) -> list[list[Column]]:
    """Consecutive runs of columns that fit the width beside the label column (at least one each)."""
    label_width = max(map(len, labels), default=0) + 3
    groups: list[list[Column]] = [[]]
    used = label_width
    for col in columns:
        need = min(max([len(col.name)] + [len(col.values[f]) for f in fields]), VALUE_WIDTH) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = label_width
        groups[-1].append(col)
        used += need
    return groups


def table(columns: list[Column], metrics: list[str], params: list[str]) -> Table:
    """One table, so a column stays one experiment's: the metrics, then (below a rule) the params that differ."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("metrics", style="bold", no_wrap=True)
    for col in columns:
        t.add_column(col.name, justify="right", max_width=VALUE_WIDTH, overflow="fold")
    for field in metrics:
        t.add_row(field, *[col.values[field].replace(MISSING, "-") for col in columns])
    if params:
        t.add_section()
        t.add_row(Text("params that differ", style="italic"), style="not bold")
        for field in params:
            t.add_row(field, *[col.values[field] for col in columns])
    return t


def print_tables(columns: list[Column], metrics: list[str], params: list[str], console: Console) -> list[Column]:
    """Print the metrics and the params that differ, as many columns at a time as fit; return the columns shown."""
    shown, notes = choose(columns, metrics)
    if not shown:
        raise GothicError("no experiment has results yet: run one first (make demo, or dvc exp run)")
    differing = [p for p in params if len({col.values[p] for col in shown}) > 1]
    labels = metrics + differing
    groups = column_groups(shown, labels, labels, console.width)
    for group in groups:
        console.print(table(group, metrics, differing))
        console.print()
    if not differing:
        console.print("Every experiment shown has the same params.")
    for note in notes:
        console.print(note)
    return shown


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # --md, --csv, or any other dvc exp show flag: DVC's own table
        sys.stdout.write(dvc_exp_show(["--only-changed", *argv], drop=DROP + r"|rev$"))
        return
    columns, metrics, params = read_columns(dvc_exp_show(["--csv"]))
    console = Console(highlight=False)
    shown = print_tables(columns, metrics, params, console)
    from gothic.plots import dvc_specs, render_all

    pngs = render_all(dvc_specs([col.name for col in shown]), CHARTS_DIR)
    console.print(f"charts: {CHARTS_DIR}/index.html ({len(pngs)} PNGs, each also as HTML)")


if __name__ == "__main__":
    run_main(main, "compare")
