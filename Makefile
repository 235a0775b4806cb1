# make run   - the server on the embedded defaults (SQLite + a local FerretDB), GraphiQL at :8000/graphql
# make test  - the whole suite on real SQLite, PostgreSQL and FerretDB (installs PostgreSQL and Chromium if missing)
# Both set everything up first: the virtualenv, the packages and the FerretDB build.
# make lock  - resolves pyproject.toml's dependencies again into requirements.lock (README, Dependencies)

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: setup postgres browser run test test-model lint bench lock clean

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

# The packages are exactly the lock's: each at its pinned version and checked against its
# hashes (no dependency is resolved here), then any package the lock no longer lists is
# removed; the project itself is installed last, editable, with the lock's setuptools
# and nothing from the index.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	@$(BIN)/python -m pip freeze --exclude-editable | sed 's/[ =@].*//' | tr 'A-Z_.' 'a-z--' | sort >$(VENV)/.present
	@sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*\)==.*/\1/p' $(LOCK) | tr 'A-Z_.' 'a-z--' | sort >$(VENV)/.locked
	@comm -23 $(VENV)/.present $(VENV)/.locked | xargs -r $(BIN)/python -m pip uninstall --quiet --yes
	@rm -f $(VENV)/.present $(VENV)/.locked
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --no-index -e .
	$(BIN)/python -m pip check
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

# make lock                             - adds what pyproject.toml gained, drops what it lost, keeps every other pin
# make lock ARGS='--upgrade-package X'  - also moves X (and what it needs) to its newest release
# make lock ARGS=--upgrade              - every package to its newest release
# Run from Linux with Python 3.11: the lock holds what that platform needs.
PIP_TOOLS := .cache/pip-tools
lock:
	@test -x $(PIP_TOOLS)/bin/pip-compile || \
	  { $(PYTHON) -m venv $(PIP_TOOLS) && $(PIP_TOOLS)/bin/pip install --quiet pip-tools==7.7.0; }
	CUSTOM_COMPILE_COMMAND='make lock' $(PIP_TOOLS)/bin/pip-compile --quiet --generate-hashes \
	  --extra dev --extra bench --build-deps-for editable --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links --output-file $(LOCK) $(ARGS) pyproject.toml

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
