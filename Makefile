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

# The main job on an embedded default: a tiny easy-VQA model built on the spot (about 3 minutes here):
# init -> backbone fine-tuning -> SmartTrim at FLOPs target 0.5 -> eval -> adaptive ONNX export (checked
# against PyTorch) -> inspect.
demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/trimkit init --preset tiny --data easyvqa --out $(DEMO)/init.pt --force
	$(BIN)/trimkit train $(DEMO)/init.pt --data easyvqa --no-trim --steps 600 --lr 1e-3 --eval-every 300 --eval-samples 1000 --out $(DEMO)/base.pt --force --quiet
	$(BIN)/trimkit train $(DEMO)/base.pt --data easyvqa --target-ratio 0.5 --steps 200 --lr 1e-4 --eval-every 100 --eval-samples 1000 --out $(DEMO)/trim.pt --force --quiet
	$(BIN)/trimkit eval $(DEMO)/trim.pt --data easyvqa --samples 2000
	$(BIN)/trimkit export $(DEMO)/trim.pt --format onnx --out $(DEMO)/trim.onnx --force
	$(BIN)/trimkit inspect $(DEMO)/trim.onnx

test: setup
	$(BIN)/pytest -m "not slow and not gpu" -q

test-slow: setup
	$(BIN)/pytest -m "slow" -q

lint: setup
	$(BIN)/ruff check trimkit tests benchmarks

clean:
	rm -rf $(VENV) build .pytest_cache
