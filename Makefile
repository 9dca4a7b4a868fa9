# The two commands in the README are `make book` (the main job) and `make test` (the tests).
# Both do all the set-up first: Debian's Fashion-MNIST files and a virtual environment at .venv/.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu

MATHJAX := .cache/npm/node_modules/mathjax/es5/tex-mml-chtml.js

.PHONY: setup data-files system-tools book test bench clean-venv

setup: data-files system-tools $(STAMP) $(MATHJAX)

# Fashion-MNIST comes from Debian's package where the machine is Debian and we are root;
# elsewhere the loader explains how to get the files (or downloads them where there is internet).
data-files:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "$$LOSSLESS_DATA" ] \
	   && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null \
	  || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null) \
	  || echo "warning: could not install dataset-fashion-mnist; set LOSSLESS_DATA to a folder with the IDX files"; \
	fi

# Headless Chromium checks the rendered book (Debian's package, as root).
system-tools:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium (the book's rendering test)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	  || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null) \
	  || echo "warning: could not install chromium; the rendering test will be skipped outside CI"; \
	fi

# MathJax 3 from npm, so that the book's math renders offline.
$(MATHJAX):
	npm install --silent --no-save --no-audit --no-fund --prefix .cache/npm mathjax@3.2.2

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[book,dev]"
	touch $(STAMP)

book: setup
	$(BIN)/lossless book --profile $(PROFILE)

# The unit tests and nbval over every chapter with the smoke profile injected, on two workers;
# nbval's run is the smoke book's execution (tests/nbval_book.py), which the rendering test then renders.
# Then the numerically sensitive tests and the chapters with float checks once more under a second
# family of CPU kernels (tests/conftest.py, OTHER_KERNELS): a check tighter than the arithmetic
# fails on one of the two.
test: setup
	$(BIN)/lossless book --profile smoke --notebooks-only runs/nbval > /dev/null
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not render" tests --nbval-lax --nbval-current-env runs/nbval
	LOSSLESS_OTHER_KERNELS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m kernels -p no:cacheprovider tests --nbval-lax --nbval-current-env runs/nbval
	$(BIN)/python -m pytest -q -m render tests

bench: setup
	$(BIN)/lossless bench train

clean-venv:
	rm -rf $(VENV)
