# The README's two commands: `make run` (the whole study) and `make test` (the test suite).
# Both set up .venv first (pip, pinned torch/torchvision from requirements/constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test lint bench clean-demo

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev,slurm]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)  ## the study on the real Open-i data (downloads ~1.4 GB)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all

demo: $(STAMP)  ## offline: the same workflow on generated data, tiny model
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all --directory demo

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks workflow/scripts
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

clean-demo:
	rm -rf demo/data demo/results demo/models demo/logs demo/reports demo/mlflow.db demo/.snakemake
