# Every target creates .venv and installs what it needs on first use.
# On this CPU-only setup `torch==2.13.0` resolves to a local CPU build; an unpinned torch would download a
# multi-GB CUDA build. For CUDA, install torch first (see docs/index.md), then `pip install -e '.[test,xformers]'`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
VIDEO_STAMP := $(VENV)/.installed-video

.PHONY: install train example test lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

$(VIDEO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[video]'
	touch $(VIDEO_STAMP)

install: $(STAMP)

# The main job: recipes/train_kinetics.py on its built-in synthetic motion videos (generated once, cached).
train: $(VIDEO_STAMP)
	$(PY) recipes/train_kinetics.py --run.overwrite

# A tiny video transformer assembled from the layers, trained on in-memory clips (the layers guide's example).
example: $(STAMP)
	$(PY) examples/tiny_video_transformer.py

test: $(STAMP)
	$(PY) -m pytest

# ruff's rules and format (pyproject.toml); the version is pinned in the test extra so CI and editors agree.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/chunk_attention.py

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
