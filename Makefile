# worldline: the two commands a newcomer needs.
#   make run    start the embedded platform (broker + topics) and show its status; Ctrl-C stops it
#   make test   lint, type-check and run the whole test suite (unit + real-broker integration)
# Both create .venv and install worldline into it on first use (and again when pyproject.toml changes).

PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint typecheck unit bench clean help
help:
	@sed -n '1,4p' Makefile

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/worldline demo

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs schemas tests benchmarks
	$(BIN)/ruff format --check pipeline jobs schemas tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
