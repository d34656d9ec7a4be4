# gothic: `make test` and `make demo` work on a fresh clone with nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which torch make setup installs. With no NVIDIA driver (no /proc/driver/nvidia, no nvidia-smi) the
# pinned version from PyTorch's CPU index: on Linux PyPI's torch is the CUDA build, gigabytes a CPU never
# uses. Where that index cannot be reached (an offline mirror, a proxy) pip's configured index serves it.
# With a driver, the regular (CUDA) build from pip's index. setup says which build it installed.
# Override: make setup TORCH_SPEC=... TORCH_INDEX=... (TORCH_INDEX= for pip's own index)
NVIDIA_DRIVER := $(or $(wildcard /proc/driver/nvidia/version),$(shell command -v nvidia-smi 2>/dev/null))
TORCH_SPEC ?= $(if $(NVIDIA_DRIVER),torch,torch==2.13.0)
TORCH_INDEX ?= $(if $(NVIDIA_DRIVER),,https://download.pytorch.org/whl/cpu)
# `dvc exp run` records each experiment as a git commit; on a machine without a git identity
# (a fresh container, CI) give it one for that command only. No git config is ever written.
GIT_IDENTITY := $(if $(shell git config user.email 2>/dev/null),,GIT_AUTHOR_NAME="gothic demo" \
	GIT_AUTHOR_EMAIL=demo@gothic.invalid GIT_COMMITTER_NAME="gothic demo" GIT_COMMITTER_EMAIL=demo@gothic.invalid)
# stages run `python ...`: make that the virtual environment's python
RUN    := PATH="$(abspath $(BIN)):$$PATH"

# The CPU demo profile: the pipeline sized to run in about ten minutes on two cores, applied as DVC
# parameter overrides (params.yaml keeps the seed configuration). It uses the modern switches
# (rotary, RMSNorm, QK-norm, ReLU^2, untied head, Muon), which reach clearly lower held-out bits per
# byte than the seed architecture in the same CPU minutes, and params.yaml's train.dtype: bfloat16,
# which trains 1.5x faster with the same quality per step on a CPU with bf16 units and runs as
# float32 on one without. Weight decay 1.0 (10x the seed's): a corpus of a few million tokens is
# seen several times in ten minutes, and the stronger decay lowered held-out bits per byte in both
# screened corpora. The data-limited toolbox (a weight average, warmup-stable-decay, every window
# once per pass) and Muon's bf16 step lowered them again in both, by 2.3% and 1.0% at ten minutes
# (two seeds each); wider or deeper models, a longer context, a smaller vocabulary and dropout did
# not (bench/README.md, bench/quality.py). 1,000 steps keep make demo near ten minutes on both kinds
# of CPU: 7 minutes of training with bf16 units, 9.6 without (426 and 576 ms a step on an AMD Zen 4,
# fp32 forced for the second).
DEMO_PARAMS ?= -S model.n_layer=4 -S model.n_head=4 -S model.n_embd=256 -S model.block_size=256 \
	-S model.pos_embedding=rope -S model.norm=rmsnorm -S model.qk_norm=true -S model.mlp=relu2 \
	-S model.tie_embeddings=false -S model.bias=false \
	-S train.optimizer=muon -S train.muon_lr=0.02 -S train.learning_rate=3.0e-3 -S train.min_lr=3.0e-4 \
	-S train.batch_size=8 -S train.grad_accum=1 -S train.max_iters=1000 -S train.warmup_iters=50 \
	-S train.weight_decay=1.0 -S train.eval_interval=150 -S train.eval_iters=10 \
	-S train.ema=0.99 -S train.schedule=wsd -S train.decay_frac=0.3 -S train.sampling=epochs

# Fine-tuning a base (train.init_from, README "Fine-tune a trained model") on a few hundred KB, on top of
# DEMO_PARAMS: fewer steps at lower peak rates, chosen by bench/finetune.py (bench/README.md).
# At the demo's own rates a base only got worse on a new author's book (its val loss rose from the first
# step); a tenth of them gained 19% bits per byte over training from scratch in the same steps. It keeps
# the cosine schedule, random windows and no weight average it was measured with.
FINETUNE_PARAMS ?= -S train.max_iters=300 -S train.warmup_iters=15 -S train.eval_interval=50 \
	-S train.learning_rate=3.0e-4 -S train.min_lr=3.0e-5 -S train.muon_lr=0.002 \
	-S train.ema=0.0 -S train.schedule=cosine -S train.sampling=random

.PHONY: help setup demo demo-params finetune-params repro test test-slow test-all lint tensorboard plots compare chat clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv: torch (CPU or CUDA build), gothic, dev tools

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make setup: gothic needs Python 3.11 or newer, $(PYTHON) is " + sys.version.split()[0] + "; install one and run make setup PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "make setup: $(if $(NVIDIA_DRIVER),NVIDIA driver found ($(NVIDIA_DRIVER)): the CUDA build of torch,no NVIDIA driver found: the CPU-only build of torch)"
	@index='$(TORCH_INDEX)'; \
	if [ "$(origin TORCH_INDEX)" = file ] && [ -n "$$index" ] && ! $(BIN)/python -c \
		'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$$index/" 2>/dev/null; then \
		echo "make setup: $$index cannot be reached; taking $(TORCH_SPEC) from pip's configured index"; index=; fi; \
	echo "$(BIN)/python -m pip install -q \"$(TORCH_SPEC)\" $${index:+--index-url $$index}"; \
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $${index:+--index-url $$index}
	@$(BIN)/python -c 'import torch; print("make setup: installed torch", torch.__version__, \
		f"(the CUDA {torch.version.cuda} build)" if torch.version.cuda else "(the CPU-only build)")'
	@# pin the torch just installed, so no dependency (transformers in the export extra) swaps it
	$(BIN)/python -m pip freeze | grep -i '^torch==' > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev]"
	@# pip compiles an installed package's bytecode, never an editable one's: where PYTHONDONTWRITEBYTECODE is
	@# set (containers, CI) every process would compile gothic from source again (0.16 s each on an AMD Zen 5 core)
	$(BIN)/python -m compileall -q gothic
	touch $@

# The slow lane also runs the GGUF export in a real llama.cpp: llama-cpp-python, compiled from its
# source the first time (about 6 minutes on 2 cores; pip keeps the wheel), so only it waits for that.
$(VENV)/.llama-cpp: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev,llama-cpp]"
	touch $@

demo: setup  ## the pipeline on the built-in corpus, CPU profile (~10 min)
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make demo: this folder is not a git repository (a ZIP download?), and DVC records experiments in git: run  git init -q && git add -A && git -c user.name=me -c user.email=me@example.com commit -qm gothic  first, or git clone the repository" >&2; exit 2; }
	@# gothic.dvc_run is dvc without the "No file hash info found" warnings of a first run (nothing to check out yet)
	$(GIT_IDENTITY) $(RUN) python -m gothic.dvc_run exp run $(DEMO_PARAMS)
	@echo "Done. Talk to the model: make chat   Metrics: $(BIN)/dvc metrics show"

demo-params:  ## print the demo profile's -S overrides
	@echo $(DEMO_PARAMS)

finetune-params:  ## print the fine-tuning recipe's -S overrides
	@echo $(FINETUNE_PARAMS)

repro: setup  ## dvc repro with params.yaml as it is
	$(RUN) dvc repro

# Two lanes (pyproject.toml's markers): `make test` after every change, `make test-all` before a commit
# and in CI. Both run on every core (pytest-xdist): the tests share nothing but a few module fixtures (one
# trained repository copied by several tests), whose tests an xdist_group keeps on one worker (loadgroup).
# A worker that crashes (a segfault in a native library) fails its test and is not replaced: replaced, it
# once left the run waiting forever.
# PYTHONDONTWRITEBYTECODE (set in many containers and CI images) would also stop pytest keeping its rewritten
# test modules in tests/__pycache__ (ignored by git): every worker of every lane would rewrite and compile
# them all again, 3 s of each worker's start on a 2-core AMD Zen 5.
PYTEST := $(RUN) PYTHONDONTWRITEBYTECODE= python -m pytest -q -n auto --dist loadgroup --max-worker-restart=0
test: setup  ## fast lane: no dvc runs, subprocesses, ptys (under a minute)
	$(PYTEST) -m "not slow"

test-slow: setup $(VENV)/.llama-cpp  ## the slow lane alone, on every core
	$(PYTEST) -m slow --durations=15

test-all: lint test test-slow  ## lint, the fast lane, then the slow lane (CI runs this)

lint: setup  ## ruff
	$(BIN)/ruff check gothic stages tests bench

# `make compare`: one column per experiment (so it reads at 80 columns), the headline metrics and the
# params that differ, and dvc.yaml's charts of those experiments in dvc_plots/compare/ (gothic.compare).
# Corpus statistics, step counts, speeds and code hashes stay in `dvc exp show`.
compare: setup  ## experiments side by side, charts in dvc_plots/compare/
	@$(RUN) python -m gothic.compare $(COMPARE_ARGS)

chat: setup  ## talk to models/best.pt (CHAT_ARGS="--temp 1")
	@$(BIN)/gothic-chat --checkpoint models/best.pt $(CHAT_ARGS)

tensorboard: setup  ## TensorBoard on the training logs (live while training runs)
	$(BIN)/tensorboard --logdir checkpoints/logs

# DVC's charts (dvc.yaml's plots section) as PNG and self-contained HTML: they open offline
plots: setup  ## loss, learning-rate, per-document charts: dvc_plots/*.png
	@$(RUN) python -m gothic.plots dvc_plots

clean:  ## remove pipeline outputs (keeps .venv and the DVC cache)
	rm -rf data/processed data/tokenizer.json data/bin models checkpoints logs dvc_plots
