"""The training loop: schedule, accumulation, learning, exact resume, best.pt, bad input, CLI, stage, DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch
import yaml

from gothic.checkpoint import load_checkpoint
from gothic.cli import train_main
from gothic.config import TrainConfig, to_dict
from gothic.data import load_training_data
from gothic.errors import GothicError
from gothic.files import sha256_file
from gothic.loading import load_model
from gothic.model import GPT
from gothic.optim import get_lr, orthogonalize, orthogonalize_all
from gothic.runlog import TrainHooks
from gothic.runtime import SINGLE_PROCESS, Precision
from gothic.train import build_run, estimate_loss, resume_run, split_passes, train, train_step

from conftest import ROOT, tiny_model_config, tiny_train_config, venv_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_training(bins: Path, tokenizer: Path, out_dir: Path, model_overrides: dict | None = None, **train_overrides):
    return train(tiny_model_config(**(model_overrides or {})), tiny_train_config(**train_overrides), bins, tokenizer,
                 out_dir)


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- schedule and one step ----------------------------------------------------------------------

SCHEDULE = TrainConfig(learning_rate=1.0e-3, min_lr=1.0e-4, warmup_iters=10, max_iters=110)


@pytest.mark.parametrize("step, expected", [
    (0, 1.0e-4),      # warmup starts above zero: step 0 already learns
    (4, 5.0e-4),
    (9, 1.0e-3),      # peak at the last warmup step
    (10, 1.0e-3),     # cosine starts at the peak
    (60, 5.5e-4),     # half-way: the mean of peak and floor
    (110, 1.0e-4),    # lands on min_lr
    (500, 1.0e-4),    # and stays there
])
def test_get_lr_warmup_then_cosine(step, expected):
    assert SCHEDULE.learning_rate * get_lr(step, SCHEDULE) == pytest.approx(expected)  # a multiplier of the peak


def test_get_lr_decays_monotonically_after_warmup():
    lrs = [get_lr(s, SCHEDULE) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_get_lr_without_warmup_starts_at_peak():
    cfg = TrainConfig(learning_rate=1.0e-3, min_lr=0.0, warmup_iters=0, max_iters=10)
    assert get_lr(0, cfg) == 1.0


WSD = dataclasses.replace(SCHEDULE, schedule="wsd", decay_frac=0.2)  # decays over steps 88 to 110


@pytest.mark.parametrize("step, expected", [
    (0, 1.0e-4),      # the same warmup as the cosine
    (9, 1.0e-3),
    (10, 1.0e-3),     # then stable at the peak
    (87, 1.0e-3),
    (88, 1.0e-3),     # the decay starts at the last 20% of max_iters (110 - 22)
    (99, 5.5e-4),     # half-way down: a straight line
    (110, 1.0e-4),    # lands on min_lr
    (500, 1.0e-4),
])
def test_get_lr_wsd_holds_the_peak_then_decays_linearly(step, expected):
    assert WSD.learning_rate * get_lr(step, WSD) == pytest.approx(expected)


def test_get_lr_wsd_continued_to_a_longer_run_holds_then_decays_over_the_new_end():
    """Stopped during the stable phase (step 50 of 110) and continued to 220: still at the peak until the
    new decay start (220 - 44), then down to min_lr; stopped mid-decay (step 99): the rate it reached is
    held until then instead (never a jump up, and the cool-down still comes last)."""
    longer = dataclasses.replace(WSD, max_iters=220)
    assert longer.learning_rate * get_lr(175, longer, (50, 1.0e-3)) == pytest.approx(1.0e-3)
    assert longer.learning_rate * get_lr(198, longer, (50, 1.0e-3)) == pytest.approx(5.5e-4)
    mid = [longer.learning_rate * get_lr(s, longer, (99, 5.5e-4)) for s in range(99, 221)]
    assert mid[0] == mid[176 - 99] == pytest.approx(5.5e-4) and mid[-1] == pytest.approx(1.0e-4)
    assert all(a > b for a, b in zip(mid[176 - 99:-1], mid[176 - 99 + 1:-1], strict=False))


def test_get_lr_wsd_without_decay_stays_at_the_peak():
    cfg = dataclasses.replace(WSD, decay_frac=0.0)
    assert get_lr(109, cfg) == 1.0 and get_lr(110, cfg) == pytest.approx(0.1)


def test_grad_accumulation_equals_one_batch_of_k_times_b():
    """2 micro-batches of 4 sequences move the weights like 1 batch of 8 (plain SGD, so the
    update is the gradient itself)."""
    torch.manual_seed(0)
    x, y = torch.randint(0, 50, (2, 8, 16))
    models = []
    for micro in ([(x[:4], y[:4]), (x[4:], y[4:])], [(x, y)]):
        torch.manual_seed(1)
        model = GPT(tiny_model_config(), 50)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        train_step(model, micro, [opt], Precision(torch.float32, "cpu", None), grad_clip=0.0)
        models.append(model)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_micro_batch_cuts_the_step_into_passes_with_the_same_sequences():
    torch.manual_seed(0)
    batches = [tuple(torch.randint(0, 50, (4, 8)) for _ in range(2)) for _ in range(2)]
    assert split_passes(batches, 0) is batches and split_passes(batches, 4) is batches  # as drawn
    passes = split_passes(batches, 8)
    assert len(passes) == 1 and passes[0][0].equal(torch.cat([batches[0][0], batches[1][0]]))
    passes = split_passes(batches, 2)
    assert [p[0].shape for p in passes] == [(2, 8)] * 4 and passes[3][1].equal(batches[1][1][2:])


@pytest.mark.parametrize("micro_batch", [2, 8])
def test_micro_batch_trains_the_same_run_to_rounding_and_may_change_on_resume(train_bins, tiny_tokenizer_path,
                                                                              tmp_path, micro_batch):
    """Passes of another size see the same sequences: the weights agree to float rounding, and a
    run stopped at one micro_batch continues at another (train.micro_batch is not in the run key)."""
    as_drawn = run_training(train_bins, tiny_tokenizer_path, tmp_path / "a", max_iters=6)
    assert run_training(train_bins, tiny_tokenizer_path, tmp_path / "same", max_iters=6, micro_batch=4).metrics \
        == as_drawn.metrics | {"wall_time_s": ANY, "train_tokens_per_second": ANY}
    assert_bitwise_equal(weights(tmp_path / "same" / "final.pt"), weights(tmp_path / "a" / "final.pt"))
    run_training(train_bins, tiny_tokenizer_path, tmp_path / "b", max_iters=6, micro_batch=micro_batch)
    a, b = weights(tmp_path / "a" / "final.pt"), weights(tmp_path / "b" / "final.pt")
    assert any(not a[key].equal(b[key]) for key in a)  # other passes really ran: other rounding
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=key)
    continued = run_training(train_bins, tiny_tokenizer_path, tmp_path / "b", max_iters=8, micro_batch=4, resume=True)
    assert continued.metrics["step"] == 8


def test_micro_batch_must_divide_the_step_batch():
    errors = TrainConfig(batch_size=16, grad_accum=4, micro_batch=24).check()
    assert errors == ["train.micro_batch=24 must divide train.batch_size x train.grad_accum = 64 "
                      "(or be 0, one pass per batch_size sequences)"]
    assert TrainConfig(batch_size=16, grad_accum=4, micro_batch=64).check() == []


# --- learning, checkpoints, resume --------------------------------------------------------------

def test_loss_falls_on_a_tiny_corpus(train_bins, tiny_tokenizer_path, tmp_path):
    result = run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=30, eval_interval=10)
    rows = result.history["train"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 1.5
    assert result.metrics["best_val_loss"] < math.log(300) - 1.5
    m = result.metrics
    assert m["step"] == 30 and m["tokens_seen"] == 30 * 4 * 2 * 32
    assert m["model_params"] > m["model_params_non_embedding"] > 0 and m["train_tokens_per_second"] > 0
    assert {p.name for p in tmp_path.iterdir()} >= {"best.pt", "latest.pt", "final.pt", "logs"}


def test_tensorboard_gets_loss_perplexity_lr_and_throughput(train_bins, tiny_tokenizer_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss/train", "loss/val", "perplexity/train", "perplexity/val",
                                             "learning_rate", "tokens_per_s"}
    assert [e.step for e in events.Scalars("loss/train")] == [2, 4]


class Killed(Exception):
    """Stands in for `kill -9`: the process dies between two steps, without saving."""


def interrupt_by_signal(at_step: int):
    def on_step(step: int) -> None:
        if step == at_step:
            os.kill(os.getpid(), signal.SIGINT)  # the handler lets the step finish and saves latest.pt
    return on_step


def kill_after_checkpoint(at_step: int, out_dir: Path, keep: Path):
    """Keep latest.pt as the last eval left it, then die a step later (before the next eval)."""
    def on_step(step: int) -> None:
        if step == at_step:
            keep.write_bytes((out_dir / "latest.pt").read_bytes())
            raise Killed
    return on_step


@pytest.mark.parametrize("how", ["ctrl_c", "kill"])
def test_stopped_then_resumed_equals_uninterrupted_bitwise(train_bins, tiny_tokenizer_path, tmp_path, how):
    """Dropout on, so the restored RNG state matters as much as weights, optimizer and data position."""
    model = tiny_model_config(dropout=0.1)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    uninterrupted = train(model, tiny_train_config(), train_bins, tiny_tokenizer_path, straight)
    if how == "ctrl_c":
        with pytest.raises(KeyboardInterrupt):
            train(model, tiny_train_config(), train_bins, tiny_tokenizer_path, stopped,
                  hooks=TrainHooks(on_step=interrupt_by_signal(7)))
        assert load_checkpoint(stopped / "latest.pt")["step"] == 7
    else:
        keep = tmp_path / "at_eval.pt"
        with pytest.raises(Killed):
            train(model, tiny_train_config(), train_bins, tiny_tokenizer_path, stopped,
                  hooks=TrainHooks(on_step=kill_after_checkpoint(5, stopped, keep)))
        (stopped / "latest.pt").write_bytes(keep.read_bytes())
        assert load_checkpoint(stopped / "latest.pt")["step"] == 4
    resumed = train(model, tiny_train_config(), train_bins, tiny_tokenizer_path, stopped)  # resume: auto
    assert_bitwise_equal(weights(straight / "final.pt"), weights(stopped / "final.pt"))
    a, b = (load_checkpoint(d / "final.pt") for d in (straight, stopped))
    assert a["best_val_loss"] == b["best_val_loss"] and a["tokens_seen"] == b["tokens_seen"]
    a, b = (load_checkpoint(d / "latest.pt") for d in (straight, stopped))  # final.pt holds no optimizer state
    assert a["optimizer"][0]["state"][0]["exp_avg_sq"].equal(b["optimizer"][0]["state"][0]["exp_avg_sq"])
    assert [r["step"] for r in resumed.history["train"]] == [2, 4, 6, 8, 10, 12]
    # the log line that straddles the stop (steps 7 and 8) reports the same mean as without the stop
    assert [r["train_loss"] for r in resumed.history["train"]] == \
        [r["train_loss"] for r in uninterrupted.history["train"]]


@pytest.mark.parametrize("toolbox", [{"ema": 0.9}, {"sampling": "epochs"}, {"schedule": "wsd", "decay_frac": 0.5},
                                     {"ema": 0.9, "sampling": "epochs", "schedule": "wsd"}],
                         ids=["ema", "epochs", "wsd", "all"])
def test_stopped_then_resumed_equals_uninterrupted_with_the_data_limited_toolbox(train_bins, tiny_tokenizer_path,
                                                                                 tmp_path, toolbox):
    """The weight average and the epoch sampler's position travel in latest.pt: a stopped run ends bit for
    bit where an uninterrupted one does, raw weights and average both."""
    model, cfg = tiny_model_config(dropout=0.1), tiny_train_config(**toolbox)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(model, cfg, train_bins, tiny_tokenizer_path, straight)
    with pytest.raises(KeyboardInterrupt):
        train(model, cfg, train_bins, tiny_tokenizer_path, stopped, hooks=TrainHooks(on_step=interrupt_by_signal(7)))
    stopped_state = load_checkpoint(stopped / "latest.pt")
    assert stopped_state["step"] == 7
    if "sampling" in toolbox:  # 7 steps x 2 batches x 4 windows of 32 from train_bins' windows
        windows = load_training_data(train_bins, tiny_tokenizer_path, 32).train.size // 32
        assert divmod(7 * 2 * 4, windows) == (stopped_state["sampler"]["epoch"],
                                              stopped_state["sampler"]["epoch_windows_done"])
    train(model, cfg, train_bins, tiny_tokenizer_path, stopped)
    for name in ("final.pt", "best.pt", "latest.pt"):
        assert_bitwise_equal(weights(straight / name), weights(stopped / name))
    a, b = (load_checkpoint(d / "latest.pt") for d in (straight, stopped))
    assert a["best_val_loss"] == b["best_val_loss"]
    if "ema" in toolbox:
        for key, weight in a["ema"]["weights"].items():
            assert weight.equal(b["ema"]["weights"][key]), key


def test_ema_weights_are_what_the_run_evaluates_and_publishes(train_bins, tiny_tokenizer_path, tmp_path):
    """best.pt and final.pt hold the average (tied embeddings kept one tensor), latest.pt the raw weights
    beside it; the logged val loss is the average's, and best.pt loads like any model."""
    result = run_training(train_bins, tiny_tokenizer_path, tmp_path, ema=0.9, max_iters=8)
    latest, final = load_checkpoint(tmp_path / "latest.pt"), load_checkpoint(tmp_path / "final.pt")
    assert "ema" not in final and latest["ema"]["updates"] == 8
    average = latest["ema"]["weights"]
    for key, weight in average.items():
        assert final["model"][key].equal(weight), key
    moved = [k for k in average if not latest["model"][k].equal(average[k])]
    assert moved, "the average equals the raw weights: weak test"
    assert final["model"]["lm_head.weight"].data_ptr() == final["model"]["wte.weight"].data_ptr()
    model, _ = load_model(tmp_path / "final.pt")
    data, cfg = load_training_data(train_bins, tiny_tokenizer_path, 32), tiny_train_config()
    assert estimate_loss(model, data.val, cfg.batch_size, cfg.eval_iters, cfg.seed,
                         Precision(torch.float32, "cpu", None)) == pytest.approx(result.history["val"][-1]["val_loss"],
                                                                                  abs=1e-9)


def test_an_ema_model_exports_like_any_other(train_bins, tiny_tokenizer_path, tmp_path):
    """final.pt of a run with train.ema is a plain checkpoint: the transformers export matches its logits."""
    from gothic.export import TOLERANCE, export_checkpoint, max_logit_diff

    run_training(train_bins, tiny_tokenizer_path, tmp_path, ema=0.9, max_iters=4)
    result = export_checkpoint(tmp_path / "final.pt", tmp_path / "export")
    assert result.max_logit_diff is not None and result.max_logit_diff <= TOLERANCE
    model, _ = load_model(tmp_path / "final.pt")
    assert max_logit_diff(model, tmp_path / "export") <= TOLERANCE


def test_resuming_with_ema_from_a_run_without_it_is_an_error(train_bins, tiny_tokenizer_path, tmp_path):
    """train() never gets here (train.ema is part of the run key); a hand-made or damaged latest.pt might."""
    run_training(train_bins, tiny_tokenizer_path, tmp_path / "plain", max_iters=4)
    data = load_training_data(train_bins, tiny_tokenizer_path, 32)
    run = build_run(tiny_model_config(), tiny_train_config(ema=0.9), data, tmp_path / "plain", SINGLE_PROCESS,
                    torch.device("cpu"))
    with pytest.raises(GothicError, match="no weight average"):
        resume_run(run, tmp_path / "plain" / "latest.pt")


def test_resume_continues_to_a_larger_max_iters(train_bins, tiny_tokenizer_path, tmp_path):
    run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=8)
    result = run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=12, resume=True)
    assert result.metrics["step"] == 12 and result.metrics["tokens_seen"] == 12 * 4 * 2 * 32
    assert [r["step"] for r in result.history["val"]] == [4, 8, 12]
    assert load_checkpoint(tmp_path / "final.pt")["step"] == 12


@pytest.mark.parametrize("stop_at", [5, 8], ids=["mid-decay", "finished"])
def test_continuing_to_a_larger_max_iters_has_no_learning_rate_jump(train_bins, tiny_tokenizer_path, tmp_path,
                                                                    stop_at):
    """A run stopped at step 5 of 8 (or finished), then continued to 16: the rate goes on from where
    it was and falls to min_lr, never rising again (a re-stretched cosine would jump up)."""
    cfg = tiny_train_config(max_iters=8, log_interval=1)
    if stop_at < 8:
        with pytest.raises(KeyboardInterrupt):
            train(tiny_model_config(), cfg, train_bins, tiny_tokenizer_path, tmp_path,
                  hooks=TrainHooks(on_step=interrupt_by_signal(stop_at)))
    else:
        train(tiny_model_config(), cfg, train_bins, tiny_tokenizer_path, tmp_path)
    result = run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=16, log_interval=1, resume=True)
    lrs = [row["lr"] for row in result.history["train"]]
    assert len(lrs) == 16
    first_session = [cfg.learning_rate * get_lr(s, cfg) for s in range(stop_at)]
    assert lrs[:stop_at] == pytest.approx(first_session)
    after_warmup = lrs[cfg.warmup_iters:]
    assert all(b <= a + 1e-12 for a, b in zip(after_warmup, after_warmup[1:], strict=False)), lrs
    step_change = max(abs(b - a) for a, b in zip(lrs[stop_at - 1:], lrs[stop_at:], strict=False))
    assert step_change < 0.25 * cfg.learning_rate
    assert cfg.min_lr <= lrs[-1] < cfg.min_lr + 0.05 * (cfg.learning_rate - cfg.min_lr)  # decays to min_lr


def test_best_pt_really_holds_the_lowest_val_loss(train_bins, tiny_tokenizer_path, tmp_path):
    # a reckless learning rate makes val loss go up and down
    result = run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=16, eval_interval=1,
                          learning_rate=0.08, min_lr=0.08, warmup_iters=0)
    val = [(row["val_loss"], row["step"]) for row in result.history["val"]]
    lowest, at_step = min(val)
    assert any(b > a for (a, _), (b, _) in zip(val, val[1:], strict=False)), "val loss never rose: weak test"
    best = load_checkpoint(tmp_path / "best.pt")
    assert (best["best_val_loss"], best["step"]) == (lowest, at_step)
    model, _ = load_model(tmp_path / "best.pt")
    data = load_training_data(train_bins, tiny_tokenizer_path, 32)
    cfg = tiny_train_config()
    assert estimate_loss(model, data.val, cfg.batch_size, cfg.eval_iters, cfg.seed,
                         Precision(torch.float32, "cpu", None)) == pytest.approx(lowest, abs=1e-9)


@pytest.mark.parametrize("switches", [
    {"model": {"pos_embedding": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "swiglu", "tie_embeddings": False,
               "bias": False}, "train": {"optimizer": "muon"}},
    {"model": {"mlp": "relu2"}, "train": {"optimizer": "muon", "dtype": "bfloat16"}},
    {"model": {}, "train": {"dtype": "bfloat16"}},
    {"model": {}, "train": {"dtype": "float16"}},  # GradScaler path
])
def test_modern_switches_and_precisions_train_and_reload(train_bins, tiny_tokenizer_path, tmp_path, switches):
    result = run_training(train_bins, tiny_tokenizer_path, tmp_path, switches["model"], max_iters=6,
                          **switches["train"])
    rows = result.history["train"]
    assert all(math.isfinite(r["train_loss"]) for r in rows) and rows[-1]["train_loss"] < rows[0]["train_loss"]
    model, ckpt = load_model(tmp_path / "final.pt")
    assert ckpt.model_config == to_dict(tiny_model_config(**switches["model"]))
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 8, dtype=torch.long))[0]).all()


def test_muon_moves_hidden_matrices_with_orthogonal_steps(train_bins, tiny_tokenizer_path, tmp_path):
    run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=2, optimizer="muon")
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    adamw_state, muon_state = ckpt["optimizer"]
    assert muon_state["param_groups"][0]["base_lr"] == tiny_train_config().muon_lr
    n_hidden = 4 * tiny_model_config().n_layer  # qkv, attention proj, fc, mlp proj per block
    assert len(muon_state["state"]) == n_hidden
    assert all("momentum_buffer" in s for s in muon_state["state"].values())
    assert all("exp_avg" in s for s in adamw_state["state"].values())


# --- bad input: one clear error, nothing lost -----------------------------------------------------

def test_batched_newton_schulz_orthogonalises_each_matrix_as_alone():
    """CUDA's path stacks same-shaped updates; each comes out as orthogonalize gives it alone, in order."""
    torch.manual_seed(0)
    updates = [torch.randn(shape) for shape in [(96, 32), (32, 32), (96, 32), (32, 128), (32, 32)]]
    alone = orthogonalize_all(updates, batched=False)
    assert all(a.equal(orthogonalize(u)) for a, u in zip(alone, updates, strict=True))
    for a, b in zip(alone, orthogonalize_all(updates, batched=True), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    singular = torch.linalg.svdvals(alone[0])
    assert singular.min() > 0.5 and singular.max() < 1.5  # Newton-Schulz's band around 1


def test_missing_bins_are_an_error(tiny_tokenizer_path, tmp_path):
    with pytest.raises(GothicError, match="meta.json: not found"):
        run_training(tmp_path / "no_bins", tiny_tokenizer_path, tmp_path / "models")


def test_bins_from_another_tokenizer_are_an_error(train_bins, tiny_tokenizer_path, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(tiny_tokenizer_path.read_text(encoding="utf-8").replace("<|endoftext|>", "<|eot|>", 1),
                     encoding="utf-8")
    with pytest.raises(GothicError, match="another tokenizer"):
        run_training(train_bins, other, tmp_path / "models")


def test_block_size_larger_than_a_split_is_an_error(train_bins, tiny_tokenizer_path, tmp_path):
    val_tokens = json.loads((train_bins / "meta.json").read_text())["splits"]["val"]["tokens"]
    with pytest.raises(GothicError, match=f"{val_tokens} tokens cannot fill one window of model.block_size"):
        run_training(train_bins, tiny_tokenizer_path, tmp_path, {"block_size": val_tokens})


def test_resume_without_checkpoint_is_an_error_that_says_how(train_bins, tiny_tokenizer_path, tmp_path):
    with pytest.raises(GothicError, match="no checkpoint to continue .*latest.pt does not exist.*train.resume: auto"):
        run_training(train_bins, tiny_tokenizer_path, tmp_path, resume=True)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated or not a checkpoint"),
    ("weights_only", "holds no training state"),
])
def test_bad_resume_is_an_error_and_keeps_the_checkpoint(train_bins, tiny_tokenizer_path, tmp_path, damage, message):
    run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    latest = tmp_path / "latest.pt"
    if damage == "truncate":
        latest.write_bytes(latest.read_bytes()[:5000])
    elif damage == "weights_only":  # what generation tests write: enough to sample, not to resume
        ckpt = torch.load(latest, weights_only=True)
        keep = ("format_version", "model", "model_config", "vocab_size", "tokenizer_sha256", "step", "best_val_loss")
        torch.save({key: ckpt[key] for key in keep}, latest)
    before = sha256_file(latest)
    with pytest.raises(GothicError, match=message):
        run_training(train_bins, tiny_tokenizer_path, tmp_path, max_iters=8, resume=True)
    assert sha256_file(latest) == before


def test_unwritable_models_folder_fails_before_training(train_bins, tiny_tokenizer_path, tmp_path, monkeypatch):
    out = tmp_path / "models"
    out.mkdir()
    if os.geteuid() != 0:  # root writes anyway; then simulate the refusal
        out.chmod(0o500)
    else:
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        with pytest.raises(GothicError, match="cannot write checkpoints to .*models: Permission denied"):
            run_training(train_bins, tiny_tokenizer_path, out)
    finally:
        out.chmod(0o700)


def test_out_of_memory_names_the_knobs(train_bins, tiny_tokenizer_path, tmp_path, monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(GPT, "forward", no_memory)
    with pytest.raises(GothicError, match=r"out of memory .* smaller train.micro_batch .* lower train.batch_size "
                                          r".*train.grad_accum.*block_size"):
        run_training(train_bins, tiny_tokenizer_path, tmp_path)


# --- CLI and stage --------------------------------------------------------------------------------

SEED_FLAGS = ["--data-dir", "--train-file", "--val-file", "--tokenizer", "--out-dir", "--max-iters", "--batch-size",
              "--grad-accum", "--lr", "--resume", "--compile", "--no-compile", "--params", "--set"]


def test_cli_help_lists_the_seed_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert exit_info.value.code == 0
    assert all(flag in out for flag in SEED_FLAGS)
    assert "built-in 10000" in out and "default: data/processed" in out and "default: checkpoints" in out


def write_params(path: Path, **train_overrides) -> Path:
    params = {"model": to_dict(tiny_model_config()), "train": to_dict(tiny_train_config(**train_overrides))}
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_cli_trains_with_seed_flags_then_resumes(train_bins, tiny_tokenizer_path, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml")
    common = ["--params", str(params), "--data-dir", str(train_bins), "--train-file", "train.bin", "--val-file",
              "val.bin", "--tokenizer", str(tiny_tokenizer_path),
              "--out-dir", str(tmp_path / "out"), "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-05",
              "--no-compile", "--set", "train.eval_interval=3", "--set", "train.min_lr=0.0"]
    with pytest.raises(SystemExit) as exit_info:
        train_main(common + ["--max-iters", "3", "--metrics", str(tmp_path / "m.json")])
    assert exit_info.value.code == 0
    ckpt = load_checkpoint(tmp_path / "out" / "final.pt")
    cfg = ckpt["train_config"]
    assert (cfg["batch_size"], cfg["grad_accum"], cfg["learning_rate"], cfg["compile"]) == (2, 1, 1e-5, False)
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 3
    with pytest.raises(SystemExit) as exit_info:
        train_main(common + ["--max-iters", "6", "--resume"])
    assert exit_info.value.code == 0
    assert load_checkpoint(tmp_path / "out" / "final.pt")["step"] == 6
    assert "resuming at step 3" in capsys.readouterr().out


def test_cli_error_is_one_line_exit_2(tiny_tokenizer_path, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--params", str(params), "--data-dir", str(tmp_path / "nothing"), "--tokenizer",
                    str(tiny_tokenizer_path), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("gothic-train: error:") and "train.txt: not found" in err


def test_stage_writes_metrics_and_plot_files(train_bins, tiny_tokenizer_path, tmp_path, monkeypatch):
    write_params(tmp_path / "params.yaml", max_iters=4)
    monkeypatch.chdir(tmp_path)
    stage = runpy.run_path(str(ROOT / "stages" / "train.py"))
    stage["main"](str(train_bins), str(tiny_tokenizer_path), "checkpoints", "models", "metrics/train.json",
                  "metrics/train_plots")
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert {"train_loss", "best_val_loss", "best_step", "tokens_seen", "train_tokens_per_second", "wall_time_s",
            "model_params", "model_params_non_embedding"} <= metrics.keys()
    plots = tmp_path / "metrics" / "train_plots"
    assert (plots / "train_loss.tsv").read_text().splitlines()[0] == "step\ttrain_loss"
    assert [line.split("\t")[0] for line in (plots / "learning_rate.tsv").read_text().splitlines()] == \
        ["step", "2", "4"]
    assert len((plots / "val_loss.tsv").read_text().splitlines()) == 2  # header + step 4
    assert (tmp_path / "models" / "final.pt").is_file()



def test_stage_publishes_nothing_when_params_yaml_changed_while_it_trained(train_bins, tiny_tokenizer_path,
                                                                            tmp_path, monkeypatch):
    """`dvc exp apply` (or a second `dvc exp run -S`) rewrote params.yaml mid-run: DVC would record these
    weights under params they were not trained with, so the stage publishes nothing and says how to
    recover; with the params restored, the same command publishes the complete run without training."""
    write_params(tmp_path / "params.yaml", max_iters=4)
    monkeypatch.chdir(tmp_path)
    stage = runpy.run_path(str(ROOT / "stages" / "train.py"))
    loop = stage["train"].__globals__  # the gothic.train the stage calls (a test may have re-imported it)
    session = loop["train_session"]

    def apply_another_experiment(run, hooks):
        write_params(tmp_path / "params.yaml", max_iters=4, seed=3)
        session(run, hooks)
    monkeypatch.setitem(loop, "train_session", apply_another_experiment)
    args = (str(train_bins), str(tiny_tokenizer_path), "checkpoints", "models", "metrics/train.json",
            "metrics/train_plots")
    with pytest.raises(GothicError, match=r"params.yaml changed while this run trained \(train.seed 7 -> 3\)"):
        stage["main"](*args)
    assert not (tmp_path / "models").exists() and (tmp_path / "checkpoints" / "final.pt").is_file()
    monkeypatch.setitem(loop, "train_session", session)
    write_params(tmp_path / "params.yaml", max_iters=4)
    trained = sha256_file(tmp_path / "checkpoints" / "final.pt")
    stage["main"](*args)
    assert sha256_file(tmp_path / "models" / "final.pt") == trained


# --- DDP --------------------------------------------------------------------------------------------

@pytest.mark.subprocess  # torchrun-style: two gloo ranks in their own processes
def test_ddp_two_gloo_processes_match_one_process_on_the_same_global_batch(train_bins, tiny_tokenizer_path,
                                                                           tmp_path):
    """2 ranks x grad_accum 1 see the same global batches as 1 process x grad_accum 2."""
    params = write_params(tmp_path / "params.yaml", max_iters=4, grad_accum=1)
    args = ["--params", str(params), "--data-dir", str(train_bins), "--train-file", "train.bin",
            "--val-file", "val.bin", "--tokenizer", str(tiny_tokenizer_path)]
    # torchrun --standalone: a local rendezvous on a free port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gothic", "train", *args, "--out-dir", str(tmp_path / "ddp")]
    # own session, so a hang can be cleaned up with the workers torchrun started
    # torchrun keeps its logs in a fresh folder under TMPDIR and never removes it: keep it in tmp_path
    env = {**venv_env(), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stderr[-2000:]
    assert "x 2 ranks" in stdout and stdout.count("step 4: val loss") == 1  # rank 0 alone logs
    train(tiny_model_config(), tiny_train_config(max_iters=4, grad_accum=2), train_bins, tiny_tokenizer_path,
          tmp_path / "single")
    ddp, single = weights(tmp_path / "ddp" / "final.pt"), weights(tmp_path / "single" / "final.pt")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=1e-4, msg=key)
    assert load_checkpoint(tmp_path / "ddp" / "latest.pt")["sampler"]["batches_drawn"] == 8
