# ssmkit: `make demo` runs the end-to-end example, `make test` runs the test-suite.
# Each target creates .venv with pip on first use (torch pinned to the CPU build that installs offline here).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: test demo bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

# `ssmkit compare` on MNIST-1D with every registered layer, the same step budget each (a step count, not a time
# budget: the same models on a slow or busy machine); fails if a layer stays below 30 % (chance is 10 %).
DEMO_OUT ?= runs/demo-mnist1d
demo: $(VENV)/.installed
	$(PY) -m ssmkit compare --task mnist1d --models all --budget 300 --d_model 32 --n_layers 2 \
		--train.batch_size 64 --train.lr 0.01 --train.warmup_steps 30 --train.val_every 100 \
		--train.checkpoint_every 0 --no-progress --out $(DEMO_OUT) --fail-below 0.3

bench: $(VENV)/.installed
	$(PY) -m ssmkit.bench core
	$(PY) -m ssmkit.bench step
	$(PY) -m ssmkit.bench ssd

clean:
	rm -rf $(VENV) build src/*.egg-info
