"""The training loop: single process, or DDP under torchrun. The `train` stage and gothic-train call `train`.

One call builds the model from `ModelConfig`, reads the token bins, and runs `TrainConfig.max_iters`
optimizer steps (the optimizers come from gothic.optim): gradient accumulation, clipping, linear
warmup + cosine decay, autocast (bf16, or fp16 with a GradScaler; fp32 on CPUs without bf16
units), optional torch.compile, a periodic val loss on fixed batches, and
checkpoints in `out_dir` (latest.pt every eval, best.pt at the lowest val loss, final.pt). Rank 0
writes TensorBoard scalars to `out_dir/logs`. With `resume`, everything (weights, optimizer, data
position, RNG) comes back from latest.pt, so on CPU a stopped-and-resumed run ends bit for bit
where an uninterrupted one does. Ctrl+C (or SIGTERM) finishes the current step, saves latest.pt
and stops; a second Ctrl+C stops at once.

    torchrun --standalone --nproc_per_node 2 -m gothic.train --params params.yaml  # DDP: gloo on CPU, NCCL on GPU
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gothic.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_checkpoint_info,
    load_weights,
    release_state,
    restore_rng_state,
    save_checkpoint,
)
from gothic.config import ModelConfig, TrainConfig, to_dict
from gothic.data import BatchSampler, load_meta, load_split
from gothic.errors import GothicError
from gothic.model import GPT
from gothic.optim import LrSegment, build_optimizers, get_lr, set_lr
from gothic.rundir import (
    RunDirLock,
    adopt,
    check_writable,
    data_fingerprint,
    plan_start,
    publish,
    repair_copies,
    run_identity,
)
from gothic.runlog import NullLog, RunLog, Window
from gothic.runtime import (
    SINGLE_PROCESS,
    Dist,
    Precision,
    StopRequest,
    all_reduce,
    init_distributed,
    oom_as_error,
    resolve_precision,
    should_compile,
)
from gothic.tokenizer import tokenizer_sha256

Log = Callable[[str], None]
Batch = tuple[Tensor, Tensor]


# --- data -------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_sha256: str
    fingerprint: str = ""
    """Identifies the bins (gothic.rundir.data_fingerprint), part of the run key."""
    tokenizer_json: str = ""
    """The tokenizer.json text; every checkpoint carries it, so a model needs no other file."""


def _load_tokens(bin_dir: Path, file_name: str, split: str, meta: dict, block_size: int) -> np.ndarray:
    """Memory-map one split; a split too short for a single window is a GothicError."""
    if file_name == f"{split}.bin":
        data = load_split(bin_dir, split, meta)
    else:  # a differently named file: meta.json cannot vouch for its length
        path = bin_dir / file_name
        if not path.is_file():
            raise GothicError(f"{path}: not found; build the bins first (`dvc repro binarize`)")
        data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    if data.size <= block_size:
        raise GothicError(f"{bin_dir / file_name}: {data.size} tokens cannot fill one window of "
                          f"model.block_size={block_size} (+1 target); lower model.block_size or add text")
    return data


def load_training_data(bin_dir: Path, tokenizer_path: Path, block_size: int, train_file: str = "train.bin",
                       val_file: str = "val.bin") -> TrainingData:
    """Open the bins and check they were built with this tokenizer."""
    meta = load_meta(bin_dir)
    if not Path(tokenizer_path).is_file():
        raise GothicError(f"{tokenizer_path}: tokenizer not found (run `dvc repro tokenize` or pass --tokenizer)")
    tokenizer_json = Path(tokenizer_path).read_bytes().decode("utf-8")  # bytes: the hash covers exactly these
    sha = tokenizer_sha256(tokenizer_path)
    if sha != meta.get("tokenizer_sha256"):
        raise GothicError(f"{bin_dir}/meta.json: bins were built with another tokenizer than {tokenizer_path}; "
                          "rebuild them with `dvc repro binarize`")
    return TrainingData(_load_tokens(bin_dir, train_file, "train", meta, block_size),
                        _load_tokens(bin_dir, val_file, "val", meta, block_size), int(meta["vocab_size"]), sha,
                        data_fingerprint(bin_dir / "meta.json"), tokenizer_json)


class GlobalBatchStream:
    """One seeded stream of micro-batches shared by all ranks: rank r of W takes r, r + W, r + 2W, ...

    So W ranks x grad_accum k see exactly the batches that one process with grad_accum k x W sees
    (the same global batch), and a resumed run continues the stream at any world size. The state is
    BatchSampler's, with `batches_drawn` counting batches consumed by all ranks together.
    """

    def __init__(self, sampler: BatchSampler, dist: Dist):
        self.sampler, self.rank, self.world_size = sampler, dist.rank, dist.world_size
        self.consumed = 0

    def next_batch(self) -> Batch:
        self.sampler.batches_drawn = self.consumed + self.rank
        self.consumed += self.world_size
        return self.sampler.next_batch()

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "rank": 0, "batches_drawn": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["batches_drawn"])


# --- one step, one evaluation -----------------------------------------------------------------

def train_step(model: nn.Module, micro_batches: list[Batch], optimizers: list[torch.optim.Optimizer],
               precision: Precision, grad_clip: float = 0.0,
               no_sync: Callable[[], AbstractContextManager] = nullcontext) -> Tensor:
    """One optimizer update over the micro-batches; returns their mean loss (a detached scalar).

    Each micro-batch's loss is divided by their number, so k micro-batches of b sequences give the
    gradient of one batch of k x b. `no_sync` (DDP's) skips the gradient all-reduce on all but the
    last micro-batch.
    """
    n = len(micro_batches)
    total = torch.zeros((), device=micro_batches[0][0].device)
    for i, (x, y) in enumerate(micro_batches):
        with no_sync() if i < n - 1 else nullcontext():
            with precision.autocast():
                _, loss = model(x, y)
            loss = loss / n
            (precision.scaler.scale(loss) if precision.scaler else loss).backward()
        total += loss.detach()
    _update(model, optimizers, precision.scaler, grad_clip)
    return total


def _update(model: nn.Module, optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler | None,
            grad_clip: float) -> None:
    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        if scaler is not None:
            scaler.step(opt)  # skipped when the gradients overflowed
        else:
            opt.step()
    if scaler is not None:
        scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


@torch.no_grad()
def estimate_loss(model: GPT, data: np.ndarray, batch_size: int, eval_iters: int, seed: int,
                  precision: Precision, dist: Dist = SINGLE_PROCESS) -> float:
    """Mean loss over eval_iters batches drawn with a fixed seed: the same batches at every eval,
    so successive values compare weights, not luck. Ranks share out the batches."""
    device = next(model.parameters()).device
    sampler = BatchSampler(data, model.cfg.block_size, batch_size, seed)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(dist.rank, eval_iters, dist.world_size):
        sampler.batches_drawn = i
        x, y = sampler.next_batch()
        with precision.autocast():
            _, loss = model(x.to(device), y.to(device))
        total += loss.double()
    model.train(was_training)
    (total_sum,) = all_reduce([total.item()], dist, device)
    return total_sum / eval_iters


# --- run state, checkpoints, resume -----------------------------------------------------------

@dataclass
class RunState:
    """Everything about a run's progress that a checkpoint carries besides model and optimizer."""

    step: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    val_loss: float = math.inf
    tokens_seen: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    """Seconds spent in training steps, over every session of the run (for tokens/s)."""
    horizon: int = 0
    """The max_iters the learning-rate schedule is heading for (the run is complete there)."""
    lr_segment: LrSegment | None = None
    """Set when the run was continued to another max_iters (see get_lr)."""
    log_window: tuple[float, int] = (0.0, 0)
    """Train loss summed over the steps since the last log line, and their number: a run stopped
    between two log lines logs the same mean after it continues as it would have without stopping."""
    # rows for the plots: {"step", "train_loss", "lr", "tokens_per_s"} and {"step", "val_loss"}
    history: dict[str, list[dict]] = field(default_factory=lambda: {"train": [], "val": []})


@dataclass
class Run:
    """The objects of one training run, so helpers take one argument instead of ten."""

    model: GPT
    optimizers: list[torch.optim.Optimizer]
    precision: Precision
    stream: GlobalBatchStream
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data: TrainingData
    dist: Dist
    device: torch.device
    out_dir: Path
    identity: dict
    """What defines this run's trajectory (gothic.rundir.run_identity), saved in every checkpoint."""
    state: RunState = field(default_factory=RunState)
    last_saved_step: int | None = None
    """The step of the newest checkpoint on disk (None before the first save of a fresh run)."""
    started: float = field(default_factory=time.perf_counter)
    """When this session began; state.wall_time_s adds the session's time to earlier sessions'."""
    wall_offset: float = 0.0

    def update_wall_time(self) -> None:
        self.state.wall_time_s = self.wall_offset + time.perf_counter() - self.started


# what resume needs beyond what every checkpoint has (gothic.checkpoint.REQUIRED_KEYS)
RESUME_KEYS = ("train_config", "optimizer", "sampler", "rng", "best_step", "val_loss", "tokens_seen", "wall_time_s",
               "history")


def checkpoint_dict(run: Run, rng_states: list[dict]) -> dict:
    s = run.state
    return {
        "run_identity": run.identity, "horizon": s.horizon,
        "lr_segment": list(s.lr_segment) if s.lr_segment else None,
        "train_time_s": s.train_time_s, "log_window": list(s.log_window),
        "model": run.model.state_dict(),  # the plain module's: no DDP `module.` or compile `_orig_mod.` prefixes
        "model_config": to_dict(run.model_cfg),
        "train_config": to_dict(run.train_cfg),
        "vocab_size": run.data.vocab_size,
        "tokenizer_sha256": run.data.tokenizer_sha256,
        "tokenizer": run.data.tokenizer_json,
        "step": s.step, "best_val_loss": s.best_val_loss, "best_step": s.best_step, "val_loss": s.val_loss,
        "tokens_seen": s.tokens_seen, "wall_time_s": s.wall_time_s,
        "optimizer": [opt.state_dict() for opt in run.optimizers],
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler else None,
        "sampler": run.stream.state_dict(),
        "rng": rng_states,
        "history": s.history,
    }


def gather_rng_states(run: Run) -> list[dict]:
    """Every rank's RNG state (a collective call under DDP), indexed by rank."""
    mine = capture_rng_state(run.device)
    if not run.dist.enabled:
        return [mine]
    states: list = [None] * run.dist.world_size
    torch_dist.all_gather_object(states, mine)
    return states


def _check_resumable(path: Path, ckpt: dict, run: Run) -> None:
    """Refuse a checkpoint from another tokenizer, vocabulary, model shape or optimizer."""
    if ckpt["tokenizer_sha256"] != run.data.tokenizer_sha256:
        raise GothicError(f"{path}: trained with another tokenizer than the bins use; "
                          "start fresh (train.resume: false) or use the original tokenizer")
    if ckpt["vocab_size"] != run.data.vocab_size:
        raise GothicError(f"{path}: vocab_size {ckpt['vocab_size']} but the bins have {run.data.vocab_size}")
    # dropout shapes nothing, so it may change on resume; every other field must match
    saved, wanted = ckpt["model_config"], to_dict(run.model_cfg)
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, params {v!r}" for k, v in wanted.items()
             if k != "dropout" and saved.get(k) != v]
    if diffs:
        raise GothicError(f"{path}: a different model shape ({'; '.join(diffs)}); "
                          "restore those params or start fresh with train.resume: false")
    saved_opt = ckpt["train_config"].get("optimizer")
    if saved_opt != run.train_cfg.optimizer or len(ckpt["optimizer"]) != len(run.optimizers):
        raise GothicError(f"{path}: trained with optimizer {saved_opt!r}, params say {run.train_cfg.optimizer!r}")


def resume_run(run: Run, path: Path) -> None:
    """Restore weights, optimizer, scaler, data position, RNG and progress from a checkpoint."""
    if not path.is_file():
        raise GothicError(f"{path}: no checkpoint to resume from; train once with train.resume: false")
    # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
    ckpt = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise GothicError(f"{path}: holds no training state ({', '.join(missing)}), so it cannot be resumed; "
                          "start fresh with train.resume: false")
    _check_resumable(path, ckpt, run)
    load_weights(run.model, ckpt["model"], path)
    try:
        for opt, state in zip(run.optimizers, ckpt["optimizer"], strict=True):
            opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise GothicError(f"{path}: optimizer state does not fit ({e})") from None
    if run.precision.scaler is not None and ckpt.get("scaler"):
        run.precision.scaler.load_state_dict(ckpt["scaler"])
    run.stream.load_state_dict(ckpt["sampler"])
    run.wall_offset = ckpt["wall_time_s"]
    rng = ckpt["rng"]
    restore_rng_state(rng[run.dist.rank] if run.dist.rank < len(rng) else rng[0], run.device)
    step = ckpt["step"]
    history = {k: [row for row in rows if row["step"] <= step] for k, rows in ckpt["history"].items()}
    horizon = int(ckpt.get("horizon") or ckpt["train_config"]["max_iters"])
    segment = tuple(ckpt["lr_segment"]) if ckpt.get("lr_segment") else None
    max_iters = run.train_cfg.max_iters
    if horizon != max_iters and step >= run.train_cfg.warmup_iters:
        # continued to another length: go on from the rate the old schedule had reached (get_lr)
        old_schedule = dataclasses.replace(run.train_cfg, max_iters=horizon)
        segment = (step, get_lr(step, old_schedule, segment))
    run.state = RunState(step=step, best_val_loss=ckpt["best_val_loss"], best_step=ckpt["best_step"],
                         val_loss=ckpt["val_loss"], tokens_seen=ckpt["tokens_seen"],
                         wall_time_s=ckpt["wall_time_s"], train_time_s=float(ckpt.get("train_time_s") or 0.0),
                         horizon=max_iters, lr_segment=segment,
                         log_window=tuple(ckpt.get("log_window") or (0.0, 0)), history=history)
    run.last_saved_step = step


# --- the run ----------------------------------------------------------------------------------

@dataclass
class TrainResult:
    metrics: dict
    history: dict[str, list[dict]]
    out_dir: Path
    rank: int = 0
    """Only rank 0 should write outputs from it."""


def build_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TrainingData, out_dir: Path, dist: Dist,
              device: torch.device, identity: dict | None = None) -> Run:
    torch.manual_seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    model = GPT(model_cfg, data.vocab_size).to(device)  # same initial weights on every rank
    torch.manual_seed(train_cfg.seed + dist.rank)  # but different dropout masks
    sampler = BatchSampler(data.train, model_cfg.block_size, train_cfg.batch_size, train_cfg.seed)
    return Run(model, build_optimizers(model, train_cfg, device), resolve_precision(train_cfg.dtype, device),
               GlobalBatchStream(sampler, dist), model_cfg, train_cfg, data, dist, device, out_dir,
               identity or run_identity(model_cfg, train_cfg, data.fingerprint), RunState(horizon=train_cfg.max_iters))


def wrap_for_training(run: Run) -> tuple[nn.Module, Callable[[], AbstractContextManager]]:
    """The module the loop calls (DDP, then compiled) and the matching no_sync."""
    module: nn.Module = run.model
    no_sync: Callable[[], AbstractContextManager] = nullcontext
    if run.dist.enabled:
        ddp = DistributedDataParallel(module, device_ids=[run.device.index] if run.device.type == "cuda" else None)
        module, no_sync = ddp, ddp.no_sync
    if should_compile(run.train_cfg.compile, run.device):
        module = torch.compile(module)
    return module, no_sync


def tokens_per_step(run: Run) -> int:
    cfg = run.train_cfg
    return cfg.batch_size * cfg.grad_accum * run.model_cfg.block_size * run.dist.world_size


def startup_line(run: Run) -> str:
    cfg, m = run.train_cfg, run.model
    compiled = "on" if should_compile(cfg.compile, run.device) else "off"
    ranks = f" x {run.dist.world_size} ranks" if run.dist.enabled else ""
    start = f"resuming at step {run.state.step}" if run.state.step else "from scratch"
    return (f"train: {run.device} | {run.precision.describe()} | compile {compiled} | "
            f"{m.num_params(non_embedding=False) / 1e6:.2f}M params ({m.num_params() / 1e6:.2f}M non-embedding) | "
            f"{tokens_per_step(run):,} tokens/step ({cfg.batch_size} x {cfg.grad_accum} x "
            f"{run.model_cfg.block_size}{ranks}) | {start}, to step {cfg.max_iters}")


def check_finite(run: Run, what: str, value: float) -> None:
    """Stop a diverged run before it writes a checkpoint: the ones on disk stay the last good ones."""
    if math.isfinite(value):
        return
    kept = (f"the checkpoints in {run.out_dir} keep step {run.last_saved_step}" if run.last_saved_step is not None
            else "no checkpoint was written")
    raise GothicError(f"training diverged at step {run.state.step}: the {what} loss is {value}; {kept}. Lower "
                      "train.learning_rate (or raise train.warmup_iters, or set train.grad_clip) and train again")


def save_run(run: Run, window: Window, names: tuple[str, ...]) -> None:
    """Write latest.pt (all ranks join the RNG gather; rank 0 writes), then for the other names the
    same checkpoint without the optimizer, RNG and sampler state that only resuming needs.

    latest.pt always comes first: a stop between it and the others is repaired from it on the next
    start (gothic.rundir.repair_copies).
    """
    run.update_wall_time()
    run.state.log_window = window.snapshot(run.dist)
    check_finite(run, "train", run.state.log_window[0])
    rng_states = gather_rng_states(run)
    run.last_saved_step = run.state.step
    if not run.dist.is_main:
        return
    state = checkpoint_dict(run, rng_states)
    save_checkpoint(run.out_dir / "latest.pt", state)
    for name in names:
        save_checkpoint(run.out_dir / name, release_state(state))


def evaluate_and_save(run: Run, run_log: RunLog, window: Window, final: bool) -> None:
    cfg, state = run.train_cfg, run.state
    state.val_loss = estimate_loss(run.model, run.data.val, cfg.batch_size, cfg.eval_iters, cfg.seed,
                                   run.precision, run.dist)
    check_finite(run, "validation", state.val_loss)
    is_best = state.val_loss < state.best_val_loss
    if is_best:
        state.best_val_loss, state.best_step = state.val_loss, state.step
    run_log.val_row(state.val_loss, is_best)
    save_run(run, window, (("best.pt",) if is_best else ()) + (("final.pt",) if final else ()))


def run_loop(run: Run, module: nn.Module, no_sync: Callable[[], AbstractContextManager], run_log: RunLog,
             stop: StopRequest, on_step: Callable[[int], None] | None) -> None:
    """Train to max_iters (state.train_time_s adds the seconds spent in training steps).

    On a stop request, saves latest.pt at the step just finished and raises KeyboardInterrupt.
    """
    cfg, state = run.train_cfg, run.state
    step_tokens = tokens_per_step(run)
    window = Window(run.device)
    window.restore(*state.log_window, run.dist)
    while state.step < cfg.max_iters:
        lr = set_lr(run.optimizers, state.step, cfg, state.lr_segment)
        batches = [tuple(t.to(run.device, non_blocking=True) for t in run.stream.next_batch())
                   for _ in range(cfg.grad_accum)]
        window.add(train_step(module, batches, run.optimizers, run.precision, cfg.grad_clip, no_sync))
        state.step += 1
        state.tokens_seen += step_tokens
        run_log.step()
        is_last = state.step == cfg.max_iters
        if state.step % cfg.log_interval == 0 or is_last:
            loss, steps, seconds = window.close(run.dist)
            state.train_time_s += seconds
            check_finite(run, "train", loss)
            run_log.train_row(loss, lr, steps * step_tokens / max(seconds, 1e-9))
        if on_step is not None:
            on_step(state.step)
        stopping = stop.agreed(run.dist, run.device)
        window.pause()
        if state.step % cfg.eval_interval == 0 or is_last:
            evaluate_and_save(run, run_log, window, final=is_last)
        elif stopping:
            save_run(run, window, ())
        if stopping and not is_last:
            run_log.log(f"stopped at step {state.step}: saved {run.out_dir / 'latest.pt'}; run the same command "
                        "again to continue (train.resume: auto)")
            raise KeyboardInterrupt
        window.resume()


def collect_metrics(run: Run) -> dict:
    state, model = run.state, run.model
    train_rows = state.history["train"]
    return {
        "step": state.step,
        "train_loss": round(train_rows[-1]["train_loss"], 6) if train_rows else None,
        "last_val_loss": round(state.val_loss, 6) if math.isfinite(state.val_loss) else None,
        "best_val_loss": round(state.best_val_loss, 6) if math.isfinite(state.best_val_loss) else None,
        "best_step": state.best_step,
        "tokens_seen": state.tokens_seen,
        "train_tokens_per_second": round(state.tokens_seen / state.train_time_s, 1) if state.train_time_s > 0 else None,
        "wall_time_s": round(state.wall_time_s, 2),
        "model_params": model.num_params(non_embedding=False),
        "model_params_non_embedding": model.num_params(),
    }


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, bin_dir: str | Path, tokenizer_path: str | Path,
          out_dir: str | Path, *, publish_dir: str | Path | None = None, train_file: str = "train.bin",
          val_file: str = "val.bin", log: Log | None = None, show_progress: bool | None = None,
          on_step: Callable[[int], None] | None = None,
          on_log: Callable[[RunState], None] | None = None) -> TrainResult:
    """Train a GPT on the bins in bin_dir, or continue the run in out_dir (train_cfg.resume, gothic.rundir).

    Args:
        model_cfg, train_cfg: the `model` and `train` sections of params.yaml.
        bin_dir: folder with meta.json and the split bins.
        tokenizer_path: the tokenizer the bins were built with (checked against meta.json).
        out_dir: the run folder: checkpoints and logs/ (`checkpoints/`); locked while training.
        publish_dir: where a complete run's best.pt, final.pt and latest.pt are copied (the stage's
            `models/`); also where a run to continue is looked for when out_dir has none.
        train_file, val_file: names of the split bins inside bin_dir.
        log: receives one-line messages (rank 0 only); None is silent.
        show_progress: a rich progress bar instead of log lines per log_interval; None = when
            stdout is a terminal.
        on_step: called with the step number after every optimizer step (tests use it to
            interrupt a run).
        on_log: called (rank 0) with the run state after each logged train or val row
            (gothic.live.LiveMetrics keeps the DVC metrics and plot files current).
    Returns:
        TrainResult with the metrics for metrics/train.json and the history for the plots.
    Raises:
        GothicError: bad input (bins, tokenizer, checkpoint, permissions, a busy out_dir, out of
            memory, a diverged loss).
        KeyboardInterrupt: after a stop request (Ctrl+C, SIGTERM), once latest.pt holds the last step.
    """
    dist, device = init_distributed(train_cfg.device)
    log = log if dist.is_main else None
    publish_dir = Path(publish_dir) if publish_dir is not None else None
    try:
        data = load_training_data(Path(bin_dir), Path(tokenizer_path), model_cfg.block_size, train_file, val_file)
        out_dir = Path(out_dir)
        if dist.is_main:
            check_writable(out_dir)
        identity = run_identity(model_cfg, train_cfg, data.fingerprint)
        with RunDirLock(out_dir) if dist.is_main else nullcontext():
            start = plan_start(out_dir, identity, train_cfg, publish_dir)
            if log and start.note:
                log(f"train: {start.note}")
            with oom_as_error(model_cfg, train_cfg, device):
                run = build_run(model_cfg, train_cfg, data, out_dir, dist, device, identity)
                if start.checkpoint is not None:
                    resume_run(run, start.checkpoint)
                    if dist.is_main:
                        adopt(start.checkpoint, out_dir)
                        repaired = repair_copies(out_dir, load_checkpoint_info(out_dir / "latest.pt"))
                        if log and repaired:
                            log(f"train: restored {', '.join(repaired)} from latest.pt (a stop came between them)")
                if start.action != "complete":
                    train_session(run, log, show_progress, on_step, on_log)
            if publish_dir is not None and dist.is_main:
                publish(out_dir, publish_dir)
        return TrainResult(collect_metrics(run), run.state.history, out_dir, dist.rank)
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def train_session(run: Run, log: Log | None, show_progress: bool | None,
                  on_step: Callable[[int], None] | None,
                  on_log: Callable[[RunState], None] | None = None) -> None:
    """Train from run.state.step to max_iters with the progress display and TensorBoard logs."""
    module, no_sync = wrap_for_training(run)
    if log:
        log(startup_line(run))
    if show_progress is None:
        show_progress = os.isatty(1)
    run_log = RunLog(run.out_dir, run.state, run.train_cfg.max_iters, log, show_progress, on_log) \
        if run.dist.is_main else NullLog()
    try:
        with StopRequest() as stop:
            run_loop(run, module, no_sync, run_log, stop, on_step)
    finally:
        run_log.close()


if __name__ == "__main__":  # `python -m gothic.train` / `torchrun -m gothic.train`: the gothic-train CLI
    from gothic.cli import train_main

    train_main()
