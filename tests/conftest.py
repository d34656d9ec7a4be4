"""Shared fixtures: tiny corpora, tokenizers and configs so every test runs in seconds on a CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = ROOT.parent / "shared" / "corpus" / "gothic"

SLOW_KINDS = ("dvc", "subprocess", "pty")

# DVC reports usage from a background process after each command in a repository that has not turned
# it off (this project's .dvc/config has; `dvc init` in a test's repository has not yet): no test sends it
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: each worker is one of the cores, and so are the stages and scripts it starts; two OpenMP
    # threads per process on a machine that every worker keeps busy only wait for each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items) -> None:
    """What a test is (dvc, subprocess, pty) puts it in the slow lane: `make test` leaves it out.

    The dvc tests (the longest: tens of seconds to two minutes each) go first, so that under pytest -n the
    short ones fill the workers' last minutes and the workers finish together."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("dvc") is None)  # stable: the file order otherwise


# A few paragraphs of public-domain-style prose, enough for a 300-token BPE.
TINY_TEXT = (
    "The castle stood upon the hill, dark against the evening sky. No light burned in its windows,\n"
    "and the wind moaned through the broken gates. Émile paused at the threshold — afraid, yet curious.\n\n"
    "Within, the great hall was silent. Dust lay thick upon the table where the old lord had dined,\n"
    "and the portraits of his ancestors gazed down with pale and hollow eyes.\n\n"
)


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    """The 12 Gutenberg novels beside the project; tests using it skip cleanly when it is absent."""
    if not SHARED_CORPUS.is_dir():
        pytest.skip("../shared/corpus/gothic is not present")
    return SHARED_CORPUS


def make_raw_dir(parent: Path) -> Path:
    """parent/raw with three small books (one with a Gutenberg header and CRLF line ends)."""
    raw = parent / "raw"
    raw.mkdir()
    header = "The Project Gutenberg EBook of X\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
    footer = ("\r\nEnd of the Project Gutenberg EBook of X\r\n\r\n"
              "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicence")
    (raw / "alpha.txt").write_text(header + (TINY_TEXT * 20).replace("\n", "\r\n") + footer, encoding="utf-8",
                                   newline="")
    (raw / "beta.md").write_text(TINY_TEXT.upper() * 20, encoding="utf-8")
    (raw / "nested").mkdir()
    (raw / "nested" / "gamma.txt").write_text(TINY_TEXT[::-1] * 20, encoding="utf-8")
    return raw


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    return make_raw_dir(tmp_path)


@pytest.fixture(scope="session")
def made_demo(tmp_path_factory):
    """`make demo` in a new user's clone, once for the session (test_journeys.make_demo); tests that use
    it share an xdist_group "demo", so that one worker builds it for all of them."""
    if not has_dvc_and_make():
        pytest.skip("needs dvc and make")
    import test_journeys

    return test_journeys.make_demo(tmp_path_factory.mktemp("demo"))


def committed_text(name: str) -> str:
    """A project file as committed (git HEAD), not as the workspace has it: `make demo` (a `dvc exp run`)
    rewrites params.yaml, and the tests must not depend on what the user did in their clone."""
    proc = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (ROOT / name).read_text(encoding="utf-8")


def git_init(path: Path) -> None:
    """A git repo with a local identity (CI machines have none)."""
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.name", "gothic tests"],
                ["git", "config", "user.email", "tests@gothic.invalid"], ["git", "config", "commit.gpgsign", "false"]):
        subprocess.run(cmd, cwd=path, check=True)


def venv_env() -> dict:
    """Environment whose `python` and `dvc` are this interpreter's, so stage commands import gothic."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    return env


def has_dvc() -> bool:
    return shutil.which("dvc", path=venv_env()["PATH"]) is not None


def has_dvc_and_make() -> bool:
    """What the journeys need: they run dvc and the Makefile's targets, as a user does."""
    return has_dvc() and shutil.which("make") is not None


# --- generation / evaluation fixtures -------------------------------------------------------------

# Multi-byte characters on purpose: streaming must never split é, — or an emoji.
GENERATION_TEXT = TINY_TEXT + "Café — naïve façade, the dragon 🐉 slept; “quoted” words… 東京.\n\n"


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    """A 300-token byte-level BPE trained in well under a second, saved as tokenizer.json."""
    from gothic.tokenizer import EOT, save_tokenizer, train_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    text = folder / "train.txt"
    text.write_text(GENERATION_TEXT * 20 + EOT + GENERATION_TEXT.upper() * 20, encoding="utf-8")
    path = folder / "tokenizer.json"
    save_tokenizer(train_tokenizer([text], 300, 2), path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path):
    from gothic.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_path)


def tiny_gpt(vocab_size: int, block_size: int = 32, seed: int = 0, weight_std: float | None = None, **cfg):
    """The real GPT at a tiny size (n_layer=2, n_head=2, n_embd=16), random weights, eval mode.

    weight_std redraws every matrix with that spread: GPT-2's init (0.02) gives near-uniform logits,
    so untrained greedy text is one token repeated; 0.5 gives peaked, varied output.
    """
    import torch

    from gothic.config import ModelConfig
    from gothic.model import GPT

    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size, **cfg), vocab_size).eval()
    if weight_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, weight_std)
    return model


def uniform_gpt(vocab_size: int, block_size: int = 32):
    """A tiny GPT whose logits are all exactly 0 (its tied embedding/head is zeroed), so every
    next-token loss is ln(vocab_size): a case with a known answer."""
    import torch

    model = tiny_gpt(vocab_size, block_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def save_tiny_checkpoint(path: Path, model, tokenizer_path: Path, step: int = 7, best_val_loss: float = 9.0,
                         carry_tokenizer: bool = False, history: dict | None = None) -> Path:
    """Write `model` as a gothic checkpoint (what generation and evaluation read) tied to a tokenizer;
    with carry_tokenizer, the tokenizer travels inside as training writes it, else (as in format 1)
    it must be given separately."""
    import dataclasses

    from gothic.checkpoint import RunState, TrainingCheckpoint
    from gothic.tokenizer import tokenizer_sha256

    TrainingCheckpoint(model=model.state_dict(), model_config=dataclasses.asdict(model.cfg),
                       vocab_size=model.vocab_size, tokenizer_sha256=tokenizer_sha256(tokenizer_path),
                       tokenizer=tokenizer_path.read_bytes().decode("utf-8") if carry_tokenizer else None,
                       state=RunState(step=step, best_val_loss=best_val_loss,
                                      **({"history": history} if history else {}))).save(path, resumable=False)
    return path


# --- training fixtures (model / train / checkpoint tests) -------------------------------------------

def tiny_model_config(**overrides):
    """A GPT small enough to train a few steps in well under a second on CPU."""
    from gothic.config import ModelConfig

    return ModelConfig(**{"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides})


def tiny_train_config(**overrides):
    """float32 (bitwise comparisons), a high lr so a few steps show learning, frequent evals."""
    from gothic.config import TrainConfig

    return TrainConfig(**{"max_iters": 12, "batch_size": 4, "grad_accum": 2, "learning_rate": 1.0e-2,
                          "min_lr": 1.0e-3, "warmup_iters": 2, "eval_interval": 4, "eval_iters": 2,
                          "log_interval": 2, "dtype": "float32", "compile": False, "device": "cpu",
                          "seed": 7, **overrides})


@pytest.fixture(scope="session")
def train_bins(tiny_tokenizer_path, tmp_path_factory) -> Path:
    """data/bin built by the real binarize from a repetitive text with tiny_tokenizer_path
    (a few thousand tokens per split: learnable in a few steps)."""
    from gothic.data import binarize
    from gothic.tokenizer import EOT

    folder = tmp_path_factory.mktemp("train_data")
    processed = folder / "processed"
    processed.mkdir()
    (processed / "train.txt").write_text((TINY_TEXT * 30 + EOT) * 2 + TINY_TEXT.upper() * 10, encoding="utf-8")
    (processed / "val.txt").write_text(TINY_TEXT * 10, encoding="utf-8")
    binarize(processed, tiny_tokenizer_path, folder / "bin")
    return folder / "bin"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning
    threads make them ~40x slower; use with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
