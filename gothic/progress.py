"""Rich progress bars for long loops (binarize, training), for the stages and CLIs only: the library
reports through callbacks and never imports rich."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gothic.errors import printable


def progress_bar(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=transient)


def bytes_progress_bar(transient: bool = False) -> Progress:
    """For work measured in bytes of text: MB done of MB in all, and MB/s."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=transient)


@contextmanager
def step_display(description: str, show: bool | None = None) -> Iterator[tuple[Callable[[str], None], Callable | None]]:
    """(log, progress) callbacks for a loop that reports (step, total, status), as training does
    (gothic.runlog.StepProgress): on a terminal (or with show=True), a
    bar that the progress callback moves and log lines printed above it; otherwise plain print and
    no progress callback, so the loop logs a line per report instead."""
    if not (sys.stdout.isatty() if show is None else show):
        yield (lambda msg: print(printable(msg))), None
        return
    bar = progress_bar()
    task = None

    def progress(step: int, total: int, status: str) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(description, total=total, completed=step, status=status)
        bar.update(task, completed=step, total=total, status=status)

    with bar:
        # plain text, so a path with [brackets] is no markup
        yield (lambda msg: bar.console.print(printable(msg), markup=False, highlight=False)), progress
