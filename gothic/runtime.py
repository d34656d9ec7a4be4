"""Where and how training runs: the process group (DDP under torchrun), autocast precision, compile.

`init_distributed` reads torchrun's environment (gloo on CPU, NCCL on GPU) and `resolve_precision`
turns `train.dtype` into an autocast setting: bf16, fp16 with a GradScaler where bf16 is missing
on a GPU, and fp32 on CPUs without bf16 units, where emulated bf16 trains several times slower.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from gothic.checkpoint import resolve_device
from gothic.config import ModelConfig, TrainConfig
from gothic.errors import GothicError


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a (possibly one-process) DDP job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = Dist()  # rank 0 of 1: what a run outside torchrun sees


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one (NCCL on GPU, gloo on CPU); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size == 1:
        return SINGLE_PROCESS, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(torch_dist.get_rank(), world_size, local_rank), device


def all_reduce(values: list[float], dist: Dist, device: torch.device, op=torch_dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few floats across ranks (identity in a single process)."""
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=op)
    return t.tolist()


@dataclass
class Precision:
    dtype: torch.dtype
    device_type: str
    scaler: torch.amp.GradScaler | None
    fallback: str = ""
    """Why dtype differs from the one asked for (shown in the startup line), or ''."""

    def autocast(self) -> AbstractContextManager:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        if self.dtype == torch.float32:
            text = "float32"
        else:
            text = f"{str(self.dtype).removeprefix('torch.')} autocast" + (" + GradScaler" if self.scaler else "")
        return text + (f" ({self.fallback})" if self.fallback else "")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); without them oneDNN emulates it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, device: torch.device, cpu_fallback: bool = True) -> Precision:
    """Autocast dtype for `train.dtype` on device.

    bf16 falls back to fp16 on GPUs without it, and (with cpu_fallback) to fp32 on CPUs without
    bf16 units, where emulated bf16 autocast trains 2-4x slower than fp32 (bench/README.md).
    """
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    fallback = ""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype, fallback = torch.float16, "this GPU has no bfloat16"
    if dtype == torch.bfloat16 and device.type == "cpu" and cpu_fallback and not cpu_has_bf16_units():
        dtype, fallback = torch.float32, "bfloat16 asked; this CPU has no bf16 units, fp32 is faster"
    # fp16's narrow exponent underflows small gradients; the scaler multiplies the loss up first
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Precision(dtype, device.type, scaler, fallback)


def should_compile(setting: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def ctrl_c_interrupts() -> None:
    """Make Ctrl+C raise KeyboardInterrupt, as interactive programs need, however the process started:
    a background job, nohup or some CI runners start it with SIGINT ignored, and Python keeps that."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step (so a
    checkpoint can be written between steps); a second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self, dist: Dist, device: torch.device) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not dist.enabled:
            return self.requested
        return all_reduce([float(self.requested)], dist, device, torch_dist.ReduceOp.MAX)[0] > 0

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def oom_as_error(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Out-of-memory becomes a GothicError naming the knobs that shrink memory."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError is one; CPU/MPS allocators raise plain ones
        text = str(e)
        if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in text \
                and "can't allocate memory" not in text:
            raise
        raise GothicError(
            f"out of memory on {device} at train.batch_size={train_cfg.batch_size}, "
            f"model.block_size={model_cfg.block_size}: lower train.batch_size (raise train.grad_accum to "
            "keep the global batch), or lower model.block_size / the model size") from None
