# make run   - the server on the embedded defaults (SQLite + a local FerretDB), GraphiQL at :8000/graphql
# make test  - the whole suite on real SQLite, PostgreSQL and FerretDB (installs PostgreSQL and Chromium if missing)
# Both set everything up first: the virtualenv, the packages and the FerretDB build.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup postgres browser run test test-model lint bench clean

setup: $(STAMP)
	@$(BIN)/cqrs-shop install-read-store

# The write-side tests also run on a throwaway PostgreSQL cluster that the tests start.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The GraphiQL test drives Debian's headless Chromium; the GraphQL over HTTP audit runs on
# Node.js (its npm packages are installed by the test, pinned by a lock file).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

run: setup
	$(BIN)/cqrs-shop serve $(ARGS)

test: setup postgres browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

# make test-model - a longer search of the read side's randomised model test
test-model: setup
	MODEL_EXAMPLES=$${MODEL_EXAMPLES:-100} MODEL_STEPS=$${MODEL_STEPS:-50} \
	  $(BIN)/pytest tests/integration/test_relay_model.py -p no:cacheprovider $(PYTEST_ARGS)

# make bench - P1-P9 on fresh embedded stores and P10 on the production topology, one table (bench/results/latest.json); ARGS=--quick
bench: setup
	$(BIN)/cqrs-shop-bench $(ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
