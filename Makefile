# trimkit: two commands do everything on a fresh machine.
#   make demo   - set up, then run the main job on an embedded default model
#   make test   - set up, then run the test suite (not slow, not gpu)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# The CPU build of PyTorch: an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO   ?= build/demo

.PHONY: setup demo test test-slow test-all lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/trimkit init --preset tiny --data easyvqa --out $(DEMO)/base.pt --force
	$(BIN)/trimkit inspect $(DEMO)/base.pt

test: setup
	$(BIN)/pytest -m "not slow and not gpu" -q

test-slow: setup
	$(BIN)/pytest -m "slow" -q

lint: setup
	$(BIN)/ruff check trimkit tests benchmarks

clean:
	rm -rf $(VENV) build .pytest_cache
