# gflnb: `make book` runs the notebooks on synthetic data and builds the book; `make test` runs every test.
# Both create .venv and install the project into it on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gflnb-installed

.PHONY: setup test book tools clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

setup: $(STAMP)

# headless Chromium (the book's browser checks) and npm (MathJax for offline math), from Debian's packages
tools:
	@command -v chromium >/dev/null && command -v npm >/dev/null || { apt-get update -qq && \
		apt-get install -y -qq chromium npm >/dev/null; }

test: $(STAMP) tools
	$(PY) -m pytest -q

book: $(STAMP) tools
	$(PY) -m gflnb.book

clean:
	rm -rf book/_build book/notebooks notebooks/_executed
