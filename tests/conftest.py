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


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """data/raw with three small books (one with a Gutenberg header and CRLF line ends)."""
    raw = tmp_path / "raw"
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
