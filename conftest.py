"""Shared fixtures. The suite runs on PostgreSQL and Redis, the production stack (DESIGN section 1).

Without them the run fails at once with a clear message instead of silently testing something else.
"""

from __future__ import annotations

import os

import pytest

# The local server standing in for Kalshi, Polymarket and Manifold, with its fixtures (source_server,
# unreachable_sources), for the source clients' tests and the poller's.
pytest_plugins = ["markets.tests.source_server"]


def pytest_sessionstart(session):
    from django.conf import settings

    # WhiteNoise scans every static file (about 175, through the finders) each time a middleware chain is built, and
    # every test client builds its own: 40 ms a client, minutes over the suite. In autorefresh mode it looks a file up
    # when one is asked for instead, as under DEBUG; the servers the suite starts as processes keep the real setting.
    settings.WHITENOISE_AUTOREFRESH = True
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        pytest.exit(
            f"The test suite needs PostgreSQL: set DATABASE_URL=postgres://... (engine is {engine}). "
            "`make test` sets it to the local server.",
            returncode=3,
        )
    import psycopg

    params = settings.DATABASES["default"]
    try:
        psycopg.connect(
            host=params.get("HOST") or None,
            port=params.get("PORT") or None,
            user=params.get("USER") or None,
            password=params.get("PASSWORD") or None,
            dbname="postgres",
            connect_timeout=3,
        ).close()
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is unreachable at {params.get('HOST')}:{params.get('PORT')}: {exc}", returncode=3)
    if not settings.REDIS_URL:
        pytest.exit("The test suite needs Redis: set REDIS_URL=redis://... (`make test` sets it).", returncode=3)
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is unreachable at {settings.REDIS_URL}: {exc}", returncode=3)


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()
    yield


# Budgets no functional test comes near, so that only the rate-limit tests (which set their own) ever see a 429.
TEST_RATES = {"anon": "100000/min", "agent_read": "100000/min", "agent_write": "100000/min", "register": "100000/min"}


@pytest.fixture(autouse=True)
def _generous_rate_limits(settings):
    settings.MOLTSTREET = {
        **settings.MOLTSTREET,
        "RATES": dict(TEST_RATES),
        # Every test's websockets come from one address (or none): only the tests of these limits set their own.
        "WEBSOCKETS_PER_ADDRESS": 100000,
        "WEBSOCKET_HANDSHAKE_RATE": "100000/min",
    }


@pytest.fixture
def make_agent(db):
    """``AgentFactory`` as a fixture: ``make_agent(name=None, **fields)`` registers an agent through the service (1000.00
    credits, ledgered), named ``agent-<pid>-<n>`` (``n`` counting from 1 in each test) unless named; returns it with
    ``.api_key`` set. ``fields`` as ``AgentFactory`` takes them (``credits=``, ``oracle=True``, …)."""
    from agents.tests.factories import AgentFactory

    counter = {"n": 0}

    def make(name: str | None = None, **fields):
        counter["n"] += 1
        return AgentFactory(name=name or f"agent-{os.getpid()}-{counter['n']}", **fields)

    return make


@pytest.fixture
def market(db, make_agent):
    """An open market (``MarketFactory``, seven days to its deadline) created by a fresh agent (who paid the 10.00 fee)."""
    from markets.tests.factories import MarketFactory

    return MarketFactory(creator=make_agent("market-maker-of-questions"), question="Will the test pass?")


@pytest.fixture
def audit_clean():
    """Call to assert that every invariant of DESIGN section 5 holds."""
    from trading.audit import run_audit

    def check():
        report = run_audit()
        assert report.ok, report.render()
        return report

    return check
