# gothic: `make test` and `make demo` work on a fresh clone with nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines take the pinned CPU wheel of torch (any other spec pulls gigabytes of CUDA packages);
# where nvidia-smi exists the default is the regular (CUDA) build. Override: make setup TORCH_SPEC=...
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# Where pip looks for torch. Empty: the usual index (on a stock Linux PyPI's torch is the CUDA build);
# a CPU-only build on such a machine: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
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
# screened corpora, where dropout, wider or deeper models and a larger vocabulary did not help as
# much (bench/README.md, bench/quality.py).
DEMO_PARAMS ?= -S model.n_layer=4 -S model.n_head=4 -S model.n_embd=256 -S model.block_size=256 \
	-S model.pos_embedding=rope -S model.norm=rmsnorm -S model.qk_norm=true -S model.mlp=relu2 \
	-S model.tie_embeddings=false -S model.bias=false \
	-S train.optimizer=muon -S train.muon_lr=0.02 -S train.learning_rate=3.0e-3 -S train.min_lr=3.0e-4 \
	-S train.batch_size=8 -S train.grad_accum=1 -S train.max_iters=900 -S train.warmup_iters=45 \
	-S train.weight_decay=1.0 -S train.eval_interval=150 -S train.eval_iters=10

.PHONY: help setup demo demo-params repro test lint tensorboard plots compare chat clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install gothic with its dev tools

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make setup: gothic needs Python 3.11 or newer, $(PYTHON) is " + sys.version.split()[0] + "; install one and run make setup PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@# pin the torch just installed, so no dependency (transformers in the export extra) swaps it
	$(BIN)/python -m pip freeze | grep -i '^torch==' > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev]"
	touch $@

# The tests also run the GGUF export in a real llama.cpp: llama-cpp-python, compiled from its source
# the first time (about 6 minutes on 2 cores; pip keeps the wheel), so only `make test` waits for it.
$(VENV)/.llama-cpp: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev,llama-cpp]"
	touch $@

demo: setup  ## run the whole pipeline on the built-in corpus with the CPU demo profile (~10 min)
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make demo: this folder is not a git repository (a ZIP download?), and DVC records experiments in git: run  git init -q && git add -A && git -c user.name=me -c user.email=me@example.com commit -qm gothic  first, or git clone the repository" >&2; exit 2; }
	$(GIT_IDENTITY) $(RUN) dvc exp run $(DEMO_PARAMS)
	@echo "Done. Talk to the model: make chat   Metrics: $(BIN)/dvc metrics show"

demo-params:  ## print the demo profile's overrides (bench/quality.py reads its profile from here)
	@echo $(DEMO_PARAMS)

repro: setup  ## dvc repro with params.yaml as it is
	$(RUN) dvc repro

test: setup $(VENV)/.llama-cpp  ## run the test suite (the first time also compiles llama.cpp for its tests)
	$(RUN) python -m pytest

lint: setup  ## ruff
	$(BIN)/ruff check gothic stages tests bench

# `make compare`: experiments side by side in one terminal width, the params that differ and the
# headline metrics; corpus statistics, step counts, speeds and code hashes stay in `dvc exp show`.
COMPARE_DROP := (train|val)\.(documents|bytes|words)$$|vocab_size$$|val_(bytes|tokens)$$|bytes_per_token$$|.*step$$|train_loss$$|last_val_loss$$|tokens_seen$$|.*tokens_per_second$$|wall_time_s$$|model_params.*|eval_(tokens|bytes)$$|samples$$|new_tokens$$|distinct_[13]$$|longest_shared_ngram_mean$$|Created$$|Executor$$|.*\.py$$|train_bytes$$|trained_on_bytes$$|sampled$$|split_tokens$$|rev$$|data/|models/|metrics/|samples/|train\.resume$$

compare: setup  ## experiments side by side: the params that differ, bits per byte, loss (COMPARE_ARGS=--md or --csv)
	$(RUN) dvc exp show --no-pager --only-changed --hide-queued --precision 4 --drop '$(COMPARE_DROP)' $(COMPARE_ARGS)

chat: setup  ## talk to models/best.pt (train one first: make demo); more flags: make chat CHAT_ARGS="--temp 1.0"
	@$(BIN)/gothic-chat --checkpoint models/best.pt $(CHAT_ARGS)

tensorboard: setup  ## TensorBoard on the training logs (live while training runs)
	$(BIN)/tensorboard --logdir checkpoints/logs

plots: setup  ## render the loss and learning-rate plots to dvc_plots/index.html
	$(BIN)/dvc plots show

clean:  ## remove pipeline outputs (keeps .venv and the DVC cache)
	rm -rf data/processed data/tokenizer.json data/bin models checkpoints logs dvc_plots
