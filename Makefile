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

.PHONY: demo test test-min lint typecheck pytest bench docs wheel clean

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

# The GPU check (benchmarks/gpu_check.py, a few minutes on one GPU): the monitors at bf16-mixed on a CNN and a
# small Transformer, bit-identical training with and without them, GPU vs CPU float64 eigenvalues, SeedEnsemble
# at K=64/300, 4 sequential seeds; one table, also written to $(GPU_CHECK_OUT). It creates $(VENV) as `make test`
# does. torch must be a CUDA build there: on Linux the PyPI wheel of torch==2.13.0 is one, so on the GPU machine
#   make gpu-check VENV=.venv-gpu TORCH=torch==2.13.0
# with an index that holds the CUDA wheel (PyPI's Linux wheel is one).
# A torch that sees no GPU stops it at once with that hint. Its CPU form runs in `make test`
# (tests/test_gpu_check.py: --device cpu --tiny).
.PHONY: gpu-check
GPU_CHECK_OUT ?= gpu_check.json
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.installed-test
	$(PY) -c "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device: set TORCH= to a CUDA build (see Makefile)'"
	$(PY) benchmarks/gpu_check.py --device cuda --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

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

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

# The documentation site (mkdocs.yml, docs/): warnings are errors, broken internal links and anchors too,
# and README.md's links into docs/ must exist. Output in site/.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@# README.md is outside the site: its relative links (into docs/) are checked here.
	$(PY) -c "import pathlib, re, sys; bad = [l for l in re.findall(r'\]\(([^)#:]+)', pathlib.Path('README.md').read_text()) if not pathlib.Path(l).exists()]; sys.exit(f'README.md links to missing files: {bad}' if bad else 0)"

# The release artifacts: sdist + wheel built, `twine check`ed, the wheel installed into a fresh venv (torch
# $(TORCH) first) where the command runs and every public name imports (.ci/wheel_check.sh). Output in dist/.
wheel: $(VENV)/.installed-test
	PY=$(PY) PYTHON=$(PYTHON) TORCH="$(TORCH)" .ci/wheel_check.sh

bench: $(VENV)/.installed-test
	$(PY) benchmarks/curvature.py

clean:
	rm -rf $(VENV) $(VENV_MIN) runs site dist build .pytest_cache .mypy_cache .ruff_cache
