# Two commands do everything on a fresh machine: `make search` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(abspath ../shared/data)
TORCH_PIN := torch==2.13.0
# The exact set of versions every set-up installs (make search / test / test-all, .ci/run).
# pyproject.toml keeps compatible ranges for `pip install unipetl`; `make lock` refreshes this
# file from them; `make test-latest` tries the newest versions the ranges allow.
LOCK := requirements.lock
# where this machine kind keeps the CPU build of torch (pip finds it through PIP_FIND_LINKS)
TORCH_WHEELS ?= /opt/wheels
LATEST_VENV ?= .venv-latest

.PHONY: venv search test test-all test-latest lock lint bench bench-quick clean

$(BIN)/.installed: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels
	$(BIN)/pip install -q $(TORCH_PIN)
	# then exactly the locked versions (pip and setuptools included), then the project itself
	$(BIN)/pip install -q -r $(LOCK)
	# (setuptools' "Editable installation … folders in your working directory" note is information
	# only: the four folders ARE the package, mapped to unipetl.*)
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

## refresh requirements.lock from pyproject.toml's ranges (newest versions they allow)
lock:
	$(PY) -m pip install -q --upgrade uv
	printf 'setuptools>=77\npip>=24\n' | $(PY) -m uv pip compile pyproject.toml - --extra test --upgrade \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links $(TORCH_WHEELS) --override torch-override.txt \
	  --custom-compile-command "make lock" -o $(LOCK)
	@echo "$(LOCK) refreshed; run 'make test-all' before committing it"

## drift check: a throw-away venv with the newest versions pyproject.toml allows, fast tier
test-latest:
	rm -rf $(LATEST_VENV)
	$(PY) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q $(TORCH_PIN)
	# newest versions of everything but torch, which stays the pinned CPU build (a newer torch here is a multi-GB CUDA wheel)
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -c torch-override.txt -e '.[test]'
	$(LATEST_VENV)/bin/pip check
	@$(LATEST_VENV)/bin/python -c "import importlib.metadata as m; print('newest allowed:', ', '.join(f'{p} {m.version(p)}' for p in ('torch', 'transformers', 'datasets', 'optuna', 'ray', 'peft', 'evaluate', 'polars', 'moocore')))"
	UNIPETL_DATA_DIR=$(DATA_DIR) $(LATEST_VENV)/bin/python -m pytest -q
	rm -rf $(LATEST_VENV)
	# the editable install above pointed the checkout at the throw-away venv's finder only; .venv is untouched

## the main job: a budget-constrained search on SST-2 with the packaged MiniLM (SQLite under runs/)
search: venv
	$(BIN)/unipetl search --task sst2 --model minilm --budget 0.5% --trials 4 --workers 2 --data-dir $(DATA_DIR)

## the fast test tier (tiny random-init models)
test: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q

## every tier: fast + slow (real MiniLM, multi-process) + cluster (PostgreSQL, Ray) — what CI runs
test-all: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q -m "" --timeout 1800

## benchmarks at their CPU-sized defaults; results under benchmarks/out/, summary in benchmarks/RESULTS.md
bench: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reproduce_sst2.py
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/search_efficiency.py --trials 12 --repeats 3

## the same with --quick (and the rung-signal smoke) (smoke: minutes, numbers meaningless)
bench-quick: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py --quick
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reproduce_sst2.py --quick
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/search_efficiency.py --quick
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/rung_signal.py --quick
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/peak_memory.py --quick

lint: venv
	$(BIN)/ruff check unipetl spaces evaluators search reports tests benchmarks

clean:
	rm -rf $(VENV) $(LATEST_VENV) runs .pytest_cache
