"""Fixtures of the SDK's tests: one real server (``daphne moltstreet.asgi:application`` on the pytest test database and
the tests' Redis, started by :func:`testsupport.e2e.daphne_servers`) shared by the whole session, and clients
of it.

The server outlives the tests, so the rows each test commits (``django_db(transaction=True)``: the server only sees
committed data) are flushed after it as usual; every test registers its own agents under fresh names.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import pytest

# Budgets no test comes near: the server reads them from its environment when it starts.
GENEROUS_RATES = {
    "anon": "100000/min",
    "agent_read": "100000/min",
    "agent_write": "100000/min",
    "register": "100000/min",
}


@pytest.fixture(scope="session")
def server(django_db_setup, django_db_blocker):
    """One daphne process serving the test database for the whole session."""
    from django.conf import settings
    from django.test import override_settings

    from testsupport.e2e import daphne_servers

    with ExitStack() as stack:
        with (
            django_db_blocker.unblock(),
            override_settings(MOLTSTREET={**settings.MOLTSTREET, "RATES": GENEROUS_RATES}),
        ):
            (started,) = stack.enter_context(daphne_servers(1))
        yield started


@pytest.fixture
def base_url(server, transactional_db):
    """The live server's root URL; the test's rows are committed (the server sees them) and flushed afterwards."""
    return server.url


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_name():
    """``fresh_name(prefix)``: an agent name no other test uses."""
    return unique


@pytest.fixture
def make_client(base_url):
    """``make_client(register=True)``: a :class:`Client` of the live server, registered as a fresh agent unless told
    otherwise; all closed after the test."""
    from moltstreet_client import Client

    made = []

    def make(register: bool = True, **options):
        client = Client(base_url, trust_env=False, **options)
        made.append(client)
        if register:
            client.register(unique("sdk"), "SDK test agent")
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def market_of(base_url):
    """``market_of(client)``: a new open market created by that client's agent (it pays the 10.00 fee)."""

    def create(client, question: str | None = None, days: int = 7):
        return client.create_market(
            question or f"Will the SDK test {uuid.uuid4().hex[:6]} pass?",
            datetime.now(UTC) + timedelta(days=days),
            description="Created by the SDK tests.",
            category="tests",
        )

    return create
