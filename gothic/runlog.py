"""What a training run reports while it runs: log lines or progress callbacks, TensorBoard scalars, the
train-loss window between two log lines, and the DVC plot files (`write_curves`).

The caller of `train` hears from the run through one `TrainHooks`. The loop reports to a `Reporter`,
chosen once by rank: rank 0 gets a `RunLog` (the hooks, TensorBoard and the run's history, which is
checkpointed, so a continued run's logs and plots carry on where they stopped); the other ranks get
the silent base.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gothic.checkpoint import RunState
from gothic.files import write_text
from gothic.runtime import Dist, all_reduce

Log = Callable[[str], None]
StepProgress = Callable[[int, int, str], None]
"""(step, max_iters, status): where training is; gothic.progress.step_display draws it as a bar."""


@dataclass
class TrainHooks:
    """How the caller of `train` hears from the run (rank 0 only). Each hook may be None."""

    log: Log | None = None
    """One-line messages (the startup line, notes, val rows; train rows too without `progress`)."""
    progress: StepProgress | None = None
    """Called after every step; with it, each train row updates its status instead of logging a line
    (gothic.progress.step_display draws it as a bar for the stage and the CLI)."""
    on_step: Callable[[int], None] | None = None
    """The step number after every optimizer step (tests interrupt a run there)."""
    on_log: Callable[[RunState], None] | None = None
    """The run state after each logged train or val row (gothic.live.LiveMetrics: DVC's metrics and plots)."""
    before_publish: Callable[[], None] | None = None
    """Called once the run is complete, before it is published; a GothicError there publishes nothing
    (the train stage checks that params.yaml still describes the run: gothic.rundir.check_params_unchanged)."""


class Reporter:
    """What the loop reports to. This base reports nothing: the ranks other than 0 get it."""

    def log(self, message: str) -> None:
        pass

    def step(self) -> None:
        """A step is done (the progress display moves)."""

    def after_step(self) -> None:
        """A step is done and its rows reported."""

    def train_row(self, loss: float, lr: float, tokens_per_s: float) -> None:
        pass

    def val_row(self, val_loss: float, is_best: bool) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog(Reporter):
    """Rank 0's reports: the hooks, TensorBoard scalars and the run's history.

    With a `progress` hook each train row updates its status; without one, each train row is a log line.
    """

    def __init__(self, out_dir: Path, state: RunState, max_iters: int, hooks: TrainHooks):
        from torch.utils.tensorboard import SummaryWriter  # slow import, only where logs are written

        # purge_step drops events a stopped run logged past the step we resume from; flushing every
        # 10 s (not the default 120) lets TensorBoard follow a run as it trains
        self.writer = SummaryWriter(str(out_dir / "logs"), purge_step=state.step, flush_secs=10)
        self.state, self.max_iters, self.hooks, self.status = state, max_iters, hooks, ""
        self.step()

    def log(self, message: str) -> None:
        if self.hooks.log is not None:
            self.hooks.log(message)

    def step(self) -> None:
        if self.hooks.progress is not None:
            self.hooks.progress(self.state.step, self.max_iters, self.status)

    def after_step(self) -> None:
        if self.hooks.on_step is not None:
            self.hooks.on_step(self.state.step)

    def logged(self) -> None:
        if self.hooks.on_log is not None:
            self.hooks.on_log(self.state)

    def train_row(self, loss: float, lr: float, tokens_per_s: float) -> None:
        step = self.state.step
        self.state.history["train"].append({"step": step, "train_loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        for tag, value in (("loss/train", loss), ("perplexity/train", math.exp(min(loss, 50.0))),
                           ("learning_rate", lr), ("tokens_per_s", tokens_per_s)):
            self.writer.add_scalar(tag, value, step)
        self.status = f"loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
        if self.hooks.progress is not None:
            self.step()
        else:
            self.log(f"step {step}: {self.status}")
        self.logged()

    def val_row(self, val_loss: float, is_best: bool) -> None:
        step = self.state.step
        self.state.history["val"].append({"step": step, "val_loss": val_loss})
        self.writer.add_scalar("loss/val", val_loss, step)
        self.writer.add_scalar("perplexity/val", math.exp(min(val_loss, 50.0)), step)
        self.log(f"step {step}: val loss {val_loss:.4f}" + (" (best, saved best.pt)" if is_best else ""))
        self.logged()

    def close(self) -> None:
        self.writer.close()


class Window:
    """Train loss and throughput between two log lines (mean loss synced across ranks)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)  # stays on the device: no sync per step
        self.steps, self.seconds, self.started = 0, 0.0, time.perf_counter()

    def add(self, loss: Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    def pause(self) -> None:
        """Stop the clock (evaluation and checkpoints are not training time)."""
        self.seconds += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def snapshot(self, dist: Dist) -> tuple[float, int]:
        """(loss summed over the open window and all ranks, its steps): what a checkpoint keeps of it."""
        (loss_sum,) = all_reduce([self.loss_sum.item()], dist, self.loss_sum.device)
        return loss_sum, self.steps

    def restore(self, loss_sum: float, steps: int, dist: Dist) -> None:
        """Reopen a snapshot's window: rank 0 holds the ranks' summed losses, so close() still adds up."""
        self.loss_sum.fill_(loss_sum if dist.is_main else 0.0)
        self.steps = int(steps)

    def close(self, dist: Dist) -> tuple[float, int, float]:
        """(mean loss over the window and ranks, steps, seconds), and start a new window."""
        self.pause()
        (loss_sum,) = all_reduce([self.loss_sum.item()], dist, self.loss_sum.device)
        result = (loss_sum / (self.steps * dist.world_size), self.steps, self.seconds)
        self.loss_sum.zero_()
        self.steps, self.seconds = 0, 0.0
        self.resume()
        return result


def progress_metrics(state: RunState) -> dict:
    """The figures of metrics/train.json known at any step: written as the run goes (gothic.live) and
    at its end (run_metrics), under the same names, so dvc exp show keeps one column per figure."""
    train_rows = state.history["train"]

    def finite(x: float) -> float | None:
        return round(x, 6) if math.isfinite(x) else None

    return {
        "step": state.step,
        "train_loss": round(train_rows[-1]["train_loss"], 6) if train_rows else None,
        "last_val_loss": finite(state.val_loss),
        "best_val_loss": finite(state.best_val_loss),
        "best_step": state.best_step,
        "tokens_seen": state.tokens_seen,
    }


def run_metrics(state: RunState, model: torch.nn.Module) -> dict:
    """metrics/train.json at the end of a run: the progress figures, then speed and size."""
    return {
        **progress_metrics(state),
        "train_tokens_per_second": round(state.tokens_seen / state.train_time_s, 1) if state.train_time_s > 0 else None,
        "wall_time_s": round(state.wall_time_s, 2),
        "model_params": model.num_params(non_embedding=False),
        "model_params_non_embedding": model.num_params(),
    }


def write_curves(history: dict[str, list[dict]], plots_dir: str | Path) -> None:
    """The DVC plot files: train_loss.tsv, val_loss.tsv and learning_rate.tsv, one row per logged step."""
    plots_dir = Path(plots_dir)
    tables = {"train_loss.tsv": ("train", "train_loss"), "val_loss.tsv": ("val", "val_loss"),
              "learning_rate.tsv": ("train", "lr")}
    for file_name, (kind, column) in tables.items():
        lines = [f"step\t{column}"] + [f"{row['step']}\t{row[column]:.6g}" for row in history[kind]]
        write_text(plots_dir / file_name, "\n".join(lines) + "\n")
