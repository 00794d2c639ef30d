# nansearch: make sweep runs the demo, make test runs the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
NS     := $(VENV)/bin/nansearch
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
# Where a CPU torch wheel comes from when none is on this machine and no GPU is visible:
# the address of PyTorch's CPU wheel index, or any index that mirrors it (see README).
TORCH_INDEX ?=
STUDY  ?= $(shell ls -td runs/*/ 2>/dev/null | head -n 1 | xargs -r basename)

.PHONY: install sweep rerun report audit test quality format bench clean

install: $(STAMP)

# CPU torch unless a GPU is visible: a plain torch requirement pulls a multi-GB CUDA build.
# A CPU wheel already on this machine's find-links is used as is; else the index named by
# TORCH_INDEX, added to pip's own; with neither, pip's own index (a CUDA build on Linux).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch; \
	elif $(PY) -m pip download -q --no-index --no-deps "$(TORCH)" -d $(VENV)/.torch-wheel >/dev/null 2>&1; then \
		$(PY) -m pip install -q "$(TORCH)"; rm -rf $(VENV)/.torch-wheel; \
	elif [ -n "$(TORCH_INDEX)" ]; then \
		$(PY) -m pip install -q "$(TORCH)" --extra-index-url "$(TORCH_INDEX)"; \
	else \
		echo "no GPU and no CPU torch wheel here: installing torch from pip's index, which on"; \
		echo "Linux is the large CUDA build; set TORCH_INDEX to PyTorch's CPU wheel index for"; \
		echo "the CPU build (see README, Install)"; \
		$(PY) -m pip install -q "$(TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

sweep: install
	$(NS) sweep sweeps/demo.yaml $(ARGS)

rerun: install
	$(NS) rerun $(STUDY) --top 3 $(ARGS)

report: install
	$(NS) report $(STUDY) $(ARGS)

audit: install
	$(NS) audit sweeps/demo.yaml $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

# The same files a plain `ruff check .` / `ruff format --check .` sees (ruff is pinned in
# pyproject.toml, so both agree); mypy reads its settings from pyproject.toml.
quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf runs bench-results test-artifacts .pytest_cache .ruff_cache
