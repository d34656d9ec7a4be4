"""Atomic writes: write errors are one line, temp files never outlive a failure or a killed writer,
and DVC never tracks one left inside an output folder."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gothic.errors import GothicError
from gothic.files import WriteError, atomic_path, remove_stale_temps, write_text

from conftest import ROOT, git_init, has_dvc, venv_env

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
import gothic_faults  # noqa: E402


def dead_pid() -> int:
    """A pid no process has: a child that has exited and been reaped."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_write_replaces_atomically_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "a.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two" and os.listdir(target.parent) == ["a.txt"]


def test_stale_temps_of_the_same_target_are_removed_at_the_next_write(tmp_path):
    """A killed writer leaves `.latest.pt.<pid>.<random>.tmp`; the next write of latest.pt removes it,
    but never the temp of a writer that still runs, nor another target's."""
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".latest.pt.{dead}.k2j4_x.tmp"
    running = tmp_path / f".latest.pt.{alive}.abc123.tmp"
    other = tmp_path / f".latest.pt.bak.{dead}.abc123.tmp"  # belongs to latest.pt.bak
    old_style = tmp_path / ".latest.pt.q8w7e6r5.tmp"  # gothic before pids: removed once an hour old
    for path in (stale, running, other, old_style):
        path.write_text("half a checkpoint")
    os.utime(old_style, (0, 0))
    write_text(tmp_path / "latest.pt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["latest.pt", running.name, other.name])
    assert remove_stale_temps(tmp_path / "latest.pt") == []


@pytest.mark.parametrize("fault, error, message", [
    ("full:a.txt", WriteError, "No space left on device (free some disk space"),
    ("readonly:{dir}", WriteError, "Read-only file system (the filesystem is read-only"),
])
def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, fault, error, message):
    target = tmp_path / "a.txt"
    target.write_text("old")
    for owner, name, replacement in gothic_faults.patches(fault.format(dir=tmp_path)):
        monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(error) as info:
        write_text(target, "new" * 1000)
    monkeypatch.undo()
    assert message in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 1
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_file_in_the_way_is_a_usage_error(tmp_path):
    (tmp_path / "params.yaml").write_text("x")
    with pytest.raises(GothicError, match="a file stands where a folder is needed") as info:
        write_text(tmp_path / "params.yaml" / "t.json", "{}")
    assert not isinstance(info.value, WriteError) and info.value.exit_code == 2


def test_other_errors_in_the_body_pass_through_and_remove_the_temp(tmp_path):
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
        raise FileNotFoundError(errno.ENOENT, "an input vanished", "input.txt")
    assert info.value.errno == errno.ENOENT and os.listdir(tmp_path) == []


@pytest.mark.dvc
@pytest.mark.skipif(not has_dvc(), reason="dvc is not installed")
def test_dvc_ignores_a_temp_left_inside_an_output_folder(tmp_path):
    """With the project's .dvcignore, a temp a killed run left in models/ is not part of the output."""
    git_init(tmp_path)
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: mkdir -p models && echo w > models/best.pt && echo half > "
        "models/.latest.pt.4242.x1y2z3.tmp\n    outs:\n      - models:\n          persist: true\n")
    env = venv_env()

    def dvc(*args: str) -> str:
        return subprocess.run(["dvc", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=True).stdout

    dvc("init", "-q", "--force")
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")  # dvc init writes its own
    dvc("repro", "-q")
    assert dvc("check-ignore", "models/.latest.pt.4242.x1y2z3.tmp").strip() == "models/.latest.pt.4242.x1y2z3.tmp"
    lock = (tmp_path / "dvc.lock").read_text()
    assert "nfiles: 1" in lock  # models/ holds best.pt only
    assert "up to date" in dvc("status")


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, "No space left on device", "models/logs/events.out"),
     "prog: error: models/logs/events.out: No space left on device (free some disk space and run again)\n"),
    (PermissionError(errno.EACCES, "Permission denied", "data/raw/book.txt"),
     "prog: error: data/raw/book.txt: Permission denied (check the permissions)\n"),
])
def test_run_main_shows_a_refused_write_anywhere_as_one_line(capsys, error, line):
    """Writes outside atomic_path (TensorBoard logs, say) meet a full disk too."""
    from gothic.errors import run_main

    def main():
        raise error

    with pytest.raises(SystemExit) as info:
        run_main(main, "prog")
    assert info.value.code == 1 and capsys.readouterr().err == line


def test_run_main_keeps_the_traceback_of_an_unforeseen_error():
    from gothic.errors import run_main

    with pytest.raises(FileNotFoundError):
        run_main(lambda: open("/nonexistent/x"), "prog")
