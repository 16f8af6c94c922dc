# Every target creates .venv and installs what it needs on first use.
# On this CPU-only setup `torch==2.13.0` resolves to a local CPU build; an unpinned torch would download a
# multi-GB CUDA build. For CUDA, install torch first (see docs/index.md), then `pip install -e '.[test,xformers]'`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install train test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) examples/tiny_video_transformer.py

test: $(STAMP)
	$(PY) -m pytest

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/chunk_attention.py

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
