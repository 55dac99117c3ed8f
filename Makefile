# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-long test-fast check-recipe lint format demo model toy data bench serve clean

$(STAMP): requirements.txt requirements-base.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not long" --durations=15

# The tests that take minutes each (the tiny Omni smoke chain, the learning regression test).
test-long: $(STAMP)
	$(PY) -m pytest -m long --durations=15

# Everything except the tests that run real ms-swift training/inference.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not long"

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

# Rebuild the committed warm base (data/warm_base/tiny-qwen2-audio-warm: random tiny model + toy warm-up calls +
# one curriculum SFT), shared by the demo and the toy. A fresh clone never needs it: only after changing its code.
model: $(STAMP)
	$(PY) -m safe_qaq.toy.warm_start

# The toy reproduction from the committed warm base: every stage on synthetic calls, measured on held-out calls, the
# paper's claims checked (docs/toy.md). `make toy FRESH_SEED=7` also measures every stage on fresh calls.
toy: $(STAMP)
	bash scripts/toy.sh

demo: $(STAMP)
	bash scripts/demo.sh

# The live fraud-alert service and its page on the demo's final model (docs/service.md); SERVE_ARGS go to it.
SERVE_MODEL ?= outputs/demo/stage3_realtime/merged
serve: $(STAMP)
	@test -f $(SERVE_MODEL)/config.json || { echo "no model at $(SERVE_MODEL): run \`make demo\` first (or make serve SERVE_MODEL=DIR)" >&2; exit 2; }
	$(PY) -m safe_qaq.service --model $(SERVE_MODEL) $(if $(wildcard outputs/demo/live/live_results.jsonl),--results outputs/demo/live) $(SERVE_ARGS)

clean:
	rm -rf outputs models data/prepared data/toy
