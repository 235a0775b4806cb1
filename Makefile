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

# The type check runs beside the tests (it needs one core for a minute on a cold cache);
# the tests run in two worker processes, each test file on one of them (its module-wide
# servers started once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup postgres browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(BIN)/mypy & types=$$!; \
	  $(BIN)/pytest $(XDIST) $(PYTEST_ARGS); tests=$$?; \
	  wait $$types; types_status=$$?; \
	  [ $$types_status -eq 0 ] || echo "mypy failed (exit $$types_status)"; \
	  exit $$(( tests != 0 ? tests : types_status ))

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
