# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast check-recipe lint format demo model toy data bench clean

$(STAMP): requirements.txt requirements-base.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Everything except the tests that run real ms-swift training/inference.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The paper recipe (PROFILE=paper) checked on CPU: every stage command parsed by ms-swift 4.6 under torchrun
# against a config-only Qwen2-Audio-7B-Instruct. Also part of `make test`.
check-recipe: $(STAMP)
	$(PY) -m pytest tests/test_recipe.py tests/test_recipe_omni.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The warm-started tiny base (random tiny model + toy calls + one SFT), shared by the demo and the toy; ~6 min once.
model: $(STAMP)
	$(PY) -m safe_qaq.warm_start

# The toy reproduction: every stage on synthetic calls, measured, the paper's claims checked (~20 min on 2 cores).
toy: $(STAMP)
	bash scripts/toy.sh

demo: $(STAMP)
	bash scripts/demo.sh

clean:
	rm -rf outputs models data/prepared data/toy
