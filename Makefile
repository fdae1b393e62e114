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

demo: $(VENV)/.installed
	$(PY) -m ssmkit.demo

bench: $(VENV)/.installed
	$(PY) -m ssmkit.bench core
	$(PY) -m ssmkit.bench step
	$(PY) -m ssmkit.bench ssd

clean:
	rm -rf $(VENV) build src/*.egg-info
