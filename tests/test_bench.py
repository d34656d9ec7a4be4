"""Smoke tests of the benchmark scripts under bench/: each runs end to end at a tiny size and writes
its JSON (to a temporary folder, never over bench/results/). They check that the scripts run, not
the figures; the real runs are documented in bench/README.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_TEXT, venv_env

pytestmark = pytest.mark.subprocess  # each benchmark script runs in its own process


def run_bench(script: str, *args: str, results_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--results-dir", str(results_dir)],
                          cwd=ROOT, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_train_throughput_runs_and_compares_with_the_reference(tmp_path):
    run_bench("train_throughput.py", "--sizes", "tiny", "--precisions", "fp32", "bf16-autocast", "--compile", "off",
              "--repeats", "1", "--peak-sizes", "64", results_dir=tmp_path)
    rows = json.loads((tmp_path / "train_throughput.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16-autocast"]
    assert rows[1]["runs as"] == "bfloat16 autocast"
    assert all(r["tokens/s"] > 0 and r["ref tokens/s"] > 0 and r["x ref"] > 0 for r in rows)


def test_generate_runs_with_and_without_cache(tmp_path):
    run_bench("generate.py", "--size", "tiny", "--prompts", "4", "--new-tokens", "8", "--repeats", "1",
              results_dir=tmp_path)
    rows = json.loads((tmp_path / "generate.json").read_text())["rows"]
    # by default fp32 and bf16 (the weights cast once), each with the cache and without
    assert [(r["dtype"], r["KV cache"]) for r in rows] == [("float32", "on"), ("float32", "off"),
                                                           ("bfloat16", "on"), ("bfloat16", "off")]
    assert all(r["tokens/s"] > 0 and r["first token ms"] > 0 for r in rows)


def test_quality_trains_each_profile_and_names_the_held_out_documents(tmp_path):
    profiles = ["seed-arch", "demo"]
    corpus = tmp_path / "books"
    corpus.mkdir()
    for i in range(4):  # four small "books", one held out
        (corpus / f"book{i}.txt").write_text(TINY_TEXT * 3 + f"\nThe end of book {i}.\n", encoding="utf-8")
    out = run_bench("quality.py", "--corpus", str(corpus), "--minutes", "0.01", "--eval-every", "0.2",
                    "--vocab-size", "300", "--val-fraction", "0.25", "--profiles", *profiles, "--passes-bytes", "10",
                    "--set",
                    "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=16",
                    results_dir=tmp_path / "results")
    result = json.loads((tmp_path / "results" / "quality.json").read_text())
    assert len(result["held_out"]) == 1 and result["held_out"][0] in out
    # both regimes, the same held-out book; many-passes trains on the smallest books only
    assert [(r["regime"], r["profile"]) for r in result["rows"]] == \
        [(regime, p) for regime in ("ten-minutes", "many-passes") for p in profiles]
    assert result["held_out_by_regime"]["many-passes"] == result["held_out"]
    assert len(result["trained_on"]["many-passes"]) == 1 < len(result["trained_on"]["ten-minutes"]) == 3
    assert all(0 < r["held-out bpb"] < 20 and 0 < r["best.pt held-out bpb"] < 20 and r["steps"] >= 1
               and r["passes"] > 0 for r in result["rows"])
    assert {p["profile"] for p in result["curve"]} == set(profiles)


def test_finetune_compares_scratch_and_fine_tunes_on_a_new_author(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    for i in range(4):  # the base's books, one held out
        (books / f"book{i}.txt").write_text(TINY_TEXT * 4 + f"\nThe end of book {i}.\n", encoding="utf-8")
    (books / "letters.txt").write_text("".join(f"Chapter {i}\n\n" + "Dear Margaret, the roses are late. " * 30 + "\n\n"
                                               for i in range(1, 11)), encoding="utf-8")
    run_bench("finetune.py", "--corpus", str(books), "--new-author", "letters", "--base-steps", "4", "--steps", "4",
              "--vocab-size", "280", "--val-fraction", "0.25", "--min-chapter-chars", "100", "--recipes", "demo",
              "--set", "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=16",
              results_dir=tmp_path / "results")
    result = json.loads((tmp_path / "results" / "finetune.json").read_text())
    assert [r["run"] for r in result["rows"]] == ["base (no stage 2)", "from scratch", "fine-tune (demo)"]
    assert result["chapters"] == {"train": 8, "val": 2} and len(result["base_held_out"]) == 1
    assert all(0 < r["new author bpb"] < 20 and 0 < r["base books bpb"] < 20 for r in result["rows"])


def test_checkpoint_size_compares_latest_best_and_export(tmp_path):
    run_bench("checkpoint_size.py", "--size", "tiny", results_dir=tmp_path)
    rows = {r["file"]: r["MB"] for r in json.loads((tmp_path / "checkpoint_size.json").read_text())["rows"]}
    assert len(rows) == 3 and all(size > 0 for size in rows.values())


def test_cli_help_times_every_console_script(tmp_path):
    # one timed run of each, no warm-up: the table's shape is under test, not the figures
    run_bench("cli_help.py", "--repeats", "1", "--warmups", "0", results_dir=tmp_path)
    rows = json.loads((tmp_path / "cli_help.json").read_text())["rows"]
    assert [r["script"] for r in rows] == ["gothic-prepare", "gothic-tokenize", "gothic-train", "gothic-generate",
                                           "gothic-chat"]
    assert all(r["--help s"] > 0 and r["torch imported first s"] > 0 for r in rows)


def test_pipeline_scale_mode_measures_each_data_stage(tmp_path):
    run_bench("pipeline.py", "--scale", "1.5", "2.5", "--work-dir", str(tmp_path), results_dir=tmp_path / "results")
    rows = json.loads((tmp_path / "results" / "pipeline-scale.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["prepare", "tokenize", "binarize", "all three"] * 2
    assert all(r["wall s"] > 0 and r["MB/s"] > 0 and 10 < r["peak RSS MB"] <= r["tree RSS MB"] + 1 for r in rows)
    assert rows[0]["corpus MB"] == 1.5 and rows[4]["corpus MB"] == 2.5
    assert not any(tmp_path.glob("tmp*/scale-*"))  # the synthetic corpora are deleted


def test_synthetic_corpus_has_varied_documents(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from pipeline import write_synthetic_corpus

    n_bytes = write_synthetic_corpus(tmp_path / "raw", 2.0)
    docs = sorted((tmp_path / "raw").rglob("*.txt"))
    assert 2_000_000 <= n_bytes == sum(d.stat().st_size for d in docs) and len(docs) >= 2
    assert len({d.read_bytes()[:2000] for d in docs}) == len(docs)  # not one file repeated


def test_quality_in_steps_trains_exactly_as_gothic_train(train_bins, tiny_tokenizer_path, tmp_path):
    """bench/quality.py --steps N takes gothic-train's steps (same init, batches, schedule, update): its
    figures are the project's training, not a look-alike loop."""
    import sys

    import torch

    from gothic.train import train

    from conftest import tiny_model_config, tiny_train_config

    sys.path.insert(0, str(ROOT / "bench"))
    from quality import budget_training

    model_cfg = tiny_model_config(dropout=0.1)
    for toolbox in ({}, {"ema": 0.9, "schedule": "wsd", "sampling": "epochs"}):
        train_cfg = tiny_train_config(max_iters=6, grad_clip=1.0, eval_interval=2, **toolbox)
        run = budget_training("tiny", model_cfg, train_cfg, train_bins, 0.0, math.inf, steps=6)
        out = tmp_path / str(len(toolbox))
        train(model_cfg, train_cfg, train_bins, tiny_tokenizer_path, out)
        assert run.curve[-1]["step"] == 6
        for name, weights in (("final.pt", run.model.state_dict()), ("best.pt", run.best_state)):
            trained = torch.load(out / name, weights_only=True)
            assert all(torch.equal(value, trained["model"][key]) for key, value in weights.items()), (toolbox, name)
        assert run.best_step == trained["step"]


def test_gpu_check_runs_every_section_at_tiny_size_on_the_cpu(tmp_path):
    """bench/gpu.py --tiny: the one-call GPU check, on the CPU in seconds, so it cannot rot before a GPU is lent."""
    corpus = tmp_path / "books"
    corpus.mkdir()
    for i in range(4):  # four small "books", one held out
        (corpus / f"book{i}.txt").write_text(TINY_TEXT * 3 + f"\nThe end of book {i}.\n", encoding="utf-8")
    run_bench("gpu.py", "--tiny", "--corpus", str(corpus), "--compile-modes", "off", results_dir=tmp_path / "out")
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert result["size"] == "tiny" and result["machine"]["device"] == "cpu" and result["machine"]["torch"]
    sections = result["sections"]
    assert list(sections) == ["peak", "throughput", "demo", "fp16", "generate", "ddp", "data", "resume", "real_run"]
    assert {name: entry["status"] for name, entry in sections.items()} == dict.fromkeys(sections, "ok")
    rows = sections["throughput"]["rows"]
    assert [r["micro_batch"] for r in rows] == [2, 4] and all(r["tokens/s"] > 0 and r["MFU %"] > 0 for r in rows)
    assert all(r["10000 steps min"] > 0 for r in rows) and sections["demo"]["settings"]["optimizer"] == "muon"
    assert sections["fp16"]["runs_as"] == "float16 autocast + GradScaler" and sections["fp16"]["finite"]
    assert sections["generate"]["tokens/s"] > 0 and sections["generate"]["x_no_cache"] > 0
    assert sections["ddp"]["backend"] == "gloo" and sections["ddp"]["same_weights_as_without_ddp"]
    assert sections["ddp"]["plain_runs_identical"] and sections["ddp"]["max_abs_diff_ddp_vs_plain"] == 0.0
    resume = sections["resume"]
    assert resume["stop_saved_and_raised"] and resume["bit_exact"] and resume["two_straight_runs_bit_exact"]  # CPU
    assert sections["throughput"]["seed_micro_batch_peak_gb"] is None  # torch.cuda's peak: CUDA only
    real = sections["real_run"]
    assert [s["exit_code"] for s in real["sessions"]] == [130, 0] and real["resumed_to_the_end"]
    assert 0 < real["held_out_bits_per_byte"] < 20 and len(real["held_out_books"]) == 1
