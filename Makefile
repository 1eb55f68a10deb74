# Two commands do all set-up on a fresh machine:
#   make train   # virtualenv + dependencies, then the default training job
#   make test    # virtualenv + dependencies, then lint, stub check and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/sac_halfcheetah.yaml
export MUJOCO_GL ?= disable

.PHONY: install train test lint format proto proto-check bench clean

install: $(VENV)/.installed

# torch first: the pinned 2.13.0 resolves to a CPU build on machines without a
# GPU; installing the project afterwards keeps that build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

train: install
	$(BIN)/distrl train $(CONFIG) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: install
	$(BIN)/python tools/gen_proto.py

proto-check: install
	$(BIN)/python tools/gen_proto.py --check

test: install lint proto-check
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/replay_throughput.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
