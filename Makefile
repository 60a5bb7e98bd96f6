# Two commands do everything on a fresh machine: `make search` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(abspath ../shared/data)
TORCH_PIN := torch==2.13.0

.PHONY: venv search test test-all lint bench bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

## the main job: a budget-constrained search on SST-2 with the packaged MiniLM (SQLite under runs/)
search: venv
	$(BIN)/unipetl search --task sst2 --model minilm --budget 0.5% --trials 12 --data-dir $(DATA_DIR)

## the fast test tier (tiny random-init models)
test: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q

## every tier: fast + slow (real MiniLM, multi-process) + cluster (PostgreSQL, Ray) — what CI runs
test-all: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q -m "" --timeout 1800

## benchmarks (issue 7) at their CPU-sized defaults; results under benchmarks/out/, summary in benchmarks/RESULTS.md
bench: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reproduce_sst2.py
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/search_efficiency.py --trials 24

## the same three with --quick (smoke: minutes, numbers meaningless)
bench-quick: venv
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py --quick
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reproduce_sst2.py --quick
	UNIPETL_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/search_efficiency.py --quick

lint: venv
	$(BIN)/ruff check spaces evaluators search reports tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
