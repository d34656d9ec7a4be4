"""DVC stage `binarize`: split texts + tokenizer -> data/bin/{train,val}.bin, meta.json."""

import sys
import time
from pathlib import Path

from gothic.data import binarize
from gothic.errors import run_main
from gothic.progress import bytes_progress_bar


def main(processed_dir: str, tokenizer_path: str, out_dir: str) -> None:
    started = time.perf_counter()
    with bytes_progress_bar() as bar:
        def start(total_bytes: int):
            task = bar.add_task("encoding", total=total_bytes)
            return lambda done: bar.advance(task, done)

        meta = binarize(Path(processed_dir), Path(tokenizer_path), Path(out_dir), start)
    splits, seconds = meta["splits"], time.perf_counter() - started
    n_bytes = splits["train"]["bytes"] + splits["val"]["bytes"]
    print(f"binarize: {splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens ({meta['dtype']}), "
          f"{n_bytes / 1e6 / seconds:.1f} MB/s")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "binarize")
