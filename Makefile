# Two entry points for a fresh machine: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint typecheck unit serve redis browser clean

setup: $(STAMP)

# Re-installs when pyproject.toml changes. CPU torch goes first so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/recsys demo

test: setup redis browser lint typecheck unit

lint: setup
	$(VENV)/bin/ruff check recsys feature_store serving tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest

# Serves the current bundle (2 workers: one per core of a 2-core machine, docs/RESULTS.md, Serving);
# trains the demo one first when nothing is published yet. Local only: `make serve SERVE_HOST=0.0.0.0`
# exposes it on every interface (set RECSYS_EVENTS_TOKEN then).
# (not HOST: csh exports HOST as the machine's name)
# --compile-ranker: each worker compiles the ranker (lleaves, the dev extras have it) before it
# answers, seconds to a minute at start; then ranking costs a fraction (docs/studies/serving_cost.md).
SERVE_HOST ?= 127.0.0.1
serve: setup
	$(VENV)/bin/recsys models current >/dev/null 2>&1 || $(VENV)/bin/recsys demo
	$(VENV)/bin/recsys serve --host $(SERVE_HOST) --port 3000 --workers 2 --compile-ranker

# The Redis tests need a real redis-server binary; install it where we can (root with apt-get).
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	      || echo "could not install redis-server: Redis tests will skip"; \
	  else echo "redis-server not found and cannot be installed here: Redis tests will skip"; fi; }

# The browser tests (tests/test_report_browser.py, tests/test_ui_browser.py) drive headless Chromium through chromedriver;
# Debian ships both at matching versions. Install them where we can (root with apt-get).
browser:
	@{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium or chromedriver not found and cannot be installed here: the browser test will skip"; fi; }

clean:
	rm -rf $(VENV) build *.egg-info artifacts
