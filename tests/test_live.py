"""Live metrics: the DVC metrics and plot files follow a run while it trains, and survive a resume exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from gothic.checkpoint import RunState
from gothic.live import LiveMetrics
from gothic.runlog import TrainHooks, write_curves
from gothic.train import train

from conftest import tiny_model_config, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tsv_steps(path: Path) -> list[int]:
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


def test_metrics_and_plots_are_written_while_training(train_bins, tiny_tokenizer_path, tmp_path):
    metrics, plots = tmp_path / "metrics" / "train.json", tmp_path / "metrics" / "train_plots"
    seen: dict[int, tuple] = {}

    def look(step: int) -> None:  # what `dvc exp show` / `dvc plots show` would read mid-run
        if step in (6, 10):
            seen[step] = (json.loads(metrics.read_text()), tsv_steps(plots / "train_loss.tsv"),
                          tsv_steps(plots / "val_loss.tsv"), tsv_steps(plots / "learning_rate.tsv"))

    train(tiny_model_config(), tiny_train_config(), train_bins, tiny_tokenizer_path, tmp_path / "models",
          hooks=TrainHooks(on_step=look, on_log=LiveMetrics(metrics, plots, min_interval_s=0)))
    live6, train6, val6, lr6 = seen[6]
    assert live6["step"] == 6 and live6["best_step"] == 4 and live6["last_val_loss"] is not None
    assert live6["current_lr"] > 0
    assert (train6, val6, lr6) == ([2, 4, 6], [4], [2, 4, 6])
    assert seen[10][1] == [2, 4, 6, 8, 10] and seen[10][2] == [4, 8]


def test_resumed_run_rewrites_the_files_without_the_abandoned_tail(train_bins, tiny_tokenizer_path, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_model_config(), tiny_train_config(), train_bins, tiny_tokenizer_path, straight)
    plots = tmp_path / "plots"
    live = LiveMetrics(tmp_path / "train.json", plots, min_interval_s=0)

    def interrupt(step: int) -> None:
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # finishes the step, saves latest.pt, stops

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model_config(), tiny_train_config(), train_bins, tiny_tokenizer_path, stopped,
              hooks=TrainHooks(on_step=interrupt, on_log=live))
    assert tsv_steps(plots / "train_loss.tsv") == [2, 4, 6]
    # as after a crash past the checkpoint: the files hold rows (made up here) that latest.pt does not
    write_curves({"train": [{"step": s, "train_loss": 9.0, "lr": 1.0} for s in range(2, 12, 2)],
                  "val": [{"step": 8, "val_loss": 9.0}]}, plots)
    resumed = train(tiny_model_config(), tiny_train_config(resume=True), train_bins, tiny_tokenizer_path, stopped,
                    hooks=TrainHooks(on_log=LiveMetrics(tmp_path / "train.json", plots, min_interval_s=0)))
    assert tsv_steps(plots / "train_loss.tsv") == [2, 4, 6, 8, 10, 12]
    assert tsv_steps(plots / "val_loss.tsv") == [4, 8, 12]
    assert json.loads((tmp_path / "train.json").read_text())["step"] == 12
    final = {p: torch.load(d / "final.pt", weights_only=True)["model"] for p, d in (("a", straight), ("b", stopped))}
    assert all(torch.equal(final["a"][k], final["b"][k]) for k in final["a"]), "the hook must not change training"
    assert [r["step"] for r in resumed.history["val"]] == [4, 8, 12]


def test_train_rows_are_throttled_but_val_rows_always_written(tmp_path):
    now = [0.0]
    live = LiveMetrics(tmp_path / "m.json", tmp_path / "plots", min_interval_s=5.0, clock=lambda: now[0])
    state = RunState(step=2, history={"train": [{"step": 2, "train_loss": 3.0, "lr": 0.1}], "val": []})
    live(state)
    state.history["train"].append({"step": 4, "train_loss": 2.5, "lr": 0.1})
    state.step = 4
    now[0] = 1.0
    live(state)  # too soon: skipped
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 2
    state.history["val"].append({"step": 4, "val_loss": 2.7})
    state.val_loss = state.best_val_loss = 2.7
    live(state)  # a new val row: written at once
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["step"] == 4 and written["last_val_loss"] == 2.7
    now[0] = 7.0
    state.history["train"].append({"step": 6, "train_loss": 2.0, "lr": 0.1})
    live(state)
    assert tsv_steps(tmp_path / "plots" / "train_loss.tsv") == [2, 4, 6]
