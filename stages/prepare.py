"""DVC stage `prepare`: built-in corpus + data/raw/ -> data/processed/{train,val}.txt, metrics/corpus.json."""

import sys
from pathlib import Path

from gothic.config import load_params
from gothic.corpus import prepare
from gothic.errors import run_main
from gothic.files import write_json


def main(raw_dir: str, out_dir: str, metrics_path: str) -> None:
    params = load_params("params.yaml", require=("prepare",))
    metrics = prepare(params.prepare, Path(raw_dir), Path(out_dir))
    write_json(metrics_path, metrics)
    print(f"prepare: {metrics['train']['documents']} train / {metrics['val']['documents']} val documents, "
          f"{metrics['train']['bytes'] + metrics['val']['bytes']:,} bytes")


if __name__ == "__main__":
    run_main(lambda: main(*sys.argv[1:]), "prepare")
