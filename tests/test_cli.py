"""What every console script shares: a clean --help, --version, and no torch import before parsing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import gothic

from conftest import venv_env

BIN = Path(sys.executable).parent
SCRIPTS = {"gothic-prepare": "prepare_main", "gothic-tokenize": "tokenize_main", "gothic-train": "train_main",
           "gothic-generate": "generate_main", "gothic-chat": "chat_main"}


@pytest.mark.subprocess
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_clean(script):
    proc = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 0 and proc.stderr == ""
    for noise in ("PosixPath", "default: None", "default: )", "default: []", "default: False"):
        assert noise not in proc.stdout, (noise, proc.stdout)
    assert "--version" in proc.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize("script", SCRIPTS)
def test_version(script):
    proc = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 0 and proc.stdout == f"{script} {gothic.__version__}\n"
    assert gothic.__version__ == importlib.metadata.version("gothic")


@pytest.mark.subprocess
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["--no-such-flag"]])
def test_torch_is_not_imported_before_the_arguments_are_parsed(script, argv):
    """torch takes about a second to import: --help, --version and usage errors must not wait for it."""
    code = (f"import sys\nfrom gothic import cli\ntry:\n    cli.{SCRIPTS[script]}({argv!r})\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=venv_env())
    assert proc.stderr.splitlines()[-1] == "False", proc.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_usage_error_is_one_line_exit_2(script):
    proc = subprocess.run([str(BIN / script), "--no-such-flag"], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"{script}: error: ") and proc.stderr.endswith(f"(see {script} --help)\n")


@pytest.mark.parametrize("present, expected", [((), "models"), (("checkpoints",), "checkpoints"),
                                               (("models", "checkpoints"), "models")])
def test_chat_lists_gothic_trains_checkpoints_when_the_pipeline_published_none(tmp_path, monkeypatch, present,
                                                                               expected):
    from gothic.cli import _default_models_dir

    for folder in present:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "best.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert _default_models_dir() == Path(expected)


@pytest.mark.subprocess
def test_python_dash_m_gothic_runs_each_script():
    """`python -m gothic COMMAND` is the gothic-COMMAND script (what torchrun starts for DDP)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "gothic", *args], capture_output=True, text=True,
                              env=venv_env(), timeout=60)

    trained = run("train", "--help")
    assert trained.returncode == 0 and trained.stdout.startswith("usage: gothic-train")
    assert run("export", "--version").stdout.strip() == f"gothic-export {gothic.__version__}"
    for args in ([], ["bogus"]):
        wrong = run(*args)
        assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert "usage: python -m gothic {prepare,tokenize,train,generate,chat,export}" in wrong.stderr
