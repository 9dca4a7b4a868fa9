# The two commands in the README are `make book` (the main job) and `make test` (the tests).
# Both do all the set-up first: Debian's Fashion-MNIST files and a virtual environment at .venv/.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu

.PHONY: setup data-files book test bench clean-venv

setup: data-files $(STAMP)

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

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[book,dev]"
	touch $(STAMP)

book: setup
	$(BIN)/lossless data check --profile $(PROFILE)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/lossless bench train

clean-venv:
	rm -rf $(VENV)
