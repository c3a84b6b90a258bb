# The two commands: `make demo` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo lint bench prereqs venv clean

test: prereqs $(STAMP)
	$(BIN)/ruff check bastion_tray tests bench resources
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: prereqs $(STAMP)
	$(BIN)/bastion-tray demo

bench: prereqs $(STAMP)
	@bash scripts/prereqs.sh --bench
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check bastion_tray tests bench resources
	$(BIN)/mypy

prereqs:
	@bash scripts/prereqs.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,gtk]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info
