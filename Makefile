# resnet-deploy: `make demo` builds the embedded default end to end; `make test` runs the test suite.
# Both create .venv and install everything on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is pinned for CI (a CPU wheel here; an unpinned torch pulls a multi-GB CUDA build).
# Override with your own: make demo CONSTRAINTS=my-constraints.txt
CONSTRAINTS ?= constraints-ci.txt
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: install data demo lint test test-slow test-py38 bench bench-scale train-cifar device-check device-setup clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[build,test]'
	touch $@

install: $(VENV)/.installed

# The embedded default's data: Debian's dataset-fashion-mnist package, where apt exists.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "apt-get not found: install Fashion-MNIST's IDX files and set RESNET_DEPLOY_FASHION_MNIST"; fi

demo: install data
	$(VENV)/bin/resnet-deploy build --target openvino --target onnxruntime --out build/demo
	@echo "report: build/demo/report.html (build/demo/report.md for terminals, report.json for programs)"

# ruff and mypy, pinned in pyproject.toml's [test] extra and configured there; CI runs this before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# pytest-xdist, one worker per core and one more: part of the suite's time waits on subprocesses and file
# locks (2-core machine, 2026-11-29: 83-94 s with 3 workers, 84-91 s with 2; the hour moves it more than the
# worker count). A test file stays on one worker, so its module fixtures build once; each worker's PyTorch runs
# one thread (tests/conftest.py).
PYTEST_WORKERS ?= $(shell $(PY) -c "import os; print(len(os.sched_getaffinity(0)) + 1)" 2>/dev/null || echo auto)
# PYTHONDONTWRITEBYTECODE is dropped: with it set (as on these machines) nothing is cached, and every worker
# rewrites every test module's asserts and compiles the package again on every run (~3 s of CPU a worker).
test: install data
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Real-data end-to-end checks (CIFAR-10 in ../shared/datasets when present, Fashion-MNIST).
test-slow: install data
	$(PY) -m pytest -q -m slow

# The device side on a real Python 3.8 (JetPack 5.1's): the wheel built and installed into a cached 3.8 venv,
# the device commands and a TensorRT 8.5 stand-in run there (about 20 s). CI runs it after `make test`.
test-py38: install data
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -m py38

# CPU latency/throughput: this tool's INT8 vs PyTorch, ONNX Runtime and OpenVINO FP32 and NNCF's default INT8,
# interleaved in one process (~8-10 min on 2 cores). make bench BENCH_ARGS="--quick --models resnet18" for a smoke run.
BENCH_ARGS ?=
bench: install data
	$(PY) benchmarks/bench_cpu.py --out build/bench/bench_cpu $(BENCH_ARGS)
	@echo "tables: build/bench/bench_cpu.md (bench_cpu.json for programs)"

# ImageNet-scale validation (issue 12): a synthetic set of SCALE_TEST/SCALE_TRAIN JPEGs made from ../shared/datasets/cifar10
# (cached under build/bench-scale/), a resnet18 224x224 build on it with the peak RSS of its process tree and images/s
# per stage, then `bench --hint throughput` against OpenVINO's benchmark_app on the same IR. ~30 min at 20,000 on 2 cores.
SCALE_TEST ?= 20000
SCALE_TRAIN ?= 500
SCALE_ARGS ?=
bench-scale: install
	$(PY) benchmarks/bench_scale.py --test $(SCALE_TEST) --train $(SCALE_TRAIN) $(SCALE_ARGS)

# A CIFAR-10 ResNet (the paper's CIFAR family) on ../shared/datasets/cifar10, for the accuracy checks that want
# more than the embedded model: make train-cifar CIFAR_ARCH=resnet56 (20 epochs, 40 min on 2 cores; not committed).
CIFAR_DIR ?= ../shared/datasets/cifar10
CIFAR_ARCH ?= resnet20
CIFAR_EPOCHS ?= 20
train-cifar: install
	$(VENV)/bin/resnet-deploy train --arch $(CIFAR_ARCH) --data $(CIFAR_DIR) --epochs $(CIFAR_EPOCHS) --out runs/cifar-$(CIFAR_ARCH)

clean:
	rm -rf build .pytest_cache

# On a machine with TensorRT and an NVIDIA GPU (a Jetson, or a desktop GPU): build the embedded default's
# jetson bundle if missing, then build, validate and benchmark its engine in one short run.
DEVICE_BUNDLE ?= build/jetson-demo
device-check: install data
	[ -f $(DEVICE_BUNDLE)/manifest.json ] || $(VENV)/bin/resnet-deploy build --target jetson --out $(DEVICE_BUNDLE)
	$(PY) scripts/device_check.py $(DEVICE_BUNDLE)
	$(PY) -m pytest -q -m tensorrt

# On a Jetson (JetPack 5.1+, Python 3.8+): a venv that sees JetPack's TensorRT (system site-packages),
# with the device extra only (no torch). JetPack 4.6 (Python 3.6): use the bundle's trtexec.sh instead.
DEVICE_VENV ?= .venv-device
device-setup:
	python3 -m venv --system-site-packages $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEVICE_VENV)/bin/python -m pip install -q '.[device]'
	@$(DEVICE_VENV)/bin/python -c "import tensorrt; print('TensorRT', tensorrt.__version__)" \
	  || echo "TensorRT is not importable: install JetPack's python3-libnvinfer (sudo apt install nvidia-jetpack)"
	@echo "device venv: $(DEVICE_VENV)  (then: $(DEVICE_VENV)/bin/resnet-deploy device-build BUNDLE)"
