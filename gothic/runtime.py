"""Where and how training runs: the device, the process group (DDP under torchrun), RNG state,
autocast precision, DDP/compile wrapping, stop requests and out-of-memory messages.

`init_distributed` reads torchrun's environment (gloo on CPU, NCCL on GPU) and `resolve_precision`
turns `train.dtype` into an autocast setting: bf16, fp16 with a GradScaler where bf16 is missing
on a GPU, and fp32 on CPUs without bf16 units, where emulated bf16 trains several times slower.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gothic.config import INFERENCE_DTYPES, ModelConfig, TrainConfig
from gothic.errors import GothicError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for a `device` param: 'auto' picks cuda > mps > cpu; plain 'cuda' means the
    local rank's GPU under DDP. A device that is not there is a GothicError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GothicError(f"device {name!r} asked for but CUDA is not available; use device: auto or cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "mps" and not torch.backends.mps.is_available():
        raise GothicError("device 'mps' asked for but MPS is not available; use device: auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:  # 'bogus', 'cpu:x': torch's message is a paragraph
        raise GothicError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None


NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # Linux's kernel driver; elsewhere nvidia-smi shows one


def nvidia_driver() -> str | None:
    """Where this machine shows an NVIDIA driver (the kernel module's file, or nvidia-smi on PATH), or None."""
    return str(NVIDIA_DRIVER_FILE) if NVIDIA_DRIVER_FILE.is_file() else shutil.which("nvidia-smi")


def cuda_fallback_note() -> str:
    """Why `device: auto` is not using this machine's NVIDIA GPU, with the fix; '' when CUDA works or there is none.

    torch only warns once (or says nothing, for a CPU-only build) and then reports no CUDA, so without
    this a run that was meant for the GPU trains on the CPU, many times slower, with no sign of why."""
    if torch.cuda.is_available() or nvidia_driver() is None:
        return ""
    if torch.version.cuda is None:
        return ("an NVIDIA driver is installed but this torch is the CPU-only build: install the CUDA build "
                "(rm -rf .venv && make setup TORCH_SPEC=torch, or the command from pytorch.org/get-started)")
    return (f"an NVIDIA driver is installed but CUDA is unavailable: this torch is built for CUDA "
            f"{torch.version.cuda}, which needs a newer driver; update the NVIDIA driver, or install a torch built "
            "for an older CUDA (pytorch.org/get-started/previous-versions)")


def capture_rng_state(device: torch.device) -> dict:
    """This process's random generator states, as tensors and plain values."""
    _, mt_keys, mt_pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "python": [version, list(py_state), py_gauss],
        "numpy": [torch.from_numpy(mt_keys.astype(np.int64)), mt_pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(state: dict, device: torch.device) -> None:
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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
    reason: str = ""
    """Why this dtype, when the device decided it (shown in the startup line), or ''."""

    def autocast(self) -> AbstractContextManager:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        if self.dtype == torch.float32:
            text = "float32"
        else:
            text = f"{str(self.dtype).removeprefix('torch.')} autocast" + (" + GradScaler" if self.scaler else "")
        return text + (f" ({self.reason})" if self.reason else "")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); without them oneDNN emulates it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtype names params and flags use (train.dtype, sample.dtype, --dtype)."""


def inference_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The dtype generation holds the weights in and computes in: `auto` is bf16 where the device
    computes it natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX) and fp32 elsewhere,
    where emulated bf16 is several times slower (bench/README.md)."""
    if name not in INFERENCE_DTYPES:
        raise GothicError(f"dtype {name!r}: use one of {', '.join(INFERENCE_DTYPES)}")
    if name != "auto":
        return DTYPES[name]
    native = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or \
        (device.type == "cpu" and cpu_has_bf16_units())
    return torch.bfloat16 if native else torch.float32


def resolve_precision(name: str, device: torch.device, cpu_fallback: bool = True) -> Precision:
    """Autocast dtype for `train.dtype` on device.

    bf16 falls back to fp16 on GPUs without it, and (with cpu_fallback) to fp32 on CPUs without
    bf16 units, where emulated bf16 autocast trains 2-4x slower than fp32. On a CPU with them (AVX-512
    BF16 or AMX) bf16 trains 1.5x faster than fp32 with the same held-out quality per step
    (bench/README.md), so a profile asks for bfloat16 and lets this decide.
    """
    dtype = DTYPES[name]
    reason = ""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype, reason = torch.float16, "this GPU has no bfloat16"
    if dtype == torch.bfloat16 and device.type == "cpu":
        if cpu_has_bf16_units():
            reason = "this CPU has bf16 units: faster than fp32, same quality per step"
        elif cpu_fallback:
            dtype, reason = torch.float32, "bfloat16 asked; this CPU has no bf16 units, fp32 is faster"
    # fp16's narrow exponent underflows small gradients; the scaler multiplies the loss up first
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Precision(dtype, device.type, scaler, reason)


def should_compile(setting: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def wrap_model(model: nn.Module, dist: Dist, device: torch.device,
               compile_setting: bool | str) -> tuple[nn.Module, Callable[[], AbstractContextManager]]:
    """The module a training loop calls (DDP, then compiled) and the matching no_sync; the plain
    model stays what is saved, so checkpoints carry no `module.` or `_orig_mod.` prefixes."""
    module: nn.Module = model
    no_sync: Callable[[], AbstractContextManager] = nullcontext
    if dist.enabled:
        ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        module, no_sync = ddp, ddp.no_sync
    if should_compile(compile_setting, device):
        module = torch.compile(module)
    return module, no_sync


def gather_rng_states(dist: Dist, device: torch.device) -> list[dict]:
    """Every rank's RNG state (a collective call under DDP), indexed by rank."""
    mine = capture_rng_state(device)
    if not dist.enabled:
        return [mine]
    states: list = [None] * dist.world_size
    torch_dist.all_gather_object(states, mine)
    return states


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
