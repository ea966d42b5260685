# The two commands a newcomer needs are `make up` and `make test`; both run `setup` first,
# which installs everything (Debian packages included) on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the project needs at run or test time.
APT_PACKAGES := runc busybox-static git
STAMP := $(VENV)/.installed

.PHONY: setup up test bench clean lint

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

up: setup
	$(BIN)/hypermesh up

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/python -m ruff check hypermesh controllers tests bench
	$(BIN)/python -m mypy hypermesh controllers

clean:
	rm -rf $(VENV) build *.egg-info
