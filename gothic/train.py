"""The training loop: single process, or DDP under torchrun. The `train` stage and gothic-train call `train`.

One call builds the model from `ModelConfig`, reads the token bins, and runs `TrainConfig.max_iters`
optimizer steps: gradient accumulation, clipping, a periodic val loss on fixed batches, and
checkpoints in `out_dir` (latest.pt every eval, best.pt at the lowest val loss, final.pt). Its
neighbours own the rest: the optimizers and the learning-rate schedule (gothic.optim), the bins
and batches (gothic.data), the device, precision, DDP/compile wrapping and stop requests
(gothic.runtime), the checkpoint format (gothic.checkpoint), the run folder (gothic.rundir), and
what the run reports (gothic.runlog: log lines, progress callbacks, TensorBoard, metrics).

A continued run gets everything (weights, optimizer, data position, RNG) back from latest.pt, so
on CPU a stopped-and-resumed run ends bit for bit where an uninterrupted one does. Ctrl+C (or
SIGTERM) finishes the current step, saves latest.pt and stops; a second Ctrl+C stops at once.

    torchrun --standalone --nproc_per_node 2 -m gothic train --params params.yaml  # DDP: gloo on CPU, NCCL on GPU
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from gothic.base import Base, load_base, shape_from_base
from gothic.checkpoint import (
    RunState,
    TokenizerIdentity,
    TrainingCheckpoint,
    check_same_tokenizer,
)
from gothic.config import ModelConfig, TrainConfig, to_dict
from gothic.data import BatchSampler, BatchStream, StepBatches, TrainingData, load_training_data
from gothic.ema import WeightAverage
from gothic.errors import GothicError
from gothic.loading import first_nonfinite, load_weights
from gothic.model import GPT
from gothic.optim import build_optimizers, get_lr, set_lr, state_mismatch
from gothic.rundir import run_folder, run_identity
from gothic.runlog import Reporter, RunLog, TrainHooks, Window, run_metrics
from gothic.runtime import (
    SINGLE_PROCESS,
    Dist,
    Precision,
    StopRequest,
    all_reduce,
    cuda_fallback_note,
    gather_rng_states,
    init_distributed,
    oom_as_error,
    resolve_precision,
    restore_rng_state,
    should_compile,
    use_fast_cuda_matmuls,
    wrap_model,
)

Batch = tuple[Tensor, Tensor]


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


def split_passes(batches: list[Batch], size: int) -> list[Batch]:
    """The step's batches cut into forward/backward passes of `size` sequences (train.micro_batch;
    0 keeps the batches as drawn). Same sequences in the same order, so the same mean loss."""
    if size == 0 or size == batches[0][0].size(0):
        return batches
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return list(zip(x.split(size), y.split(size), strict=True))


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
        x, y = sampler.batch(i)
        with precision.autocast():
            _, loss = model(x.to(device), y.to(device))
        total += loss.double()
    model.train(was_training)
    (total_sum,) = all_reduce([total.item()], dist, device)
    return total_sum / eval_iters


# --- the run, its checkpoints, resume ----------------------------------------------------------

@dataclass
class Run:
    """The objects of one training run, so helpers take one argument instead of ten."""

    model: GPT
    optimizers: list[torch.optim.Optimizer]
    precision: Precision
    stream: BatchStream
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data: TrainingData
    dist: Dist
    device: torch.device
    out_dir: Path
    identity: dict
    """What defines this run's trajectory (gothic.rundir.run_identity), saved in every checkpoint."""
    state: RunState = field(default_factory=RunState)
    ema: WeightAverage | None = None
    """The average of the weights (train.ema), or None when it is off."""
    last_saved_step: int | None = None
    """The step of the newest checkpoint on disk (None before the first save of a fresh run)."""
    started: float = field(default_factory=time.perf_counter)
    """When this session began; state.wall_time_s adds the session's time to earlier sessions'."""
    wall_offset: float = 0.0

    def update_wall_time(self) -> None:
        self.state.wall_time_s = self.wall_offset + time.perf_counter() - self.started

    def averaged(self) -> AbstractContextManager:
        """Inside, the model holds the weights the run evaluates and publishes: the average with train.ema."""
        return self.ema.swapped_in(self.model) if self.ema is not None else nullcontext()


def resume_run(run: Run, path: Path) -> None:
    """Restore weights, optimizer, scaler, data position, RNG and progress from a checkpoint."""
    if not path.is_file():
        raise GothicError(f"{path}: no checkpoint to resume from; train once with train.resume: false")
    ckpt = TrainingCheckpoint.load_resumable(path)  # on the CPU; load_state_dict moves the rest to the device
    ckpt.check_continues(path, to_dict(run.model_cfg), run.train_cfg.optimizer, len(run.optimizers),
                         run.data.vocab_size, run.data.tokenizer_sha256)
    load_weights(run.model, ckpt.model, path)
    for opt, state in zip(run.optimizers, ckpt.optimizer, strict=True):
        # checked first: a moment of the wrong shape reaches the fused kernel unchecked, and crashes it
        if problem := state_mismatch(opt, state):
            raise GothicError(f"{path}: optimizer state does not fit the model ({problem}); the file is damaged: "
                              "start fresh with train.resume: false")
        opt.load_state_dict(state)
    if run.precision.scaler is not None and ckpt.scaler:
        run.precision.scaler.load_state_dict(ckpt.scaler)
    if run.ema is not None and ckpt.ema is None:
        raise GothicError(f"{path}: holds no weight average to continue (train.ema was off); start fresh with "
                          "train.resume: false")
    try:
        if run.ema is not None:
            run.ema.load_state_dict(ckpt.ema)
        run.stream.load_state_dict(ckpt.sampler)
        rng = ckpt.rng[run.dist.rank] if run.dist.rank < len(ckpt.rng) else ckpt.rng[0]
        restore_rng_state(rng, run.device)  # raises on a malformed state before anything is trained
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
        raise GothicError(f"{path}: the sampler, weight average or RNG state is damaged ({type(e).__name__}); "
                          "start fresh with train.resume: false") from None
    state = ckpt.state
    run.wall_offset = state.wall_time_s
    if state.horizon != run.train_cfg.max_iters and state.step >= run.train_cfg.warmup_iters:
        # continued to another length: go on from the rate the old schedule had reached (get_lr)
        old_schedule = dataclasses.replace(run.train_cfg, max_iters=state.horizon)
        state.lr_segment = (state.step, old_schedule.learning_rate * get_lr(state.step, old_schedule, state.lr_segment))
    state.horizon = run.train_cfg.max_iters
    run.state, run.last_saved_step = state, state.step


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
    sampler = BatchSampler(data.train, model_cfg.block_size, train_cfg.batch_size, train_cfg.seed,
                           epochs=train_cfg.sampling == "epochs")
    return Run(model, build_optimizers(model, train_cfg, device), resolve_precision(train_cfg.dtype, device),
               BatchStream(sampler, dist.rank, dist.world_size), model_cfg, train_cfg, data, dist, device, out_dir,
               identity or run_identity(model_cfg, train_cfg, data.fingerprint), RunState(horizon=train_cfg.max_iters),
               WeightAverage(model, train_cfg.ema) if train_cfg.ema else None)


def tokens_per_step(run: Run) -> int:
    cfg = run.train_cfg
    return cfg.batch_size * cfg.grad_accum * run.model_cfg.block_size * run.dist.world_size


def startup_line(run: Run) -> str:
    cfg, m = run.train_cfg, run.model
    compiled = "on" if should_compile(cfg.compile, run.device) else "off"
    ranks = f" x {run.dist.world_size} ranks" if run.dist.enabled else ""
    start = (f"resuming at step {run.state.step}" if run.state.step else
             f"fine-tuning {cfg.init_from}" if cfg.init_from else "from scratch")
    # only where auto chose the CPU: an explicit device: cpu is what the user wants
    fallback = cuda_fallback_note() if cfg.device == "auto" and run.device.type == "cpu" else ""
    device = f"{run.device} ({fallback})" if fallback else str(run.device)
    size = cfg.micro_batch or cfg.batch_size
    passes = f", in passes of {size}" if size != cfg.batch_size else ""
    return (f"train: {device} | {run.precision.describe()} | compile {compiled} | "
            f"{m.num_params(non_embedding=False) / 1e6:.2f}M params ({m.num_params() / 1e6:.2f}M non-embedding) | "
            f"{tokens_per_step(run):,} tokens/step ({cfg.batch_size} x {cfg.grad_accum} x "
            f"{run.model_cfg.block_size}{ranks}{passes}) | {start}, to step {cfg.max_iters}")


def diverged(run: Run, what: str) -> GothicError:
    """The one line that stops a diverged run before it writes a checkpoint: the ones on disk stay the
    last good ones."""
    kept = (f"the checkpoints in {run.out_dir} keep step {run.last_saved_step}" if run.last_saved_step is not None
            else "no checkpoint was written")
    return GothicError(f"training diverged at step {run.state.step}: {what}; {kept}. Lower train.learning_rate "
                       "(or raise train.warmup_iters, or set train.grad_clip) and train again")


def check_finite(run: Run, what: str, value: float) -> None:
    if not math.isfinite(value):
        raise diverged(run, f"the {what} loss is {value}")


def save_run(run: Run, window: Window, names: tuple[str, ...]) -> None:
    """Write latest.pt (all ranks join the RNG gather; rank 0 writes), then for the other names the
    same checkpoint without the optimizer, RNG, sampler and average state that only resuming needs
    (with train.ema, holding the averaged weights as its model: TrainingCheckpoint.to_dict).

    latest.pt always comes first: a stop between it and the others is repaired from it on the next
    start (gothic.rundir.repair_copies).
    """
    run.update_wall_time()
    run.state.log_window = window.snapshot(run.dist)
    check_finite(run, "train", run.state.log_window[0])
    if (key := first_nonfinite(run.model.state_dict())) is not None:  # a diverged model is never written
        raise diverged(run, f"the weight {key} holds NaN or infinite values")
    rng_states = gather_rng_states(run.dist, run.device)
    run.last_saved_step = run.state.step
    if not run.dist.is_main:
        return
    ckpt = TrainingCheckpoint(
        model=run.model.state_dict(), model_config=to_dict(run.model_cfg), vocab_size=run.data.vocab_size,
        tokenizer_sha256=run.data.tokenizer_sha256, tokenizer=run.data.tokenizer_json,
        train_config=to_dict(run.train_cfg), run_identity=run.identity, state=run.state,
        optimizer=[opt.state_dict() for opt in run.optimizers],
        scaler=run.precision.scaler.state_dict() if run.precision.scaler else None,
        sampler=run.stream.state_dict(), rng=rng_states, ema=run.ema.state_dict() if run.ema is not None else None)
    ckpt.save(run.out_dir / "latest.pt")
    for name in names:
        ckpt.save(run.out_dir / name, resumable=False)


def evaluate_and_save(run: Run, run_log: Reporter, window: Window, final: bool) -> None:
    cfg, state = run.train_cfg, run.state
    with run.averaged():
        state.val_loss = estimate_loss(run.model, run.data.val, cfg.batch_size, cfg.eval_iters, cfg.seed,
                                       run.precision, run.dist)
    check_finite(run, "validation", state.val_loss)
    is_best = state.val_loss < state.best_val_loss
    if is_best:
        state.best_val_loss, state.best_step = state.val_loss, state.step
    run_log.val_row(state.val_loss, is_best)
    save_run(run, window, (("best.pt",) if is_best else ()) + (("final.pt",) if final else ()))


def run_loop(run: Run, module: nn.Module, no_sync: Callable[[], AbstractContextManager], run_log: Reporter,
             stop: StopRequest) -> None:
    """Train to max_iters (state.train_time_s adds the seconds spent in training steps).

    On a stop request, saves latest.pt at the step just finished and raises KeyboardInterrupt.
    """
    cfg, state = run.train_cfg, run.state
    window = Window(run.device)
    window.restore(*state.log_window, run.dist)
    step_tokens = tokens_per_step(run)
    if cfg.init_from and state.step == 0 and not state.history["val"]:
        # a fine-tune's first row is its base's loss on the new books (the weights were loaded, and
        # how far they start from the new text); the base is best.pt until a step beats it
        evaluate_and_save(run, run_log, window, final=False)
    with closing(StepBatches(run.stream, cfg.grad_accum, run.device)) as step_batches:
        while state.step < cfg.max_iters:
            lr = set_lr(run.optimizers, state.step, cfg, state.lr_segment)
            passes = split_passes(step_batches.next(), cfg.micro_batch)
            window.add(train_step(module, passes, run.optimizers, run.precision, cfg.grad_clip, no_sync))
            if run.ema is not None:
                run.ema.update(run.model)
            state.step += 1
            state.tokens_seen += step_tokens
            run_log.step()
            is_last = state.step == cfg.max_iters
            if state.step % cfg.log_interval == 0 or is_last:
                loss, steps, seconds = window.close(run.dist)
                state.train_time_s += seconds
                check_finite(run, "train", loss)
                run_log.train_row(loss, lr, steps * step_tokens / max(seconds, 1e-9))
            run_log.after_step()
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


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, bin_dir: str | Path, tokenizer_path: str | Path,
          out_dir: str | Path, *, publish_dir: str | Path | None = None, train_file: str = "train.bin",
          val_file: str = "val.bin", hooks: TrainHooks | None = None) -> TrainResult:
    """Train a GPT on the bins in bin_dir, or continue the run in out_dir (train_cfg.resume, gothic.rundir).

    Args:
        model_cfg, train_cfg: the `model` and `train` sections of params.yaml.
        bin_dir: folder with meta.json and the split bins.
        tokenizer_path: the tokenizer the bins were built with (checked against meta.json).
        out_dir: the run folder: checkpoints and logs/ (`checkpoints/`); locked while training.
        publish_dir: where a complete run's best.pt, final.pt and latest.pt are copied (the stage's
            `models/`); also where a run to continue is looked for when out_dir has none.
        train_file, val_file: names of the split bins inside bin_dir.
        hooks: how the caller hears from the run (log lines, progress, steps, logged rows), on rank 0;
            None is silent.
    Returns:
        TrainResult with the metrics for metrics/train.json and the history for the plots.
    Raises:
        GothicError: bad input (bins, tokenizer, checkpoint, permissions, a busy out_dir, out of
            memory, a diverged loss).
        KeyboardInterrupt: after a stop request (Ctrl+C, SIGTERM), once latest.pt holds the last step.
    """
    dist, device = init_distributed(train_cfg.device)
    use_fast_cuda_matmuls(device)
    hooks = hooks if hooks is not None and dist.is_main else TrainHooks()  # only rank 0 reports
    publish_dir = Path(publish_dir) if publish_dir is not None else None
    try:
        base = load_base(train_cfg.init_from) if train_cfg.init_from else None
        if base is not None:
            model_cfg, note = shape_from_base(model_cfg, base)
            if note and hooks.log is not None:
                hooks.log(note)
        data = load_training_data(Path(bin_dir), Path(tokenizer_path), model_cfg.block_size, train_file, val_file,
                                  "add text (a base's context cannot shrink)" if base else
                                  "lower model.block_size or add text")
        if base is not None:
            check_base_tokenizer(base, data, Path(tokenizer_path))
        identity = run_identity(model_cfg, train_cfg, data.fingerprint, base.weights_sha256 if base else None)
        with run_folder(Path(out_dir), identity, train_cfg, publish_dir, dist.is_main, hooks.log) as folder, \
                oom_as_error(model_cfg, train_cfg, device):
            run = build_run(model_cfg, train_cfg, data, Path(out_dir), dist, device, identity)
            if folder.start.checkpoint is not None:
                resume_run(run, folder.start.checkpoint)
                folder.adopt()
            elif base is not None:
                load_weights(run.model, base.state, base.path)  # the optimizer and schedule start fresh
                if run.ema is not None:  # the average starts from the base's weights, not the random ones
                    run.ema = WeightAverage(run.model, train_cfg.ema)
            if folder.start.action != "complete":
                train_session(run, hooks)
            if hooks.before_publish is not None:
                hooks.before_publish()
        return TrainResult(run_metrics(run.state, run.model), run.state.history, Path(out_dir), dist.rank)
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def check_base_tokenizer(base: Base, data: TrainingData, tokenizer_path: Path) -> None:
    """A fine-tune's bins must be encoded with its base's tokenizer: other ids would mean other words."""
    check_same_tokenizer(base.tokenizer_identity, base.path,
                         TokenizerIdentity(data.vocab_size, data.tokenizer_sha256),
                         f"the bins' tokenizer {tokenizer_path}",
                         "encode the new books with the base's tokenizer: `dvc repro` (the tokenize stage writes "
                         "it when train.init_from is set), or gothic-train --init-from without --tokenizer")


def train_session(run: Run, hooks: TrainHooks) -> None:
    """Train from run.state.step to max_iters, reporting through hooks (rank 0) and TensorBoard."""
    module, no_sync = wrap_model(run.model, run.dist, run.device, run.train_cfg.compile)
    if hooks.log is not None:
        hooks.log(startup_line(run))
    run_log = RunLog(run.out_dir, run.state, run.train_cfg.max_iters, hooks) if run.dist.is_main else Reporter()
    try:
        with StopRequest() as stop:
            run_loop(run, module, no_sync, run_log, stop)
    finally:
        run_log.close()
