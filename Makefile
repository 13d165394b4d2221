# Offsession: `make run` to try it, `make test` to check it. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Exact versions, with their hashes: requirements.lock (what the image runs), requirements-dev.lock (that
# plus the dev extra). pyproject.toml keeps the ranges they are compiled from.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
PIP := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: install run test test-stripe lint system-test-deps vendor clean bench chaos lock lock-upgrade explore mutate

install: $(STAMP)

$(STAMP): pyproject.toml $(DEV_LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install --require-hashes --no-deps -r $(DEV_LOCK)
	$(PIP) install --no-deps -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# After a change to pyproject.toml's dependencies: compile both lock files again, keeping every pin
# that still fits; `make lock-upgrade` moves every pin to the newest version its range allows.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes $(UV_FLAGS)
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(PIP) install uv
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

lock-upgrade:
	$(MAKE) lock UV_FLAGS=--upgrade

run: install
	@mkdir -p var
	$(BIN)/offsession db upgrade
	$(BIN)/offsession seed-demo
	@echo "API token (Authorization: Bearer ...): $$($(BIN)/python -c 'from shared.config import load_config; print(load_config().api_token)')"
	@echo "Admin UI: http://127.0.0.1:8000/admin/login"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

# Debian packages the tests drive for real (installed only when missing; CI runs as root).
system-test-deps:
	@bash scripts/ensure-system-deps.sh

# Style, the import contracts between the layers and entry points (pyproject.toml [tool.importlinter]),
# and the type check of shared/ ([tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Two processes (pytest-xdist): the tests that start real processes all on one of them, in order, the
# in-process tests spread over both (the scheduler of tests/conftest.py).
test: install system-test-deps lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# The charge path's state machine far longer than `make test` runs it (scripts/explore.sh): EXPLORE_EXAMPLES
# sequences (default 20000) on SQLite and on PostgreSQL each, over EXPLORE_JOBS processes (default 2);
# EXPLORE_SECONDS bounds the time per database, EXPLORE_DATABASES picks them (scripts/explore.sh).
explore: install system-test-deps
	@bash scripts/explore.sh

# Mutation testing of the money path: the guarantee mutants (tests/mutation/guarantee_mutants.py), then
# mutmut over the modules listed in pyproject.toml's [tool.mutmut] only_mutate, each mutant against the
# tests that reach its function. docs/mutation-report.md says what survived and why.
mutate: install system-test-deps
	$(BIN)/python tests/mutation/guarantee_mutants.py
	@bash scripts/mutate.sh

# Before going live: the gateway contract suite against Stripe's own test mode, every call the product
# makes. STRIPE_API_KEY=sk_test_... make test-stripe (without a test key it says it skipped).
test-stripe: install
	@bash scripts/test-stripe.sh

# Benchmarks (bench/*.py): each starts its own throwaway PostgreSQL, redis-server and processes and
# prints its figures. `make bench-enqueue` runs bench/bench_enqueue.py, `make bench-batch-limit`
# bench/bench_batch_limit.py, and so on; ARGS passes flags (make bench-scale ARGS="--invoices 100000").
PERFORMANCE_BENCHES := enqueue click-to-final batch-limit webhooks scale
bench-%: install system-test-deps
	$(BIN)/python bench/bench_$(subst -,_,$*).py $(ARGS)

# Issue 8's figures, one after the other (they would disturb each other side by side).
bench: $(addprefix bench-,$(PERFORMANCE_BENCHES))

chaos: install system-test-deps
	$(BIN)/python bench/chaos.py $(ARGS)

# Front-end libraries, vendored at pinned versions from the npm registry (nothing loads from a CDN),
# each with its licence files: Pico CSS (every page; its conditional build, which styles only inside
# class="pico", on the API documentation page, where Swagger UI keeps its own look), Chart.js (charts,
# drawn by web/static/charts.js) and Swagger UI (the API documentation page; its bundle without the
# standalone preset, whose top bar carries an inline <style> the Content-Security-Policy refuses).
PICO_VERSION := 2.1.1
CHARTJS_VERSION := 4.6.2
SWAGGER_UI_VERSION := 5.36.0
VENDOR_TMP := /tmp/offsession-vendor
VENDOR := web/static/vendor
vendor:
	rm -rf $(VENDOR_TMP) && mkdir -p $(VENDOR_TMP)/pico $(VENDOR_TMP)/chartjs $(VENDOR_TMP)/swagger-ui
	rm -rf $(VENDOR)/pico $(VENDOR)/chartjs $(VENDOR)/swagger-ui
	mkdir -p $(VENDOR)/pico $(VENDOR)/chartjs $(VENDOR)/swagger-ui
	cd $(VENDOR_TMP)/pico && npm pack @picocss/pico@$(PICO_VERSION) --silent && tar xzf *.tgz
	cd $(VENDOR_TMP)/pico/package && cp css/pico.min.css css/pico.conditional.min.css LICENSE.md \
		$(CURDIR)/$(VENDOR)/pico/
	cd $(VENDOR_TMP)/chartjs && npm pack chart.js@$(CHARTJS_VERSION) --silent && tar xzf *.tgz
	cp $(VENDOR_TMP)/chartjs/package/dist/chart.umd.min.js $(VENDOR_TMP)/chartjs/package/LICENSE.md $(VENDOR)/chartjs/
	cd $(VENDOR_TMP)/swagger-ui && npm pack swagger-ui-dist@$(SWAGGER_UI_VERSION) --silent && tar xzf *.tgz
	cd $(VENDOR_TMP)/swagger-ui/package && cp swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt \
		swagger-ui.css LICENSE NOTICE $(CURDIR)/$(VENDOR)/swagger-ui/
	rm -rf $(VENDOR_TMP)

clean:
	rm -rf $(VENV) var .pytest_cache
