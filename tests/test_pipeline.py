"""The real thing: `dvc repro` of the project's dvc.yaml in a temporary git repo, with tiny params."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, committed_text, git_init, has_dvc, make_raw_dir, venv_env

# one xdist worker takes the whole module, so reproduced_baseline (a module fixture) is built once
pytestmark = [pytest.mark.dvc, pytest.mark.skipif(not has_dvc(), reason="dvc is not installed"),
              pytest.mark.xdist_group("pipeline")]

# Small enough that every stage, training included, runs in seconds on a CPU.
TINY_PARAMS = {
    "prepare": {"sources": ["raw"], "val_fraction": 0.3},
    "tokenizer": {"vocab_size": 300},
    "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "train": {"max_iters": 4, "batch_size": 2, "grad_accum": 1, "warmup_iters": 1, "eval_interval": 2,
              "eval_iters": 2, "log_interval": 1, "dtype": "float32", "compile": False, "device": "cpu"},
    "evaluate": {"batch_size": 2, "device": "cpu"},
    "sample": {"prompts": ["The castle"], "num_samples": 1, "max_new_tokens": 8, "device": "cpu"},
}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def make_project(repo: Path, raw_dir: Path) -> Path:
    """The project's dvc.yaml, stages and gothic in a fresh git + DVC repository, with TINY_PARAMS."""
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "gothic"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(raw_dir, repo / "data" / "raw")
    for folder in ("data/base", "data/heldout"):  # dependencies of stages, each holding only its README
        (repo / folder).mkdir(parents=True)
        (repo / folder / "README.md").write_text(committed_text(f"{folder}/README.md"), encoding="utf-8")
    params = yaml.safe_load(committed_text("params.yaml"))
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_init(repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    return repo


@pytest.fixture
def project(tmp_path, raw_dir) -> Path:
    return make_project(tmp_path / "repo", raw_dir)


@pytest.fixture(scope="module")
def reproduced_baseline(tmp_path_factory) -> tuple[Path, str]:
    """One `dvc repro` of the tiny project, committed, shared by the tests that start from a trained
    pipeline (each works on its own copy): (the repository, what the first repro printed)."""
    folder = tmp_path_factory.mktemp("baseline")
    repo = make_project(folder / "repo", make_raw_dir(folder))
    output = run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    return repo, output


@pytest.fixture
def reproduced(reproduced_baseline, tmp_path) -> Path:
    """A private copy of the reproduced baseline (git history, DVC cache and outputs included)."""
    return Path(shutil.copytree(reproduced_baseline[0], tmp_path / "repo", symlinks=True))


def test_dvc_repro_runs_clean_and_reruns_only_what_changed(reproduced_baseline, reproduced):
    project, first = reproduced, reproduced_baseline[1]
    assert stages_run(first) == {"prepare", "tokenize", "binarize", "train", "evaluate", "sample", "export"}
    for path in ("models/best.pt", "models/latest.pt", "models/final.pt", "samples/samples.md",
                 "metrics/train_plots/val_loss.tsv", "export/model.safetensors", "export/README.md"):
        assert (project / path).is_file(), path
    meta = json.loads((project / "data/bin/meta.json").read_text())
    assert meta["vocab_size"] == 300 and meta["splits"]["val"]["tokens"] > 0
    corpus = json.loads((project / "metrics/corpus.json").read_text())
    assert corpus["train"]["documents"] == 2 and corpus["val"]["documents"] == 1

    assert json.loads(run(["dvc", "status", "--json"], project)) == {}
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], project)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tokenizer"]["vocab_size"] = 290
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = stages_run(run(["dvc", "repro", "binarize"], project))  # the stages up to the bins (training would follow)
    assert rerun == {"tokenize", "binarize"}
    assert json.loads((project / "data/bin/meta.json").read_text())["vocab_size"] == 290


def test_new_book_in_data_raw_reruns_prepare(reproduced):
    project = reproduced
    (project / "data/raw/delta.txt").write_text("A new tale of the moors and mist.\n" * 50, encoding="utf-8")
    assert "prepare" in stages_run(run(["dvc", "repro", "prepare"], project))  # the rest follows as above
    corpus = json.loads((project / "metrics/corpus.json").read_text())
    assert corpus["train"]["documents"] + corpus["val"]["documents"] == 4


def test_bad_params_fail_with_one_line(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["n_layers"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["python", "stages/prepare.py", "data/raw", "data/processed", "metrics/corpus.json"],
                          cwd=project, env=venv_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("prepare: error: params.yaml: "
                                   "model.n_layers: unknown key (did you mean model.n_layer?)")
    assert not (project / "data/processed").exists()


def test_experiment_changes_training_metrics_and_metrics_diff_shows_them(reproduced):
    project = reproduced
    before = json.loads((project / "metrics/train.json").read_text())

    out = run(["dvc", "exp", "run", "-S", "train.max_iters=8", "-S", "sample.temperature=0.5"], project)
    assert {"train", "evaluate", "sample"} <= stages_run(out) and "prepare" not in stages_run(out)
    after = json.loads((project / "metrics/train.json").read_text())
    assert after["step"] == 8 != before["step"] and after["tokens_seen"] == 2 * before["tokens_seen"]

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project))
    assert diff["metrics/train.json"]["step"] == {"old": before["step"], "new": 8, "diff": 8 - before["step"]}
    for key in ("val_loss", "perplexity", "bits_per_byte"):
        assert key in diff["metrics/eval.json"], key
    assert "train.max_iters" in run(["dvc", "exp", "show", "--csv"], project)
    plots = run(["dvc", "plots", "show", "--json"], project)
    assert "val_loss" in plots and "lr" in plots


def test_sample_only_change_reruns_only_sample(reproduced):
    project = reproduced
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"]["temperature"] = 0.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(run(["dvc", "repro"], project)) == {"sample", "export"}  # the model card quotes samples
    assert "The castle" in (project / "samples/samples.md").read_text()


def test_the_model_is_shared_through_a_dvc_remote(reproduced, tmp_path):
    """dvc push to a local-folder remote, a fresh clone, dvc pull: the checkpoint generates with nothing else,
    and transformers loads the exported folder."""
    pytest.importorskip("transformers", reason="the export extra (transformers) is not installed")
    project = reproduced
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "trained"], project)
    run(["dvc", "push"], project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "export").exists() and not (clone / "models").exists()
    for target in ("export", "models"):  # the model only: no data, no tokenizer file
        run(["dvc", "pull", target], clone)
    assert not (clone / "data" / "tokenizer.json").exists()
    out = run(["gothic-generate", "--checkpoint", "models/best.pt", "--prompt", "The castle", "--max-tokens", "8",
               "--seed", "1", "--device", "cpu"], clone)
    assert out.startswith("The castle")
    # the README's snippet; 4 new tokens: the tiny model's window is 16 and transformers does not slide it
    snippet = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
               "tok, model = AutoTokenizer.from_pretrained('export'), AutoModelForCausalLM.from_pretrained('export')\n"
               "print(tok.decode(model.generate(**tok('The castle', return_tensors='pt'), max_new_tokens=4)[0]))\n")
    assert run(["python", "-c", snippet], clone).startswith("The castle")
    assert "bits per byte" in (clone / "export" / "README.md").read_text()

    # the declared artifact, fetched by name (its latest version tag) without a clone
    run(["git", "tag", "-a", "gothic-gpt@v0.1.0", "-m", "gothic-gpt v0.1.0"], project)  # GTO-style: annotated
    run(["dvc", "artifacts", "get", str(project), "gothic-gpt", "-o", str(tmp_path / "got")], tmp_path)
    got, pulled = (folder / "model.safetensors" for folder in (tmp_path / "got", clone / "export"))
    assert got.read_bytes() == pulled.read_bytes()
