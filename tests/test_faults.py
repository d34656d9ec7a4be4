"""Fault suite: `gothic-train` killed with SIGKILL at random moments and inside every kind of
checkpoint write (the final one included), then run again with the same command. The run must
come back and end with the weights, optimizer state and logged losses of a run that was never
killed, bit for bit."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_model_config, tiny_train_config, venv_env

pytestmark = pytest.mark.subprocess  # trainings in their own processes, killed and resumed

# Runs gothic-train in a process that SIGKILLs itself at the N-th os.replace onto TARGET, either
# just before it (the temporary file is complete, the rename not done) or just after it (the file is
# in place, what follows it is not). atomic_path renames every checkpoint and every copy of one.
KILLING_TRAIN = """
import os, signal, sys
target, when, nth = os.environ["KILL_TARGET"], os.environ["KILL_WHEN"], int(os.environ["KILL_NTH"])
real_replace, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    hit = os.path.basename(dst) == target and (seen.__setitem__(0, seen[0] + 1) or seen[0] == nth)
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from gothic.cli import train_main
train_main(sys.argv[1:])
"""

MAX_ITERS = 12


def train_args(params: Path, bins: Path, tokenizer: Path, out_dir: Path) -> list[str]:
    return ["--params", str(params), "--data-dir", str(bins), "--train-file", "train.bin", "--val-file", "val.bin",
            "--tokenizer", str(tokenizer), "--out-dir", str(out_dir)]


TRAIN = "from gothic.cli import train_main; import sys; train_main(sys.argv[1:])"
ENV = {"OMP_NUM_THREADS": "1"}  # bitwise resume holds at the same thread count


def prepare(bins: Path, tokenizer: Path, folder: Path, straight: bool = True, **train_overrides) -> Path:
    """A params file (dropout on: the RNG state matters too) and, in folder/straight, the run never killed."""
    import yaml

    from gothic.config import to_dict
    from gothic.train import train

    model, cfg = tiny_model_config(dropout=0.1), tiny_train_config(**train_overrides)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({"model": to_dict(model), "train": to_dict(cfg)}), encoding="utf-8")
    if not straight:
        return params
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model, cfg, bins, tokenizer, folder / "straight")
    finally:
        torch.set_num_threads(threads)
    return params


def start(script: str, args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], env={**venv_env(), **ENV, **(env_extra or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(args: list[str]) -> None:
    """The same command again, as a user runs it after the crash: it must complete the run."""
    done = subprocess.run([sys.executable, "-c", TRAIN, *args], env={**venv_env(), **ENV}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def assert_same_as_uninterrupted(out_dir: Path, straight: Path) -> None:
    for name in ("final.pt", "best.pt"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(out_dir / name, weights_only=True)
        assert a["step"] == b["step"] and a["best_val_loss"] == b["best_val_loss"], name
        for key, tensor in a["model"].items():
            assert tensor.equal(b["model"][key]), f"{name}: {key}"
    # the optimizer state lives in latest.pt only (best.pt and final.pt leave it out)
    a, b = (torch.load(d / "latest.pt", weights_only=True) for d in (straight, out_dir))
    assert a["step"] == b["step"]
    for group_a, group_b in zip(a["optimizer"], b["optimizer"], strict=True):
        for key, state in group_a["state"].items():
            assert all(state[k].equal(group_b["state"][key][k]) for k in state if torch.is_tensor(state[k]))
    assert [r["train_loss"] for r in a["history"]["train"]] == [r["train_loss"] for r in b["history"]["train"]]
    assert [r["val_loss"] for r in a["history"]["val"]] == [r["val_loss"] for r in b["history"]["val"]]
    assert not list(out_dir.glob(".*.tmp")), "a killed write left its temporary file behind"


@pytest.fixture(scope="module")
def short_run(train_bins, tiny_tokenizer_path, tmp_path_factory) -> tuple[list[str], Path]:
    folder = tmp_path_factory.mktemp("faults_short")
    params = prepare(train_bins, tiny_tokenizer_path, folder, max_iters=12, eval_interval=3)
    return train_args(params, train_bins, tiny_tokenizer_path, folder / "killed"), folder


# Checkpoint writes of a 12-step run that evaluates every 3 steps: latest.pt is written four times
# (the fourth is the final one), best.pt when validation improves, final.pt once at the end, each
# through a temporary file and a rename. A kill before the rename loses that write; one after it
# leaves what should follow undone (after the final latest.pt: the best.pt and final.pt copies).
WRITES = [("latest.pt", 1, "before"), ("latest.pt", 2, "after"), ("latest.pt", 4, "before"),
          ("latest.pt", 4, "after"), ("best.pt", 2, "before"), ("final.pt", 1, "before"), ("final.pt", 1, "after")]


@pytest.mark.parametrize("target, nth, when", WRITES, ids=[f"{t}#{n}-{w}" for t, n, w in WRITES])
def test_kill_inside_a_checkpoint_write_then_the_same_command_finishes_the_same_run(short_run, target, nth, when):
    args, folder = short_run
    out_dir = folder / f"{target}-{nth}-{when}"
    args = args[:-1] + [str(out_dir)]
    killed = start(KILLING_TRAIN, args, {"KILL_TARGET": target, "KILL_WHEN": when, "KILL_NTH": str(nth)})
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, "the kill point was never reached"
    finish(args)
    assert_same_as_uninterrupted(out_dir, folder / "straight")


def test_kill_at_random_moments_then_the_same_command_finishes_the_same_run(train_bins, tiny_tokenizer_path,
                                                                            tmp_path):
    """Five SIGKILLs of one 150-step run at random moments (seeded) once training is under way, each
    followed by the same command; the sixth start completes it."""
    params = prepare(train_bins, tiny_tokenizer_path, tmp_path, max_iters=150, eval_interval=10, log_interval=5)
    args = train_args(params, train_bins, tiny_tokenizer_path, tmp_path / "killed")
    rng, steps_at_kill = random.Random(1234), []
    for _ in range(5):
        proc = start(TRAIN, args)
        for line in proc.stdout:  # the startup line: torch is imported, the run is about to step
            if line.startswith("train:") and "to step 150" in line:
                break
        time.sleep(rng.uniform(0.0, 0.6))
        proc.kill()
        proc.communicate(timeout=300)
        latest = tmp_path / "killed" / "latest.pt"
        steps_at_kill.append(torch.load(latest, weights_only=True)["step"] if latest.is_file() else 0)
    finish(args)
    assert_same_as_uninterrupted(tmp_path / "killed", tmp_path / "straight")
    print(f"latest.pt after each kill: steps {steps_at_kill}")


def test_a_second_training_in_the_same_folder_stops_at_once_with_one_line(tmp_path, train_bins, tiny_tokenizer_path):
    params = prepare(train_bins, tiny_tokenizer_path, tmp_path, straight=False, max_iters=100000, eval_interval=50)
    args = train_args(params, train_bins, tiny_tokenizer_path, tmp_path / "shared")
    first = start(TRAIN, args)
    try:
        for line in first.stdout:
            if line.startswith("train:") and "from scratch" in line:
                break
        second = subprocess.run([sys.executable, "-c", TRAIN, *args], env={**venv_env(), **ENV},
                                capture_output=True, text=True, timeout=120)
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.count("\n") == 1
    assert f"shared is in use by another training run (pid {first.pid})" in second.stderr
