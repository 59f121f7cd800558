# Two commands: `make run` (the default study, on CPU) and `make test` (the test suite).
# Both bootstrap .venv on first use (torch 2.13.0 CPU wheel first, then the package).
# `make run-lm`: the second main job, the language-model study (installs the `lm` extra).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.husai-installed
LM_STAMP := $(VENV)/.husai-lm-installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
# Slow tests (full default-model retrain, grokking over seeds, SAELens benchmark smoke) are
# left out by default; `make test PYTEST_ARGS=` runs everything.
PYTEST_ARGS ?= -m "not slow"

.PHONY: run run-lm test check lint format bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/husai run $(STUDY)

$(LM_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,ray,lm]'
	touch $(LM_STAMP)

run-lm: $(LM_STAMP)
	$(VENV)/bin/husai run configs/studies/lm_minilm.yaml

test: $(STAMP)
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts

check: lint test

bench: $(STAMP)
	$(PY) benchmarks/sae_training.py
	$(PY) benchmarks/matching.py
	$(PY) benchmarks/grokking.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
