# ssmkit: `make demo` runs the end-to-end example, `make test` runs the test-suite, `make wheel-check` builds the wheel
# and runs the installed `ssmkit` from a fresh virtual environment (what a plain `pip install` gives a user).
# Each target creates .venv with pip on first use (torch pinned to the CPU build that installs offline here).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: test demo bench install clean wheel-check gpu-data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# One pytest-xdist worker per core (each computing on one thread: tests/conftest.py), tests handed out as workers free up.
# A test still running after TEST_TIMEOUT seconds (the slowest takes under a minute here) has its worker's stacks
# printed and the worker ended (pytest-timeout's thread method, which also stops a test blocked inside C code that
# released the GIL): the run goes on and names it, where a hang once held CI's whole time limit with nothing said. A
# test blocked in C code that holds the GIL stops that timer too (it is a Python thread; this held CI's whole limit
# again at stop 56): faulthandler's C watchdog (pyproject.toml, faulthandler_timeout, a little later) dumps every
# thread's stack and ends the worker then.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
TEST_TIMEOUT ?= 900
test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --timeout=$(TEST_TIMEOUT) --timeout-method=thread

# The wheel in a fresh venv, used from outside the checkout: --help, the shipped configs (package data), and a
# 3-step train from a shipped config (its model and training settings, on the bundled 8x8 digits at a tiny width),
# and the native backend's status (its C source is package data; the build needs a C compiler, else it says why).
WHEEL_VENV ?= /tmp/ssmkit-wheel-check
wheel-check: $(VENV)/.installed
	rm -rf dist $(WHEEL_VENV)
	$(PY) -m pip wheel -q --no-deps . -w dist/
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q $(TORCH)
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(ls dist/ssmkit-*.whl)[train,data]"
	cd $(WHEEL_VENV) && bin/ssmkit --help > /dev/null
	cd $(WHEEL_VENV) && bin/ssmkit train --help > /dev/null
	cd $(WHEEL_VENV) && bin/ssmkit configs > configs.txt && grep -qx lra/listops-s4 configs.txt
	cd $(WHEEL_VENV) && bin/ssmkit train --config sequential/smnist-s4 --task digits --d_model 8 --n_layers 1 \
		--train.max_steps 3 --train.warmup_steps 0 --train.batch_size 16 --train.val_every 0 \
		--train.checkpoint_every 0 --train.accelerator cpu --out $(WHEEL_VENV)/run --no-progress
	test -f $(WHEEL_VENV)/run/result.json
	cd $(WHEEL_VENV) && SSMKIT_NATIVE_CACHE=$(WHEEL_VENV)/native bin/python -c "import shutil, torch, ssmkit.ops.native as n; \
		s = [n.native_status(op) for op in n.gate.OPS]; print('native backend:', s); \
		assert all(ok for ok, _ in s) or not shutil.which('cc'), s"
	@echo "wheel-check: OK ($$(ls dist/ssmkit-*.whl))"

# `ssmkit compare` on MNIST-1D with every registered layer, 1,000 steps each (~5 min on 2 cores) (a step count, not a time
# budget: the same models on a slow or busy machine); fails if a layer stays below 30 % (chance is 10 %). The demo's
# own output folder is replaced on every run (a second `make demo` would otherwise refuse its old checkpoints).
DEMO_OUT ?= runs/demo-mnist1d
demo: $(VENV)/.installed
	rm -rf $(DEMO_OUT)
	$(PY) -m ssmkit compare --task mnist1d --models all --budget 1000 --d_model 32 --n_layers 2 \
		--train.batch_size 64 --train.lr 0.01 --train.warmup_steps 100 --train.val_every 250 \
		--train.checkpoint_every 0 --no-progress --out $(DEMO_OUT) --fail-below 0.3

bench: $(VENV)/.installed
	$(PY) -m ssmkit.bench core
	$(PY) -m ssmkit.bench step
	$(PY) -m ssmkit.bench ssd

clean:
	rm -rf $(VENV) build src/*.egg-info

# What scripts/gpu_check.sh takes from beside the tree on a GPU machine (.gpu-data, ignored by git: the bench peers'
# wheels, mamba-ssm's and causal-conv1d's packages and their CUDA kernels built here for the GPU's torch), from PyPI.
gpu-data:
	scripts/gpu_data.sh
