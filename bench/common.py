"""Shared bits of the benchmark scripts: machine description, timing, table + JSON output."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gothic.runtime import cpu_has_bf16_units

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"date": dt.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # the same CPU name covers models with and without bf16 units, which decide every bf16 figure
    info["cpu"] += " (bf16 units: AVX-512 BF16 or AMX)" if cpu_has_bf16_units() else " (no bf16 units)"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


@contextlib.contextmanager
def llama_cpp_without_repacking():
    """Inside it, llama-cpp-python's Llama loads without weight repacking, as llama.cpp's `--no-repack`.
    On CPUs with AMX, llama.cpp repacks q8_0 matrices for its AMX kernels, and that path segfaults in
    llama-cpp-python 0.3.36 (llama.cpp#20824; reproduced on a 2-core Xeon with AMX, 64 to 1024 wide).
    The binding's constructor takes no switch for it, so the switch is set in the defaults it reads."""
    from llama_cpp import llama_cpp as binding

    defaults = binding.llama_model_default_params

    def no_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    binding.llama_model_default_params = no_repacking
    try:
        yield
    finally:
        binding.llama_model_default_params = defaults


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
              sync: Callable[[], None] = lambda: None) -> float:
    """Fastest wall time of `repeats` calls after `warmup` calls: the least noisy estimate on a busy machine."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_tflops(n: int, dtype: torch.dtype, device: str) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    seconds = best_time(lambda: a @ b, repeats=10, warmup=3, sync=sync)
    return 2 * n**3 / seconds / 1e12


def peak_tflops(dtype: torch.dtype, device: str = "cpu", sizes=(512, 1024, 2048)) -> float:
    """Best TFLOP/s over square sizes: what the train benchmark divides by."""
    return max(matmul_tflops(n, dtype, device) for n in sizes)


def print_table(title: str, rows: list[dict]) -> None:
    """Rows (dicts with the same keys) as a rich table; floats to 3 significant digits."""
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right" if isinstance(rows[0][key], int | float) else "left")
    for row in rows:
        table.add_row(*(f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def report(name: str, rows: list[dict], notes: str = "", extra: dict | None = None,
           results_dir: Path = RESULTS_DIR) -> Path:
    """Print rows as a table and write them, with the machine, to bench/results/<name>.json.

    `extra` adds more keys to the JSON (e.g. a curve); `results_dir` redirects it (the smoke tests
    write to a temporary folder so they never overwrite real results).
    """
    print_table(f"{name} — {machine()['cpu']}", rows)
    if notes:
        Console().print(notes, markup=False)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows, "notes": notes, **(extra or {})}, indent=2)
                    + "\n")
    return path
