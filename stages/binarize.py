"""DVC stage `binarize`: split texts + tokenizer -> data/bin/{train,val}.bin, meta.json."""

import sys
from pathlib import Path

from gothic.data import binarize
from gothic.errors import run_main
from gothic.progress import progress_bar


def main(processed_dir: str, tokenizer_path: str, out_dir: str) -> None:
    with progress_bar() as bar:
        def start(total_chars: int):
            task = bar.add_task("encoding", total=total_chars, status="chars")
            return lambda done: bar.advance(task, done)

        meta = binarize(Path(processed_dir), Path(tokenizer_path), Path(out_dir), start)
    splits = meta["splits"]
    print(f"binarize: {splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens ({meta['dtype']})")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "binarize")
