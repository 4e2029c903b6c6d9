# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned: a bare `torch` requirement in a fresh venv would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2
DEMO_ARGS ?=
# `make test-min`: the fast tests against the lowest lightning and torchmetrics pyproject.toml declares.
VENV_MIN ?= .venv-min
LIGHTNING_MIN := $(shell sed -n 's/^ *"lightning>=\([0-9.]*\)",$$/\1/p' pyproject.toml)
TORCHMETRICS_MIN := $(shell sed -n 's/^ *"torchmetrics>=\([0-9.]*\)",$$/\1/p' pyproject.toml)

.PHONY: demo test test-min lint typecheck pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	touch $@

$(VENV)/.installed-demo: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[examples]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(PY) examples/study.py $(DEMO_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check lightning_landscape tests examples benchmarks
	$(VENV)/bin/ruff format --check lightning_landscape tests examples benchmarks

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy lightning_landscape

pytest: $(VENV)/.installed-test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

$(VENV_MIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install -q "$(TORCH)"
	$(VENV_MIN)/bin/python -m pip install -q -e ".[pyhessian,examples]" "lightning==$(LIGHTNING_MIN)" \
		"torchmetrics==$(TORCHMETRICS_MIN)" pytest pytest-timeout pytest-xdist
	touch $@

test-min: $(VENV_MIN)/.installed
	$(VENV_MIN)/bin/python -c "import lightning, torchmetrics; print('lightning', lightning.__version__, \
		'torchmetrics', torchmetrics.__version__)"
	$(VENV_MIN)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS) -m "not slow" tests/multiseed tests/callbacks

bench: $(VENV)/.installed-test
	$(PY) benchmarks/curvature.py

clean:
	rm -rf $(VENV) $(VENV_MIN) runs .pytest_cache .mypy_cache .ruff_cache
