"""Wall time of each data stage (prepare, tokenize, binarize) and of a no-op `dvc repro`; with
`--scale`, wall time, MB/s and peak memory of the data stages on synthetic corpora of given sizes.

Default mode: runs the project's real stage scripts in a temporary git + DVC copy of the project,
once on the built-in corpus and once on ../shared/corpus/gothic (when present).

Scale mode: builds a corpus of each requested size from the built-in plays (documents of 0.3-1 MB,
each a different seeded mix of the plays' paragraphs, some with letters swapped, so the vocabulary
grows with size as a real library's does), then runs each stage script directly (no DVC) and
reads its peak RSS from the kernel (`os.wait4`: the largest process) and, by polling, the peak sum
over its process tree (worker processes included).

    python bench/pipeline.py [--corpus DIR]
    python bench/pipeline.py --scale 100 300 1000 [--work-dir DIR] [--name pipeline-scale]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
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


# --- scale mode ---------------------------------------------------------------------------------
def play_paragraphs() -> list[str]:
    """The built-in plays cut into paragraphs (cleaned the way prepare cleans them)."""
    from gothic.corpus import builtin_files, normalize, strip_markdown

    paragraphs = []
    for _, path in builtin_files():
        paragraphs += [p for p in normalize(strip_markdown(path.read_text(encoding="utf-8"))).split("\n\n") if p]
    return paragraphs


def write_synthetic_corpus(raw: Path, megabytes: float, seed: int = 0) -> int:
    """Write documents of 0.3-1 MB to raw/ until `megabytes` MB; returns the bytes written."""
    rng = random.Random(seed)
    paragraphs = play_paragraphs()
    letters = "abcdefghilmnoprstuy"
    raw.mkdir(parents=True, exist_ok=True)
    total, target, n = 0, int(megabytes * 1e6), 0
    while total < target:
        size = min(rng.randint(300_000, 1_000_000), target - total)
        # a document-specific letter swap applied to a quarter of its paragraphs: new word forms
        a, b = rng.sample(letters, 2)
        swap = str.maketrans(a + b, b + a)
        parts, got = [], 0
        while got < size:
            p = rng.choice(paragraphs)
            parts.append(p.translate(swap) if rng.random() < 0.25 else p)
            got += len(p) + 2
        data = "\n\n".join(parts).encode("utf-8")
        (raw / f"part{n // 100:03d}" / f"doc{n:05d}.txt").parent.mkdir(exist_ok=True)
        (raw / f"part{n // 100:03d}" / f"doc{n:05d}.txt").write_bytes(data)
        total += len(data)
        n += 1
    return total


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall s, peak RSS of the largest process in MB, peak RSS summed over the process tree in MB)."""
    start = time.perf_counter()
    # the copy's gothic/, not the installed one: the benchmark measures the code it copied
    env = dict(os.environ, PYTHONPATH=str(cwd))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tree_peak, done = [0], threading.Event()

    def poll():
        parent = psutil.Process(proc.pid)
        while not done.wait(0.2):
            try:
                procs = [parent, *parent.children(recursive=True)]
                tree_peak[0] = max(tree_peak[0], sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{output.decode(errors='replace')}")
    return wall, usage.ru_maxrss / 1024, max(tree_peak[0], usage.ru_maxrss * 1024) / 1e6


def bench_scale(megabytes: float, work: Path) -> list[dict]:
    repo = work / f"scale-{megabytes:g}"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for folder in ("gothic", "stages"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["sources"] = ["raw"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    n_bytes = write_synthetic_corpus(repo / "data" / "raw", megabytes)
    py = sys.executable
    commands = {"prepare": [py, "stages/prepare.py", "data/raw", "data/processed", "metrics/corpus.json"],
                "tokenize": [py, "stages/tokenize.py", "data/processed", "data/tokenizer.json",
                             "metrics/tokenizer.json"],
                "binarize": [py, "stages/binarize.py", "data/processed", "data/tokenizer.json", "data/bin"]}
    rows = []
    try:
        for stage, cmd in commands.items():
            wall, peak, tree = run_measured(cmd, repo)
            rows.append({"corpus MB": round(n_bytes / 1e6, 1), "stage": stage, "wall s": wall,
                         "MB/s": n_bytes / 1e6 / wall, "peak RSS MB": peak, "tree RSS MB": tree})
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(repo, ignore_errors=True)  # a 2 GB corpus and its bins: never left behind
    total = sum(r["wall s"] for r in rows)
    rows.append({"corpus MB": round(n_bytes / 1e6, 1), "stage": "all three", "wall s": total,
                 "MB/s": n_bytes / 1e6 / total, "peak RSS MB": max(r["peak RSS MB"] for r in rows),
                 "tree RSS MB": max(r["tree RSS MB"] for r in rows)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "gothic")
    parser.add_argument("--scale", type=float, nargs="+", metavar="MB",
                        help="scale mode: synthetic corpora of these sizes in MB")
    parser.add_argument("--work-dir", type=Path, default=None, help="scale mode: where the corpora are built "
                        "(default: a temporary folder; each is deleted after its run)")
    parser.add_argument("--name", default=None, help="results name (default: pipeline or pipeline-scale)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.scale:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            rows = [row for mb in args.scale for row in bench_scale(mb, Path(tmp))]
        # imported only now: it imports torch, and a child started from a large process inherits its
        # peak RSS figure (the kernel keeps the high-water mark across exec)
        from common import report

        report(args.name or "pipeline-scale", rows, results_dir=args.results_dir,
               notes="Each stage run as `python stages/STAGE.py` (no DVC) on a synthetic corpus from the built-in "
                     "plays; MB/s = corpus MB / wall s; peak RSS = largest process (os.wait4), tree RSS = "
                     "peak sum over the stage's processes (polled every 0.2 s).")
        return
    from common import report

    rows = [bench_corpus("builtin (Shakespeare)", ["builtin"], None)]
    if args.corpus.is_dir():
        rows.append(bench_corpus(f"{args.corpus.name} ({len(list(args.corpus.glob('*.txt')))} books)",
                                 ["raw"], args.corpus))
    report(args.name or "pipeline", rows, results_dir=args.results_dir,
           notes="Each stage timed as `dvc repro --single-item STAGE` (DVC start-up included).")


if __name__ == "__main__":
    main()
