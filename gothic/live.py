"""Live metrics: the `train` stage's DVC metrics and plot files, rewritten while training runs.

`dvc exp show` reads metrics/train.json and `dvc plots show` the plot TSVs from the workspace of
a running experiment (the workspace itself, or the temporary one of a queued or --temp run), so
keeping those files current shows a long run's progress while it trains, in the same files the
run ends with. They are rebuilt from the run's history, which a resumed run truncates to its
checkpoint's step, so a resumed run's files never hold rows from the abandoned tail. TensorBoard
follows the run through its own event files (gothic.runlog.RunLog).

    train(..., hooks=TrainHooks(on_log=LiveMetrics("metrics/train.json", "metrics/train_plots")))

Why not dvclive (3.49.1, DVC's own logger): a resumed `Live(resume=True)` continues from the step in
its metrics file and appends to each plot .tsv (`Metric.dump` opens it with "a"), so a run resumed
from a checkpoint older than its last logged step would keep the abandoned tail's rows and repeat
their steps; these files are rewritten from the checkpoint's history instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from gothic.checkpoint import RunState
from gothic.files import write_json
from gothic.runlog import progress_metrics, write_curves

MIN_INTERVAL_S = 5.0
"""Train rows come every few steps; rewriting the files at most this often keeps the cost negligible."""


def live_metrics(state: RunState) -> dict:
    """metrics/train.json while training: the figures known so far (the end of the run adds speed and size;
    current_lr, the learning rate of the last logged step, is there only while it trains)."""
    train_rows = state.history["train"]
    return {**progress_metrics(state), "current_lr": train_rows[-1]["lr"] if train_rows else None}


class LiveMetrics:
    """A training hook (TrainHooks.on_log) that rewrites the metrics file and plot TSVs as rows come in:
    at every new val row, else at most every min_interval_s seconds."""

    def __init__(self, metrics_path: str | Path, plots_dir: str | Path, min_interval_s: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.metrics_path, self.plots_dir = Path(metrics_path), Path(plots_dir)
        self.min_interval_s, self.clock = min_interval_s, clock
        self.last_write, self.val_rows = -math.inf, 0

    def __call__(self, state: RunState) -> None:
        new_val = len(state.history["val"]) != self.val_rows
        if not new_val and self.clock() - self.last_write < self.min_interval_s:
            return
        write_curves(state.history, self.plots_dir)
        write_json(self.metrics_path, live_metrics(state))
        self.last_write, self.val_rows = self.clock(), len(state.history["val"])
