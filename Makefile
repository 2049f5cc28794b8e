# The two commands of the README: `make serve` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo/small
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck demo clean prometheus openssl chromium postgresql

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch from local disk; pinned so no CUDA build is pulled in.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(DEMO)/config.json: | $(STAMP)
	$(BIN)/llava-serve make-demo --size small --out $(DEMO)

demo: $(DEMO)/config.json

serve: $(STAMP) $(DEMO)/config.json
	$(BIN)/llava-serve serve --model $(DEMO) --host $(HOST) --port $(PORT)

# Debian's prometheus package: a real Prometheus server and promtool for the metrics and deploy tests.
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# openssl: the TLS media origin of the fetch tests.
openssl:
	@command -v openssl >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl; }

# Debian's chromium: the real browser of the web playground's tests (driven by Playwright; nothing downloaded).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# Debian's postgresql package: the real PostgreSQL server the state-store tests start themselves (as the
# postgres user, on a temporary cluster and a free port of 127.0.0.1; testkit/postgres.py).
postgresql:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }

test: $(STAMP) prometheus openssl chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over model_runtime and server; its settings live in pyproject.toml ([tool.mypy]).
typecheck: $(STAMP)
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache .mypy_cache
