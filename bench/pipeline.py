"""Wall time of each data stage (prepare, tokenize, binarize) and of a no-op `dvc repro`.

Runs the project's real stage scripts in a temporary git + DVC copy of the project, once on the
built-in corpus and once on ../shared/corpus/gothic (when present).

    python bench/pipeline.py [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import report

ROOT = Path(__file__).resolve().parent.parent
DATA_STAGES = ("prepare", "tokenize", "binarize")


def run(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - start


def make_project(where: Path, sources: list[str], corpus: Path | None) -> Path:
    repo = where / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("gothic", "stages"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True)
    if corpus:
        for book in corpus.glob("*.txt"):
            shutil.copy(book, raw / book.name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["sources"] = sources
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "bench"], ["git", "config", "user.email", "b@x"],
                ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "bench"]):
        run(cmd, repo)
    return repo


def bench_corpus(label: str, sources: list[str], corpus: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_project(Path(tmp), sources, corpus)
        row = {"corpus": label}
        for stage in DATA_STAGES:
            row[f"{stage} s"] = run(["dvc", "repro", "--single-item", stage], repo)
        size = sum(f.stat().st_size for f in (repo / "data" / "processed").glob("*.txt"))
        row["MB"] = size / 1e6
        row["no-op repro s"] = run(["dvc", "repro", *DATA_STAGES], repo)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "gothic")
    args = parser.parse_args()
    rows = [bench_corpus("builtin (Shakespeare)", ["builtin"], None)]
    if args.corpus.is_dir():
        rows.append(bench_corpus(f"{args.corpus.name} ({len(list(args.corpus.glob('*.txt')))} books)",
                                 ["raw"], args.corpus))
    report("pipeline", rows, notes="Each stage timed as `dvc repro --single-item STAGE` (DVC start-up included).")


if __name__ == "__main__":
    main()
