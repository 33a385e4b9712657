# medzoo: every target only names a recipe and calls the `medzoo` command (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medzoo-installed
MEDZOO := $(BIN)/medzoo
export MEDZOO_DATA ?= data/mimeta
DEMO_DIR ?= runs/demo
NAME ?=
ARGS ?=

.PHONY: help install test test-slow lint format demo data-synth pretrain-liver pretrain-crc \
        pretrain-crc-lars pretrain-liver-lars eval-liver eval-crc export bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

# Re-installs only when pyproject.toml changes, so `make test` is fast when already installed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install medzoo (editable, with the dev tools)

lint: install  ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint  ## lint, then the default test suite (no slow, no gpu tests)
	$(BIN)/pytest -q

test-slow: install  ## the slow tests too
	$(BIN)/pytest -q -m "not gpu"

demo: install  ## the whole product end to end on synthetic data, on CPU
	$(MEDZOO) demo --out $(DEMO_DIR) $(ARGS)

data-synth: install  ## write synthetic MIMeta data to $(MEDZOO_DATA)
	$(MEDZOO) data synth $(MEDZOO_DATA) $(ARGS)

pretrain-liver: install  ## Barlow Twins on the liver domain (paper settings)
	$(MEDZOO) pretrain recipes/pretrain-liver.toml $(ARGS)

pretrain-crc: install  ## Barlow Twins on crc (paper settings)
	$(MEDZOO) pretrain recipes/pretrain-crc.toml $(ARGS)

pretrain-crc-lars: install  ## Barlow Twins on crc with the official LARS optimiser
	$(MEDZOO) pretrain recipes/pretrain-crc-lars.toml $(ARGS)

pretrain-liver-lars: install  ## Barlow Twins on liver with the official LARS optimiser
	$(MEDZOO) pretrain recipes/pretrain-liver-lars.toml $(ARGS)

eval-liver: install  ## the paper's evaluation grid on the three organ views
	$(MEDZOO) evaluate recipes/eval-liver.toml $(ARGS)

eval-crc: install  ## the paper's evaluation grid on crc
	$(MEDZOO) evaluate recipes/eval-crc.toml $(ARGS)

export: install  ## export NAME=... to ONNX with the parity check
	@test -n "$(NAME)" || { echo "usage: make export NAME=bt-crc-r18 [ARGS=--fp16]"; exit 2; }
	$(MEDZOO) export $(NAME) $(ARGS)

bench: install  ## benchmark NAME=... in torch and onnxruntime
	@test -n "$(NAME)" || { echo "usage: make bench NAME=bt-crc-r18 [ARGS='--batch-sizes 1,32']"; exit 2; }
	$(MEDZOO) bench $(NAME) $(ARGS)

clean:  ## remove caches and generated outputs (not .venv, not data)
	rm -rf .pytest_cache .ruff_cache runs
	find exports -mindepth 1 -maxdepth 1 ! -name README.md ! -name .gitignore -exec rm -rf {} +
