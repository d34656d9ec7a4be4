"""The GPU check in one call: speed, memory and every CUDA path of gothic, written as JSON as it goes.

Sections, in order (each one's result, time and any error land in the JSON; a failing section does
not stop the others, and a section that would start past --budget-s is skipped and says so):

  machine      GPU, driver, torch, CUDA, Python
  peak         the measured bf16 matmul peak (random data), what MFU divides by
  throughput   the seed configuration (8 x 512, 16 x 4 x 512 tokens a step): tokens/s, MFU, peak
               memory (torch.cuda.max_memory_allocated) and the projected wall time of 10,000 steps,
               eager at each --micro-batches size (train.micro_batch: 16, 32, 64, the same 64 x 512
               tokens a step), compiled at the seed's 16 and at the fastest eager size
  demo         the demo profile (make demo's overrides, Muon) tokens/s, eager and compiled
  fp16         train.dtype float16 with its GradScaler for a few steps
  generate     tokens/s at batch 1 with the KV cache (and without, for the ratio), bf16 weights
  ddp          DistributedDataParallel over NCCL (gloo on a CPU) with one spawned process: the weights
               after a few steps against the same steps without DDP
  data         the --corpus books split with whole books held out, a tokenizer, the bins
  resume       in-process: N steps straight against N/2, a Ctrl+C (SIGINT), then resumed; bit-exact?
  real_run     `python -m gothic train` (gothic-train's entry point) for about --train-seconds of
               training at the fastest measured setting, Ctrl+C'd halfway and run again to resume,
               then held-out bits per byte of final.pt (gothic.evaluate, fp32)

    python bench/gpu.py --corpus ../shared/corpus/gothic            # on a GPU (about 5 minutes on an H100/H200)
    python bench/gpu.py --tiny --corpus DIR                          # everything at a tiny size on the CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from gothic.config import ModelConfig, SamplingSettings, TrainConfig
from gothic.model import GPT
from gothic.optim import build_optimizers
from gothic.runtime import resolve_precision, use_fast_cuda_matmuls
from gothic.train import split_passes, train_step

from common import RESULTS_DIR, machine, matmul_tflops, print_table

ROOT = Path(__file__).resolve().parent.parent
VOCAB_SIZE = 4096
SEED_STEPS = 10_000  # the seed's run
# Per size: the model shape, the step's (batch_size, grad_accum), the micro-batches to time, the
# vocabulary for the real run, the steps timed per setting, the matmul size of the peak.
SIZES = {
    "seed": dict(model=dict(n_layer=8, n_head=8, n_embd=512, block_size=512), batch=(16, 4), micro=(16, 32, 64),
                 vocab=4096, steps=20, peak_n=(4096, 8192)),
    "tiny": dict(model=dict(n_layer=2, n_head=2, n_embd=32, block_size=32), batch=(2, 2), micro=(2, 4),
                 vocab=300, steps=2, peak_n=(128,)),
}


class Checks:
    """Runs the sections in order, each guarded, and rewrites the JSON after every one."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s, self.started = path, budget_s, time.perf_counter()
        self.result: dict = {"machine": {}, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run(self, name: str, fn: Callable[[], dict]) -> dict | None:
        if self.elapsed() > self.budget_s:
            self.result["sections"][name] = {"status": "skipped", "why": f"past the {self.budget_s:.0f} s budget"}
            self.write()
            return None
        print(f"== {name} ({self.elapsed():.0f} s in)", flush=True)
        start = time.perf_counter()
        try:
            out = fn()
            entry = {"status": "ok", **out}
        except Exception as e:  # one broken path must not hide the figures of the others
            traceback.print_exc()
            out, entry = None, {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        self.result["sections"][name] = entry
        print(json.dumps({name: entry}, default=str)[:3000], flush=True)
        self.write()
        return out

    def write(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.result, indent=2, default=str) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_memory(device: torch.device) -> None:
    """Forget compiled graphs and cached blocks, and restart the peak-memory count."""
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


# --- the sections -----------------------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    info = {**machine(), "python": platform.python_version(), "device": str(device),
            "torch_cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    return info


def measure_peak(device: torch.device, sizes: tuple[int, ...]) -> dict:
    tflops = {n: matmul_tflops(n, torch.bfloat16, str(device)) for n in sizes}
    return {"bf16_tflops": max(tflops.values()), "by_size": tflops}


def random_batches(shape: tuple[int, int], count: int, device: torch.device,
                   generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random tokens (speed does not depend on them), drawn on the CPU and moved to device."""
    return [tuple(torch.randint(0, VOCAB_SIZE, shape, generator=generator).to(device) for _ in range(2))
            for _ in range(count)]


def flops_per_token(cfg: ModelConfig, model: GPT) -> float:
    """6 x matmul params (the tied head counts) + the attention scores' 12 x layers x width x context."""
    return 6 * model.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def time_steps(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device, compiled: bool | str,
               steps: int, peak_tflops: float) -> dict:
    """One configuration: gothic's own step (GPT, build_optimizers, train_step, train.micro_batch's
    split) on random tokens; compiled may be True or a torch.compile mode."""
    fresh_memory(device)
    torch.manual_seed(0)
    model = GPT(model_cfg, VOCAB_SIZE).to(device)
    optimizers = build_optimizers(model, train_cfg, device)
    precision = resolve_precision(train_cfg.dtype, device)
    module = model
    if compiled:
        module = torch.compile(model, **({"mode": compiled} if isinstance(compiled, str) else {}))
    shape = (train_cfg.batch_size, model_cfg.block_size)
    batches = random_batches(shape, train_cfg.grad_accum, device)

    def step():
        return train_step(module, split_passes(batches, train_cfg.micro_batch), optimizers, precision,
                          train_cfg.grad_clip)

    start = time.perf_counter()
    step()  # compiles, when compiled
    sync(device)
    first_s = time.perf_counter() - start
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    tokens = train_cfg.batch_size * train_cfg.grad_accum * model_cfg.block_size
    tokens_s = tokens / step_s
    row = {"micro_batch": train_cfg.micro_batch or train_cfg.batch_size, "compile": compiled or "off",
           "dtype": precision.describe().split(" (")[0], "tokens/s": round(tokens_s), "step ms": 1000 * step_s,
           "MFU %": 100 * tokens_s * flops_per_token(model_cfg, model) / (peak_tflops * 1e12),
           f"{SEED_STEPS} steps min": SEED_STEPS * step_s / 60, "peak GB": peak_memory_gb(device),
           "first step s": first_s, "loss": float(loss)}
    return row


def throughput(size: dict, device: torch.device, peak: float, compile_modes: list, micro_sizes: list[int]) -> dict:
    model_cfg = ModelConfig(**size["model"])
    batch, accum = size["batch"]
    rows = []
    for compiled in compile_modes:
        eager = [r for r in rows if r["compile"] == "off"]
        sizes = micro_sizes
        if compiled and eager:  # compiling takes a minute a size: the seed's passes and the fastest eager size
            sizes = sorted({batch, max(eager, key=lambda r: r["tokens/s"])["micro_batch"]} & set(micro_sizes))
        for micro in sizes:
            cfg = TrainConfig(batch_size=batch, grad_accum=accum, micro_batch=micro, device=str(device))
            rows.append(time_steps(model_cfg, cfg, device, compiled, size["steps"], peak))
            print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["tokens/s"])
    eager = [r for r in rows if r["compile"] == "off"]
    compiled_rows = [r for r in rows if r["compile"] != "off"]
    seed_rows = [r for r in rows if r["micro_batch"] == batch]
    seed_peaks = [r["peak GB"] for r in seed_rows if r["peak GB"] is not None]  # CUDA only
    summary = {"best": best, "seed_micro_batch_peak_gb": max(seed_peaks) if seed_peaks else None}
    if eager and compiled_rows:
        summary["compiled_over_eager"] = max(r["tokens/s"] for r in compiled_rows) / max(r["tokens/s"] for r in eager)
    return {"rows": rows, **summary}


def demo_profile_speed(device: torch.device, peak: float, steps: int, tiny: bool, compile_modes: list) -> dict:
    from quality import PROFILES, configs  # the demo profile as make demo runs it (the Makefile's DEMO_PARAMS)

    model_cfg, train_cfg = configs(PROFILES["demo"], {"train.device": str(device)})
    if tiny:
        model_cfg = dataclasses.replace(model_cfg, **SIZES["tiny"]["model"])
    rows = [time_steps(model_cfg, train_cfg, device, compiled, steps, peak) for compiled in compile_modes]
    return {"rows": rows, "settings": {"model": dataclasses.asdict(model_cfg), "batch": train_cfg.batch_size,
                                       "grad_accum": train_cfg.grad_accum, "optimizer": train_cfg.optimizer}}


def fp16_steps(size: dict, device: torch.device, steps: int) -> dict:
    """float16 autocast with the GradScaler (the path of a GPU without bf16), eager."""
    model_cfg = ModelConfig(**size["model"])
    batch, accum = size["batch"]
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, dtype="float16", device=str(device))
    torch.manual_seed(0)
    model = GPT(model_cfg, VOCAB_SIZE).to(device)
    optimizers = build_optimizers(model, cfg, device)
    precision = resolve_precision("float16", device, cpu_fallback=False)
    shape = (batch, model_cfg.block_size)
    losses, scales = [], []
    start = time.perf_counter()
    for _ in range(steps):
        batches = random_batches(shape, accum, device)
        losses.append(float(train_step(model, batches, optimizers, precision, cfg.grad_clip)))
        scales.append(precision.scaler.get_scale())
    sync(device)
    seconds = time.perf_counter() - start
    return {"runs_as": precision.describe(), "losses": losses, "scales": scales,
            "finite": all(math.isfinite(x) for x in losses), "loss_fell": losses[-1] < losses[0],
            "tokens/s": round(steps * batch * accum * model_cfg.block_size / seconds)}


def generation_speed(size: dict, device: torch.device, new_tokens: int) -> dict:
    from gothic.generation import generate_tokens
    from gothic.runtime import inference_dtype

    torch.manual_seed(0)
    dtype = inference_dtype(device)
    model = GPT(ModelConfig(**size["model"]), VOCAB_SIZE).to(device).eval().cast_for_inference(dtype)
    settings = SamplingSettings(max_new_tokens=new_tokens)
    prompt = torch.randint(1, VOCAB_SIZE, (1, 16), generator=torch.Generator().manual_seed(16)).to(device)
    rows = {}
    for use_cache in (True, False, True):  # the first cached run warms up; the second is the figure
        start = time.perf_counter()
        n = sum(1 for _ in generate_tokens(model, prompt, settings, [torch.Generator().manual_seed(1)], use_cache))
        sync(device)
        rows["cache" if use_cache else "no_cache"] = n / (time.perf_counter() - start)
    return {"dtype": str(dtype).removeprefix("torch."), "prompt_tokens": 16, "new_tokens": new_tokens,
            "tokens/s": rows["cache"], "no_cache_tokens/s": rows["no_cache"],
            "x_no_cache": rows["cache"] / rows["no_cache"]}


def _ddp_worker(rank: int, port: int, size: dict, device_type: str, steps: int, out: str) -> None:
    """The one rank of a one-process DDP job: a few of gothic's steps through DistributedDataParallel,
    then the same steps twice without it. With one rank the all-reduce is an identity, so the
    weights must match the plain run's as far as two plain runs match each other (CUDA kernels that
    add with atomics may differ in the last bits from run to run)."""
    import torch.distributed as torch_dist
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=1)
    model_cfg = ModelConfig(**size["model"])
    batch, accum = size["batch"]
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, device=device_type)
    precision = resolve_precision(cfg.dtype, device)
    data = torch.Generator().manual_seed(rank)
    step_batches = [random_batches((batch, model_cfg.block_size), accum, device, data) for _ in range(steps)]
    runs = []
    for use_ddp in (True, False, False):
        torch.manual_seed(0)
        model = GPT(model_cfg, VOCAB_SIZE).to(device)
        optimizers = build_optimizers(model, cfg, device)
        module, no_sync = model, nullcontext
        if use_ddp:
            ddp = DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
            module, no_sync = ddp, ddp.no_sync
        start = time.perf_counter()
        for batches in step_batches:
            loss = train_step(module, batches, optimizers, precision, cfg.grad_clip, no_sync)
        sync(device)
        runs.append({"weights": {k: v.detach().float().cpu() for k, v in model.state_dict().items()},
                     "loss": float(loss), "seconds": time.perf_counter() - start})
    ddp_run, plain, plain_again = runs
    result = {"backend": backend, "world_size": 1, "steps": steps, "loss": ddp_run["loss"],
              "ddp_step_ms": 1000 * ddp_run["seconds"] / steps,
              "same_weights_as_without_ddp": weights_diff(ddp_run["weights"], plain["weights"]) == 0.0,
              "max_abs_diff_ddp_vs_plain": weights_diff(ddp_run["weights"], plain["weights"]),
              "plain_runs_identical": weights_diff(plain["weights"], plain_again["weights"]) == 0.0}
    Path(out).write_text(json.dumps(result))
    torch_dist.destroy_process_group()


def weights_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts (0.0: bit for bit the same)."""
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def ddp_check(size: dict, device: torch.device, steps: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        mp.spawn(_ddp_worker, args=(port, size, device.type, steps, str(out)), nprocs=1, join=True)
        result = json.loads(out.read_text())
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        result["note"] = (f"{torch.cuda.device_count()} GPUs here; this check uses one rank. Several: "
                          "torchrun --standalone --nproc_per_node N -m gothic train ...")
    return result


def build_data(corpus: Path, work: Path, vocab: int) -> dict:
    from quality import build_split  # gothic.corpus (whole books held out), a tokenizer on the train books, the bins

    if not any(corpus.glob("*.txt")):
        raise FileNotFoundError(f"{corpus}: no .txt books (pass --corpus, e.g. ../shared/corpus/gothic)")
    bin_dir, tokenizer, documents = build_split(str(corpus), work, vocab, 0.1, 1337)
    meta = json.loads((bin_dir / "meta.json").read_text())
    return {"bin_dir": str(bin_dir), "tokenizer": str(tokenizer), "held_out": documents["val"],
            "train_tokens": meta["splits"]["train"]["tokens"], "val_tokens": meta["splits"]["val"]["tokens"]}


def resume_check(data: dict, device: torch.device, tiny: bool, work: Path) -> dict:
    """N steps straight, against N/2 steps, a SIGINT (Ctrl+C), and the same call again (resume)."""
    from gothic.runlog import TrainHooks
    from gothic.train import train

    shape = SIZES["tiny"]["model"] if tiny else dict(n_layer=4, n_head=4, n_embd=256, block_size=256)
    model_cfg = ModelConfig(**shape)
    steps = 8 if tiny else 40
    cfg = TrainConfig(max_iters=steps, batch_size=4, grad_accum=2, warmup_iters=2, eval_interval=steps,
                      eval_iters=2, log_interval=5, compile=False, device=str(device), learning_rate=1e-3, min_lr=1e-4)

    def interrupt_at(step: int):
        def on_step(s: int) -> None:
            if s == step:
                os.kill(os.getpid(), signal.SIGINT)  # the stop handler finishes the step and saves latest.pt
        return on_step

    def final_weights(out: Path) -> dict:
        return torch.load(out / "final.pt", map_location="cpu", weights_only=True)["model"]

    bins, tok = Path(data["bin_dir"]), Path(data["tokenizer"])
    for name in ("straight", "again"):
        train(model_cfg, cfg, bins, tok, work / name)
    stopped = False
    try:
        train(model_cfg, cfg, bins, tok, work / "stopped", hooks=TrainHooks(on_step=interrupt_at(steps // 2)))
    except KeyboardInterrupt:
        stopped = True
    train(model_cfg, cfg, bins, tok, work / "stopped")
    straight, again, resumed = (final_weights(work / name) for name in ("straight", "again", "stopped"))
    diff, repeat_diff = weights_diff(straight, resumed), weights_diff(straight, again)
    result = {"steps": steps, "stopped_at": steps // 2, "stop_saved_and_raised": stopped, "bit_exact": diff == 0.0,
              "max_abs_weight_diff": diff, "two_straight_runs_bit_exact": repeat_diff == 0.0,
              "max_abs_diff_two_straight_runs": repeat_diff}
    if diff and repeat_diff:
        result["why"] = ("two uninterrupted runs differ too: CUDA kernels that add with atomics (in attention's "
                         "or the embedding's backward) sum in a varying order; the resume itself restores everything")
    elif diff:
        result["why"] = "the resumed run differs where two straight runs agree: a resume defect to find"
    return result


def real_run(data: dict, device: torch.device, size: dict, best: dict | None, seconds: float, work: Path) -> dict:
    """gothic-train (as python -m gothic train) for about `seconds` of training, Ctrl+C'd halfway,
    resumed by the same command; then held-out bits per byte of final.pt."""
    from gothic.config import EvaluateConfig
    from gothic.evaluate import evaluate_checkpoint

    batch, accum = size["batch"]
    micro, compiled, step_ms = batch, False, None
    if best is not None:
        micro, compiled, step_ms = best["micro_batch"], best["compile"] != "off", best["step ms"]
    steps = max(20, min(SEED_STEPS, int(seconds * 1000 / step_ms))) if step_ms else 20
    sets = {**{f"model.{k}": v for k, v in size["model"].items()}, "train.max_iters": steps,
            "train.batch_size": batch, "train.grad_accum": accum, "train.micro_batch": micro,
            "train.warmup_iters": max(1, steps // 20), "train.eval_interval": max(1, steps // 2),
            "train.eval_iters": 20, "train.log_interval": max(1, steps // 50), "train.compile": compiled,
            "train.device": str(device), "train.dtype": "bfloat16"}
    out_dir = work / "run"
    cmd = [sys.executable, "-m", "gothic", "train", "--params", str(ROOT / "params.yaml"),
           "--data-dir", data["bin_dir"], "--train-file", "train.bin", "--val-file", "val.bin",
           "--tokenizer", data["tokenizer"], "--out-dir", str(out_dir), "--metrics", str(work / "metrics.json")]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    sessions = []
    for session in ("interrupted", "resumed"):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, signalled = [], None
        for line in proc.stdout:
            lines.append(line.rstrip())
            step = re.match(r"step (\d+): loss", line)
            if session == "interrupted" and signalled is None and step and int(step.group(1)) >= steps // 2:
                proc.send_signal(signal.SIGINT)  # Ctrl+C: finish the step, save latest.pt, exit 130
                signalled = int(step.group(1))
        code = proc.wait()
        sessions.append({"session": session, "exit_code": code, "signalled_after_step": signalled,
                         "wall_s": round(time.perf_counter() - start, 1),
                         "log_tail": [x for x in lines if "step" in x or "train:" in x][-4:]})
        print("\n".join(lines[-6:]), flush=True)
    metrics = json.loads((work / "metrics.json").read_text())
    evaluation = evaluate_checkpoint(out_dir / "final.pt", Path(data["bin_dir"]),
                                     EvaluateConfig(batch_size=8, max_tokens=0, device=str(device)))
    return {"steps": steps, "settings": sets, "sessions": sessions,
            "resumed_to_the_end": sessions[0]["exit_code"] == 130 and sessions[1]["exit_code"] == 0
            and metrics["step"] == steps,
            "train_tokens_per_second": metrics["train_tokens_per_second"], "train_s": metrics["wall_time_s"],
            "best_val_loss": metrics["best_val_loss"], "held_out_books": data["held_out"],
            "held_out_bits_per_byte": evaluation["bits_per_byte"], "held_out_loss": evaluation["val_loss"]}


# --- the call ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="--device cpu --size tiny: every section in seconds")
    parser.add_argument("--device", default=None, help="default: cuda where there is one, else cpu")
    parser.add_argument("--size", choices=list(SIZES), default=None, help="default: seed (tiny with --tiny)")
    parser.add_argument("--corpus", type=Path, default=ROOT / ".gpu" / "corpus",
                        help="folder of .txt books for the real run (bench/gpu_prepare.sh copies the shared ones)")
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="training time of the real run (default 60; 1 with --tiny)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no section after this many seconds")
    parser.add_argument("--compile-modes", nargs="+", default=["off", "default"],
                        help="off, default, reduce-overhead (CUDA graphs), max-autotune-no-cudagraphs, ...")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=None,
                        help="train.micro_batch values to time eager (divisors of 64; default 16 32 64, tiny 2 4); "
                             "compiled: the seed's and the fastest eager one")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    size_name = args.size or ("tiny" if args.tiny else "seed")
    size = SIZES[size_name]
    train_seconds = args.train_seconds if args.train_seconds is not None else (1.0 if args.tiny else 60.0)
    use_fast_cuda_matmuls(device)  # as gothic.train does
    compile_modes = [{"off": False, "default": True}.get(m, m) for m in args.compile_modes]
    checks = Checks(args.results_dir / "gpu.json", args.budget_s)
    checks.result["machine"] = machine_info(device)
    checks.result["size"] = size_name
    print(json.dumps(checks.result["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peak = checks.run("peak", lambda: measure_peak(device, size["peak_n"]))
        peak_tflops = peak["bf16_tflops"] if peak else math.nan
        micro_sizes = args.micro_batches or list(size["micro"])
        speed = checks.run("throughput", lambda: throughput(size, device, peak_tflops, compile_modes, micro_sizes))
        checks.run("demo", lambda: demo_profile_speed(device, peak_tflops, size["steps"], size_name == "tiny",
                                                      compile_modes))
        checks.run("fp16", lambda: fp16_steps(size, device, 3 if size_name == "tiny" else 20))
        checks.run("generate", lambda: generation_speed(size, device, 16 if size_name == "tiny" else 256))
        checks.run("ddp", lambda: ddp_check(size, device, 3))
        data = checks.run("data", lambda: build_data(args.corpus, work / "data", size["vocab"]))
        if data is not None:
            (work / "resume").mkdir()
            checks.run("resume", lambda: resume_check(data, device, size_name == "tiny", work / "resume"))
            (work / "real").mkdir()
            checks.run("real_run", lambda: real_run(data, device, size, speed["best"] if speed else None,
                                                    train_seconds, work / "real"))
        else:
            for name in ("resume", "real_run"):
                checks.result["sections"][name] = {"status": "skipped", "why": "the data section built no bins"}
    checks.write()
    summarize(checks.result)
    print(f"wrote {checks.path}")


def summarize(result: dict) -> None:
    """The short table last: the reply of a remote run carries the end of the output."""
    sections = result["sections"]
    if sections.get("throughput", {}).get("status") == "ok":
        print_table("seed configuration, 64 x 512 tokens a step", sections["throughput"]["rows"])
    rows = []
    for name, entry in sections.items():
        keys = ("tokens/s", "bf16_tflops", "compiled_over_eager", "bit_exact", "same_weights_as_without_ddp",
                "held_out_bits_per_byte", "resumed_to_the_end", "finite", "error", "why")
        shown = {k: entry[k] for k in keys if k in entry}
        rows.append({"section": name, "status": entry["status"], "s": entry.get("seconds", 0.0),
                     "figures": json.dumps(shown, default=str)[:150]})
    print_table(f"gpu check — {result['machine'].get('gpu', result['machine'].get('cpu'))}", rows)


if __name__ == "__main__":
    main()
