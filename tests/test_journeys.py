"""The paths users take, each in a fresh copy of this repository with HOME set to an empty folder
(so no git identity and nothing cached) and tiny settings: `make demo` then the tests, experiments
in the queue and `dvc exp apply`, stopping and continuing a DVC experiment, the seed's CLI workflow
without DVC, and a diverging run."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_TEXT, has_dvc_and_make

pytestmark = [pytest.mark.dvc, pytest.mark.skipif(not has_dvc_and_make(), reason="needs dvc and make")]

VENV = Path(sys.executable).parent.parent
# -S overrides that make the pipeline take seconds: three small books, a 300-token BPE, a 1-layer GPT, and the
# GGUF export only (the transformers export checks itself in transformers, whose import takes seconds; the runs
# that need it, make demo's and the base the fine-tune journey imports, ask for it with FULL_EXPORT)
TINY = {"prepare.sources": "[raw]", "prepare.val_fraction": "0.3", "tokenizer.vocab_size": "300",
        "model.block_size": "16", "model.n_layer": "1", "model.n_head": "2", "model.n_embd": "16",
        "train.max_iters": "6", "train.batch_size": "2", "train.grad_accum": "1", "train.warmup_iters": "1",
        "train.eval_interval": "3", "train.eval_iters": "2", "train.log_interval": "1", "train.dtype": "float32",
        "train.device": "cpu", "evaluate.device": "cpu", "sample.device": "cpu", "sample.num_samples": "1",
        "sample.max_new_tokens": "8", "sample.prompts": "[Castle]", "export.formats": "[gguf]"}
FULL_EXPORT = {"export.formats": "[transformers,gguf]"}  # params.yaml's


def overrides(**changes: str) -> list[str]:
    return [arg for key, value in {**TINY, **changes}.items() for arg in ("-S", f"{key}={value}")]


@pytest.fixture
def home(tmp_path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def clone(tmp_path, home) -> Path:
    """This repository as a new user gets it: the committed tree (never the workspace, which `make demo`
    and experiments change), with a few small books in data/raw, in a new git repo."""
    return new_clone(tmp_path / "gothic", home)


@pytest.fixture(scope="module")
def trained_clone(tmp_path_factory) -> Path:
    """A new user's clone after one experiment, "base" (the tiny settings), left in the workspace as
    `dvc exp run` leaves it: built once and copied by the journeys that start from a trained workspace
    (xdist_group "trained" keeps them on one worker, so one build serves them all)."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "home").mkdir()
    repo = new_clone(folder / "gothic", folder / "home")
    dvc_identity_run(["dvc", "exp", "run", "-n", "base", *overrides(**FULL_EXPORT)], repo, folder / "home")
    return repo


@pytest.fixture
def trained(trained_clone, tmp_path) -> Path:
    """A private copy of trained_clone (git history, experiments, DVC cache and outputs included)."""
    return Path(shutil.copytree(trained_clone, tmp_path / "gothic", symlinks=True))


def new_clone(repo: Path, home: Path) -> Path:
    repo.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        pytest.skip("the journeys need this project as a git checkout (they start from its last commit)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # extraction filters came with Python 3.11.4 (3.11.2 is still common); the archive is our own tree
        tar.extractall(repo, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for i, text in enumerate((TINY_TEXT, TINY_TEXT.upper(), TINY_TEXT[::-1])):
        (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
        (repo / "data" / "raw" / f"book{i}.txt").write_text(text * 20, encoding="utf-8")
    # make must see .venv as set up (it is this interpreter's): the copy's pyproject.toml is no newer
    installed = (VENV / ".installed").stat().st_mtime if (VENV / ".installed").exists() else time.time()
    os.utime(repo / "pyproject.toml", (installed - 10, installed - 10))
    setup_identity = ["-c", "user.name=setup", "-c", "user.email=setup@gothic.invalid"]
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", *setup_identity, "commit", "-qm", "gothic as cloned"]):
        subprocess.run(cmd, cwd=repo, check=True, env=user_env(home))
    return repo


def user_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_", "PYTEST_"))}
    env.update(HOME=str(home), PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def sh(cmd: list[str], repo: Path, home: Path, ok: bool = True, env_extra: dict | None = None,
       **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env={**user_env(home), **(env_extra or {})}, capture_output=True, text=True,
                          **kwargs)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-3000:]}"
    return proc


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def exp_ref(repo: Path, home: Path, name: str) -> str:
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, home).stdout.split()
    return next(ref for ref in refs if ref.endswith(f"/{name}"))


def demo_recipe(clone: Path, home: Path) -> dict[str, str]:
    """The clone's Makefile DEMO_PARAMS but the sizes and steps, which stay TINY's: the demo's architecture,
    optimizer and data-limited toolbox (weight average, warmup-stable-decay, epochs of windows)."""
    words = sh(["make", "-s", "demo-params"], clone, home).stdout.split()
    settings = dict(word.split("=", 1) for word in words if word.startswith(("model.", "train.")))
    return {key: value for key, value in settings.items() if key not in TINY}


def make_demo(folder: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`make demo` in a new user's clone with no git identity, at the tiny sizes with the demo's recipe
    and both export formats: (the clone, its HOME, what make printed). Built once for the session (conftest's
    made_demo): the make-demo journey goes on from it, and the GGUF tests run its export in llama.cpp."""
    home = folder / "home"
    home.mkdir()
    clone = new_clone(folder / "gothic", home)
    assert sh(["git", "config", "user.email"], clone, home, ok=False).returncode != 0  # really no identity
    demo_params = " ".join(f"-S {arg}" for arg in overrides(**demo_recipe(clone, home), **FULL_EXPORT)[1::2])
    return clone, home, sh(["make", "demo", f"VENV={VENV}", f"DEMO_PARAMS={demo_params}"], clone, home)


@pytest.mark.xdist_group("demo")
def test_make_demo_then_chat_then_tests_without_a_git_identity(made_demo):
    clone, home, demo = made_demo
    out = demo.stdout
    assert "Ran experiment(s)" in out or "Experiment results" in out, out[-2000:]
    assert "No file hash info found" not in demo.stderr  # a first run has nothing to check out: no alarm about it
    assert (clone / "models" / "best.pt").is_file() and (clone / "samples" / "samples.md").is_file()
    workspace_params = (clone / "params.yaml").read_text()  # the workspace holds the demo's values now
    assert "n_layer: 1" in workspace_params and "schedule: wsd" in workspace_params
    assert not (home / ".gitconfig").exists() and "[user]" not in (clone / ".git" / "config").read_text()

    chat = sh(["make", "chat", f"VENV={VENV}"], clone, home, input="The castle\n/quit\n", timeout=120)
    assert "farewell." in chat.stdout and "Traceback" not in chat.stdout + chat.stderr

    tests = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_config.py"], clone, home)
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_make_demo_outside_a_git_repository_says_what_to_do_in_one_line(clone, home):
    shutil.rmtree(clone / ".git")
    proc = sh(["make", "demo", f"VENV={VENV}"], clone, home, ok=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("make demo:")]
    assert len(lines) == 1 and "not a git repository" in lines[0] and "git init" in lines[0]


def test_queued_experiments_then_exp_apply_restores_each_ones_outputs(clone, home):
    """a and b train; c asks to continue a run, which a queued experiment's clean copy does not have."""
    for name, changes in (("a", {"train.seed": "5"}), ("b", {"train.seed": "6"}),
                          ("c", {"train.seed": "5", "train.resume": "true", "train.max_iters": "9"})):
        dvc_identity_run(["dvc", "exp", "run", "--queue", "-n", name, *overrides(**changes)], clone, home)
    run_all = dvc_identity_run(["dvc", "exp", "run", "--run-all"], clone, home, ok=False)
    assert "train.resume: true, but there is no checkpoint to continue" in run_all, run_all[-3000:]
    assert "Failed to reproduce experiment(s) 'c'" in run_all
    seen = {}
    for name in ("a", "b", "a"):
        dvc_identity_run(["dvc", "exp", "apply", name], clone, home)
        ref = exp_ref(clone, home, name)
        assert (clone / "samples" / "samples.md").read_text() == \
            sh(["git", "show", f"{ref}:samples/samples.md"], clone, home).stdout
        assert json.loads((clone / "metrics" / "train.json").read_text()) == \
            json.loads(sh(["git", "show", f"{ref}:metrics/train.json"], clone, home).stdout)
        best = (clone / "models" / "best.pt").read_bytes()
        assert seen.setdefault(name, best) == best
        assert sh(["dvc", "status", "--json"], clone, home).stdout.strip() == "{}"
    assert seen["a"] != seen["b"]

    table = sh(["make", "-s", "compare", f"VENV={VENV}", "COMPARE_ARGS=--csv"], clone, home).stdout
    header = next(line for line in table.splitlines() if line.startswith("Experiment"))
    assert {"bits_per_byte", "best_val_loss", "train.seed"} <= set(header.split(",")), table
    assert "train.documents" not in header and "gothic/" not in header
    # the default view: one column per experiment, within an 80-column terminal (other widths: test_compare)
    view = sh(["make", "-s", "compare", f"VENV={VENV}"], clone, home, env_extra={"COLUMNS": "80"}).stdout
    print(f"make compare at COLUMNS=80:\n{view}")
    assert max(map(len, view.splitlines())) <= 80, view
    assert {"a", "b", "bits_per_byte", "train.seed"} <= set(view.split()), view
    for chart in ("loss", "learning_rate", "held_out_bits_per_byte"):
        assert (clone / "dvc_plots" / "compare" / f"{chart}.png").stat().st_size > 10_000

    # once a's run is committed, a queued experiment continues its model to a larger max_iters
    sh(["git", "add", "-A"], clone, home)
    sh(["git", "-c", "user.name=me", "-c", "user.email=me@gothic.invalid", "commit", "-qm", "keep a"], clone, home)
    dvc_identity_run(["dvc", "exp", "run", "--queue", "-n", "d",
                      *overrides(**{"train.seed": "5", "train.resume": "true", "train.max_iters": "9"})], clone, home)
    run_d = dvc_identity_run(["dvc", "exp", "run", "--run-all"], clone, home)
    assert "resuming at step 6, to step 9" in run_d, run_d[-3000:]



IDENTITY = {"GIT_AUTHOR_NAME": "gothic tests", "GIT_AUTHOR_EMAIL": "t@gothic.invalid",
            "GIT_COMMITTER_NAME": "gothic tests", "GIT_COMMITTER_EMAIL": "t@gothic.invalid"}


def dvc_identity_run(cmd: list[str], repo: Path, home: Path, ok: bool = True) -> str:
    """A dvc command that commits experiments, with an identity given as `make demo` gives it; its output
    (stdout and stderr together).

    The output goes through a file, not a pipe: `--run-all` leaves its queue worker running (it stops
    itself after 10 s with an empty queue), and that worker holds the command's stdout, so reading a
    pipe to its end would wait for the worker as well; a user's terminal gets its prompt back at once."""
    started = time.time()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as output:
        proc = subprocess.run(cmd, cwd=repo, env={**user_env(home), **IDENTITY}, stdout=output,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        output.seek(0)
        printed = output.read()
    print(f"{time.time() - started:.0f}s: {' '.join(cmd[:4])}")
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{printed[-6000:]}"
    return printed




def checkpoint_run(path: Path) -> tuple[int, int] | None:
    """(train.seed, step) of the run a checkpoint holds."""
    try:
        ckpt = torch.load(path, weights_only=True, mmap=True)
        return ckpt["run_identity"]["train"]["seed"], ckpt["step"]
    except Exception:  # not there yet, or being replaced this instant
        return None


def stop_when_training(command: list[str], clone: Path, home: Path, seed: int, after: int = 0) -> tuple[int, str]:
    """Start `command`, Ctrl+C it once its run (train.seed `seed`) has saved latest.pt past step `after`;
    (the step it stopped at, what it printed)."""
    proc = subprocess.Popen(command, cwd=clone, env={**user_env(home), **IDENTITY}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while (run := checkpoint_run(clone / "checkpoints" / "latest.pt")) is None or run[0] != seed or run[1] <= after:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl+C sends to the terminal's foreground process group
    stopped_output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "stopped at step" in stopped_output, stopped_output[-2000:]
    return torch.load(clone / "checkpoints" / "latest.pt", weights_only=True)["step"], stopped_output


@pytest.mark.xdist_group("trained")
def test_a_stopped_dvc_experiment_continues_where_it_stopped_even_after_another_one(trained, home):
    """Ctrl+C in `dvc exp run` (experiment A), in a workspace that holds a finished run: A's command again
    continues A (train.resume: auto), not the older run. Stopped a second time, then experiment B run to
    the end in the same workspace: A is kept in checkpoints/stopped/, and A's command brings it back and
    ends with the weights of an A never stopped."""
    clone = trained
    sh(["git", "-c", "user.name=setup", "-c", "user.email=s@gothic.invalid", "commit", "-qam", "a finished run"],
       clone, home)
    long = {"train.max_iters": "150", "train.eval_interval": "10", "train.log_interval": "10"}
    command_a = ["dvc", "exp", "run", *overrides(**long, **{"train.seed": "4"})]
    first_stop, _ = stop_when_training(command_a, clone, home, seed=4)
    assert 0 < first_stop < 150
    stopped_at, continued = stop_when_training(command_a, clone, home, seed=4, after=first_stop)
    assert f"resuming at step {first_stop}" in continued and first_stop < stopped_at < 150, continued[-2000:]

    b = dvc_identity_run(["dvc", "exp", "run", *overrides(**{"train.seed": "5"})], clone, home)
    assert f"stopped at step {stopped_at} of 150: kept in checkpoints/stopped/" in b, b[-2000:]
    assert torch.load(clone / "models" / "final.pt", weights_only=True)["run_identity"]["train"]["seed"] == 5

    again = dvc_identity_run(command_a, clone, home)
    assert f"bringing back this run, stopped at step {stopped_at} of 150" in again, again[-2000:]
    assert f"resuming at step {stopped_at}" in again and not list((clone / "checkpoints" / "stopped").iterdir())
    shutil.copy(clone / "models" / "final.pt", clone.parent / "continued.pt")
    dvc_identity_run(command_a + ["-S", "train.resume=false"], clone, home)  # A never stopped
    assert same_weights(clone.parent / "continued.pt", clone / "models" / "final.pt")


@pytest.mark.xdist_group("trained")
def test_a_failed_train_stage_does_not_force_a_retrain(trained, home):
    clone = trained  # the workspace of a finished `dvc exp run`
    params = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(params.replace("n_embd: 16", "n_embd: 65"))
    failed = sh(["dvc", "repro", "train"], clone, home, ok=False)
    assert failed.returncode != 0 and "model.n_embd=65 must be divisible by model.n_head=2" in failed.stderr
    (clone / "params.yaml").write_text(params)
    assert sh(["dvc", "status", "--json"], clone, home).stdout.strip() == "{}"
    assert "Data and pipelines are up to date" in sh(["dvc", "repro"], clone, home).stdout


TINY_CLI = ["--batch-size", "2", "--grad-accum", "1", "--set", "model.block_size=16", "--set", "model.n_layer=1",
            "--set", "model.n_head=2", "--set", "model.n_embd=16", "--set", "train.warmup_iters=1", "--set",
            "train.eval_interval=3", "--set", "train.eval_iters=2", "--set", "train.log_interval=1", "--set",
            "train.dtype=float32", "--set", "train.device=cpu"]


def test_the_seed_cli_workflow_without_dvc(clone, home):
    """The seed README's steps: splits, gothic-tokenize, gothic-train (which encodes the texts), then
    gothic-generate and gothic-chat on checkpoints/best.pt; then `--resume --max-iters N`."""
    sh(["gothic-prepare", "--sources", "raw", "--val-fraction", "0.3"], clone, home)
    sh(["gothic-tokenize", "--vocab-size", "300"], clone, home)
    trained = sh(["gothic-train", "--max-iters", "6", *TINY_CLI], clone, home)
    assert "checkpoints in checkpoints" in trained.stdout
    assert {"best.pt", "latest.pt", "final.pt"} <= {p.name for p in (clone / "checkpoints").iterdir()}
    text = sh(["gothic-generate", "--checkpoint", "checkpoints/best.pt", "--prompt", "The castle", "--max-tokens",
               "8", "--seed", "1"], clone, home).stdout
    assert text.startswith("The castle") and len(text) > len("The castle")
    chat = sh(["gothic-chat", "--checkpoint", "checkpoints/best.pt", "--device", "cpu"], clone, home,
              input="The night\n/quit\n", timeout=120)
    assert "farewell." in chat.stdout

    sh(["gothic-train", "--resume", "--max-iters", "12", *TINY_CLI], clone, home)
    lrs = [row["lr"] for row in torch.load(clone / "checkpoints" / "final.pt", weights_only=True)["history"]["train"]]
    assert len(lrs) == 12 and all(b <= a + 1e-12 for a, b in zip(lrs[1:], lrs[2:], strict=False)), lrs


def test_a_diverging_run_stops_with_one_line_and_keeps_loadable_checkpoints(clone, home):
    sh(["gothic-prepare", "--sources", "raw", "--val-fraction", "0.3"], clone, home)
    sh(["gothic-tokenize", "--vocab-size", "300"], clone, home)
    sh(["gothic-train", "--max-iters", "6", *TINY_CLI], clone, home)
    before = {p.name: p.read_bytes() for p in (clone / "checkpoints").glob("*.pt")}
    proc = sh(["gothic-train", "--max-iters", "6", "--lr", "1e10", "--set", "train.min_lr=0.0", *TINY_CLI],
              clone, home, ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "training diverged at step" in errors[0] and "loss is nan" in errors[0]
    assert {p.name: p.read_bytes() for p in (clone / "checkpoints").glob("*.pt")} == before
    sh(["gothic-generate", "--checkpoint", "checkpoints/best.pt", "--max-tokens", "4"], clone, home)


def test_gothic_and_dvc_read_params_yaml_the_same_way(clone, home):
    """YAML 1.1 and 1.2 disagree on `3e-4` (a string in 1.1) and `no` (false in 1.1): gothic reads
    what DVC reads, from the file and from a --set value."""
    text = (clone / "params.yaml").read_text()
    assert "learning_rate: 3.0e-4" in text and '    - "The night was"' in text
    (clone / "params.yaml").write_text(text.replace("learning_rate: 3.0e-4", "learning_rate: 3e-4")
                                       .replace('    - "The night was"', "    - no"))
    dvc = json.loads(sh([sys.executable, "-c", "import json, dvc.api; print(json.dumps(dvc.api.params_show()))"],
                        clone, home).stdout)
    assert dvc["train"]["learning_rate"] == 0.0003 and dvc["sample"]["prompts"][0] == "no"
    read = ("import json, sys; from gothic.params_file import load_params; "
            "p = load_params('params.yaml', sys.argv[1:]); "
            "print(json.dumps([p.train.learning_rate, p.sample.prompts, p.train.min_lr]))")
    from_file = json.loads(sh([sys.executable, "-c", read], clone, home).stdout)
    assert from_file[:2] == [dvc["train"]["learning_rate"], dvc["sample"]["prompts"]]
    from_set = json.loads(sh([sys.executable, "-c", read, "train.min_lr=3e-5"], clone, home).stdout)
    assert from_set[2] == 3e-5


@pytest.mark.xdist_group("trained")
def test_fine_tune_a_base_from_an_earlier_experiment_and_from_another_repository(trained, home, tmp_path):
    """README's recipes (a) and (b): a base trained on data/raw's books in one experiment ("base", the
    trained fixture's), fine-tuned on other books in the next; the same base brought into another
    repository with `dvc import`."""
    clone = trained
    dvc_identity_run(["dvc", "exp", "apply", "base"], clone, home)
    base_tokenizer = (clone / "data" / "tokenizer.json").read_bytes()
    shutil.copy(clone / "models" / "best.pt", clone / "data" / "base" / "best.pt")
    shutil.copy(clone / "data" / "processed" / "val.txt", clone / "data" / "heldout" / "base_val.txt")
    sh(["dvc", "add", "data/base/best.pt"], clone, home)
    for book in (clone / "data" / "raw").glob("book*.txt"):  # the new books replace the base's
        book.unlink()
    for i in range(3):
        (clone / "data" / "raw" / f"letters{i}.txt").write_text(f"Dear Margaret, letter {i} came. " * 150,
                                                                encoding="utf-8")
    sh(["git", "add", "-A"], clone, home)
    sh(["git", "-c", "user.name=me", "-c", "user.email=me@gothic.invalid", "commit", "-qm", "the base"], clone, home)
    finetune = overrides(**{"train.init_from": "data/base/best.pt", "evaluate.extra": "[data/heldout/base_val.txt]",
                            "train.max_iters": "40", "train.eval_interval": "10"})
    command = ["dvc", "exp", "run", "-n", "ft", *finetune]
    proc = subprocess.Popen(command, cwd=clone, env={**user_env(home), **IDENTITY}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (clone / "checkpoints" / "latest.pt").is_file() or \
            "base" not in torch.load(clone / "checkpoints" / "latest.pt", weights_only=True)["run_identity"]:
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C
    stopped = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "stopped at step" in stopped, stopped[-2000:]
    again = dvc_identity_run(command, clone, home)
    assert "resuming at step" in again and "fine-tuning" not in again.split("resuming at step")[0][-200:], again[-2000:]
    assert (clone / "data" / "tokenizer.json").read_bytes() == base_tokenizer
    assert json.loads((clone / "metrics" / "tokenizer.json").read_text())["from_base"] == "data/base/best.pt"
    # the first logged validation loss is the base's loss on the new books: its weights were loaded
    from gothic.data import load_training_data
    from gothic.loading import load_model
    from gothic.runtime import resolve_precision
    from gothic.train import estimate_loss

    model, _ = load_model(clone / "data" / "base" / "best.pt")
    val = load_training_data(clone / "data" / "bin", clone / "data" / "tokenizer.json", 16).val
    expected = estimate_loss(model.train(), val, 2, 2, 1337, resolve_precision("float32", torch.device("cpu")))
    history = torch.load(clone / "models" / "final.pt", weights_only=True)["history"]["val"]
    assert history[0]["step"] == 0 and history[0]["val_loss"] == expected
    evaluation = json.loads((clone / "metrics" / "eval.json").read_text())
    assert 0 < evaluation["extra"]["base_val"]["bits_per_byte"] < 20
    steps = [row["step"] for row in torch.load(clone / "models" / "final.pt", weights_only=True)["history"]["train"]]
    assert steps == list(range(1, 41)), steps  # one run, continued: every step logged once
    shutil.copy(clone / "models" / "final.pt", tmp_path / "continued.pt")
    dvc_identity_run(["dvc", "exp", "run", "-n", "ft-straight", *finetune, "-S", "train.resume=false"], clone, home)
    assert same_weights(tmp_path / "continued.pt", clone / "models" / "final.pt")  # the Ctrl+C changed nothing
    for name, expected_best in (("base", clone / "data" / "base" / "best.pt"), ("ft", None)):
        dvc_identity_run(["dvc", "exp", "apply", name], clone, home)
        if expected_best is not None:
            assert same_weights(expected_best, clone / "models" / "best.pt")
        else:
            assert torch.load(clone / "models" / "best.pt", weights_only=True)["run_identity"]["base"]
    view = sh(["make", "-s", "compare", f"VENV={VENV}"], clone, home, env_extra={"COLUMNS": "120"}).stdout
    # main is the base's commit: base and fine-tune side by side, the base corpus's held-out figure a metric
    assert {"main", "ft", "train.init_from", "data/base/best.pt"} <= set(view.split()), view
    assert view.index("extra.base_val.bits_per_byte") < view.index("params that differ"), view

    # (b) another repository imports the base's export (`dvc import`) and fine-tunes it
    dvc_identity_run(["dvc", "exp", "apply", "base"], clone, home)
    sh(["git", "add", "-A"], clone, home)
    sh(["git", "-c", "user.name=me", "-c", "user.email=me@gothic.invalid", "commit", "-qm", "base applied"], clone,
       home)
    other = new_clone(tmp_path / "other", home)
    sh(["dvc", "import", str(clone), "export", "-o", "data/base/export"], other, home)
    sh(["git", "add", "-A"], other, home)
    sh(["git", "-c", "user.name=me", "-c", "user.email=me@gothic.invalid", "commit", "-qm", "import"], other, home)
    imported = dvc_identity_run(["dvc", "exp", "run", *overrides(**{"train.init_from": "data/base/export"})], other,
                                home)
    assert "fine-tuning data/base/export" in imported, imported[-2000:]
    assert (other / "data" / "tokenizer.json").read_bytes() == base_tokenizer
