# gflnb: `make book` runs the notebooks on synthetic data and builds the book; `make test` runs every test.
# Both create .venv and install the project into it on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gflnb-installed

.PHONY: setup test book tools ablations lab clean

$(STAMP): pyproject.toml jupyter/overrides.json
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[notebooks,test,export,track,cluster]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -m gflnb.lab install
	@touch $(STAMP)

setup: $(STAMP)

# headless Chromium (the book's browser checks) and npm (MathJax for offline math): each installed
# only when it is missing, in its own apt transaction (.ci/tools.sh)
tools:
	@bash .ci/tools.sh

test: $(STAMP) tools
	$(PY) -m pytest -q

book: $(STAMP) tools
	$(PY) -m gflnb.book

# rerun the whole ablation sweep (points already done are skipped) and rewrite experiments/ablations/
ablations: $(STAMP)
	$(PY) -m gflnb sweep experiments/ablations/grid.yaml

# JupyterLab on notebooks/, where a double click opens a chapter as a notebook (gflnb/lab.py)
lab: $(STAMP)
	$(PY) -m gflnb.lab

clean:
	rm -rf book/_build book/notebooks notebooks/_executed
