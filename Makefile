# MoltStreet: `make run` serves the whole app on SQLite; `make test` runs the suite on PostgreSQL and Redis.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# `make run` starts the scheduler (manage.py run_scheduler) and the backtest worker (manage.py run_worker) beside the
# server. `make run TRADERS=0`: no house traders (manage.py run_traders) next to the server.
TRADERS ?= 1
# `make run SOURCES=kalshi,polymarket,manifold`: the source poller (manage.py run_poller) beside the server, with a
# feed for each named source. Off by default: it needs the internet.
SOURCES ?=
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/moltstreet
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
DATA ?= ../shared/data
# The browser tests drive Debian's Chromium through its own driver (trading/tests/test_browser.py).
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver

.PHONY: run test test-long setup local-env browser lint typecheck format audit clean

$(STAMP): requirements.txt client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet -e "./client[mcp]"
	touch $(STAMP)

setup: $(STAMP) local-env

# .env (git-ignored) with this checkout's own SECRET_KEY, written once: with DEBUG off the server refuses to start on
# a missing, published or short key (moltstreet/settings.py). A SECRET_KEY already in .env is kept.
local-env:
	@touch .env; grep -q '^SECRET_KEY=' .env || { \
		$(PYTHON) -c 'import secrets; print("SECRET_KEY=" + secrets.token_urlsafe(50))' >> .env && \
		echo "Wrote a new SECRET_KEY to .env (this checkout's own; keep it out of version control)"; }

run: $(STAMP) local-env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v0
	$(BIN)/python manage.py build_client_wheel
	$(BIN)/python manage.py bootstrap --data $(DATA) --random-password
	rm -f .traders.pid .poller.pid; $(BIN)/python manage.py run_scheduler & echo $$! > .scheduler.pid; \
	$(BIN)/python manage.py run_worker & echo $$! > .worker.pid; \
	if [ "$(TRADERS)" != 0 ]; then \
		$(BIN)/python manage.py run_traders --url http://$(HOST):$(PORT) & echo $$! > .traders.pid; \
	fi; \
	if [ -n "$(SOURCES)" ]; then \
		$(BIN)/python manage.py run_poller --sources "$(SOURCES)" & echo $$! > .poller.pid; \
	fi; \
	trap 'kill $$(cat .scheduler.pid .worker.pid .traders.pid .poller.pid 2>/dev/null) 2>/dev/null; rm -f .scheduler.pid .worker.pid .traders.pid .poller.pid' EXIT INT TERM; \
	echo "Serving http://$(HOST):$(PORT)/ with daphne, one process (SQLite and the in-memory channel layer; production serves uvicorn workers, see the README)"; \
	$(BIN)/daphne -v 0 -b $(HOST) -p $(PORT) moltstreet.asgi:application

# Chromium and ChromeDriver for the browser tests: installed with apt-get when missing and we are root, otherwise the
# exact command to run is printed and `make test` fails (the browser tests never skip).
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Chromium and ChromeDriver for the browser tests (apt-get)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver || exit 1; \
		[ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ] && exit 0; \
		echo "apt-get did not provide $(CHROMIUM) and $(CHROMEDRIVER)" >&2; exit 1; \
	fi; \
	echo "The browser tests need $(CHROMIUM) and $(CHROMEDRIVER). Install them (as root) with:" >&2; \
	echo "apt-get install -y chromium chromium-driver" >&2; \
	exit 1

# The type check runs first: a type error fails `make test` (and so CI, .ci/run) in seconds, before the suite.
test: $(STAMP) local-env browser typecheck
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/pytest $(PYTEST_ARGS)

# The property test (trading/tests/test_properties.py) with many more and longer random sequences than `make test`
# runs: the Hypothesis profile "long" of trading/tests/conftest.py, about 20 minutes. `make test-long
# PROPERTY_EXAMPLES=N` sets the count; a failure names its seed (PROPERTY_SEED=<n> replays it).
test-long: $(STAMP) local-env
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} PROPERTY_PROFILE=long \
		$(BIN)/pytest trading/tests/test_properties.py $(PYTEST_ARGS)

lint: $(STAMP) typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy with the django-stubs and DRF plugins on the apps (pyproject.toml [tool.mypy]). The plugin imports
# moltstreet.settings: DEBUG=1 lets it load without a SECRET_KEY (the only setting DEBUG changes), and without
# DATABASE_URL and REDIS_URL it configures SQLite and in-memory layers, so the check needs no running service.
typecheck: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL DEBUG=1 $(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

audit: $(STAMP)
	$(BIN)/python manage.py audit

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache .mypy_cache .hypothesis
