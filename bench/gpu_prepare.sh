#!/usr/bin/env bash
# Run HERE (the machine with PyPI), from the project root, before the device tool's one-call GPU check:
# fills .gpu/ (git-ignored) with what the lent GPU machine lacks and cannot download there:
#   .gpu/wheels/  the pure-Python wheels gothic needs beyond the machine's image (ruamel.yaml reads
#                 params.yaml; the image has torch, tokenizers, numpy, rich, tensorboard, safetensors)
#   .gpu/corpus/  the shared Gothic novels for the real run (../shared does not travel with the tree)
# Then call the device tool's run with carry [".gpu"] (bench/README.md, "The GPU check", has the command).
set -euo pipefail
corpus="${1:-../shared/corpus/gothic}"
python="${PYTHON:-.venv/bin/python}"
mkdir -p .gpu/wheels .gpu/corpus
# the device machine's Python is 3.12 (x86-64); these wheels are pure Python, so the tags only guard
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform any -d .gpu/wheels "ruamel.yaml==0.19.1"
if [ ! -d "$corpus" ]; then
    echo "gpu_prepare.sh: $corpus: no such folder of .txt books; pass the folder as the first argument" >&2
    exit 2
fi
cp "$corpus"/*.txt .gpu/corpus/
du -sh .gpu
echo "ready: .gpu holds $(ls .gpu/wheels | wc -l) wheel(s) and $(ls .gpu/corpus | wc -l) books"
