"""DVC stage `prepare`: built-in corpus + data/raw/ -> data/processed/{train,val}.txt, metrics/corpus.json."""

import sys
import time
from pathlib import Path

from gothic.corpus import prepare
from gothic.errors import run_main
from gothic.files import write_json
from gothic.params_file import load_params


def main(raw_dir: str, out_dir: str, metrics_path: str) -> None:
    params = load_params("params.yaml", require=("prepare",))
    started = time.perf_counter()
    metrics = prepare(params.prepare, Path(raw_dir), Path(out_dir))
    write_json(metrics_path, metrics)
    n_bytes = metrics["train"]["bytes"] + metrics["val"]["bytes"]
    print(f"prepare: {metrics['train']['documents']} train / {metrics['val']['documents']} val documents, "
          f"{n_bytes:,} bytes ({n_bytes / 1e6 / (time.perf_counter() - started):.1f} MB/s)")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "prepare")
