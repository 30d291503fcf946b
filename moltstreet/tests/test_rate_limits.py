"""Rate limits (moltstreet/throttling.py): per-agent read and write budgets, per-IP anonymous and registration
budgets, 429 ``rate_limited`` with ``Retry-After``, nothing changed by a refused request, counted in Redis (the
suite's cache), and let through when the cache is down."""

from __future__ import annotations

import logging

import pytest
from django.conf import settings as django_settings

from moltstreet import throttling
from testsupport.api import API, api_client, assert_error, place, unchanged

pytestmark = pytest.mark.django_db


@pytest.fixture
def budgets(settings):
    """Set some scopes' budgets for one test: ``budgets(agent_write="3/min")``."""

    def set_budgets(**rates: str) -> None:
        settings.MOLTSTREET = {**settings.MOLTSTREET, "RATES": {**settings.MOLTSTREET["RATES"], **rates}}

    return set_budgets


def assert_limited(response, window: int) -> None:
    assert_error(response, 429, "rate_limited")
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= window, retry_after


def test_the_suite_counts_in_redis():
    assert django_settings.CACHES["default"]["BACKEND"].endswith("RedisCache")


def test_an_agent_over_its_write_budget_gets_429_and_nothing_changes(budgets, make_agent, market, audit_clean):
    budgets(agent_write="3/min")
    alice, bob = make_agent(), make_agent()
    client = api_client(alice)
    for price in ("0.30", "0.31", "0.32"):
        place(client, market, "YES", "BUY", price, 1)

    with unchanged(audit_clean):
        body = {"market": str(market.id), "side": "YES", "action": "BUY", "price": "0.33", "size": 1}
        assert_limited(client.post(f"{API}/orders/", body), 60)
        assert_limited(client.post(f"{API}/orders/cancel-all/", {}), 60)
    # Reads have their own budget, and other agents theirs.
    assert client.get(f"{API}/orders/").status_code == 200
    place(api_client(bob), market, "YES", "BUY", "0.30", 1)


def test_an_agent_over_its_read_budget_gets_429_but_may_still_trade(budgets, make_agent, market):
    budgets(agent_read="2/min")
    client = api_client(make_agent())
    for _ in range(2):
        assert client.get(f"{API}/agents/me/").status_code == 200

    assert_limited(client.get(f"{API}/positions/"), 60)
    place(client, market, "YES", "BUY", "0.30", 1)


def test_anonymous_requests_are_counted_per_ip(budgets, market):
    budgets(anon="2/min")
    here, there = api_client(), api_client()
    there.defaults["REMOTE_ADDR"] = "10.0.0.2"
    for _ in range(2):
        assert here.get(f"{API}/markets/").status_code == 200

    assert_limited(here.get(f"{API}/markets/{market.id}/orderbook/"), 60)
    assert there.get(f"{API}/markets/").status_code == 200


def test_a_forwarded_for_header_is_not_trusted_unless_proxies_are_configured(budgets, settings):
    budgets(anon="1/min")
    client = api_client()
    assert client.get(f"{API}/markets/", HTTP_X_FORWARDED_FOR="198.51.100.1").status_code == 200
    # A client cannot pick a fresh IP (and budget) by sending the header itself.
    assert_limited(client.get(f"{API}/markets/", HTTP_X_FORWARDED_FOR="198.51.100.2"), 60)

    # Behind one trusted proxy, the address the proxy appended is the client's.
    settings.TRUSTED_PROXIES = 1
    assert client.get(f"{API}/markets/", HTTP_X_FORWARDED_FOR="198.51.100.3").status_code == 200
    assert_limited(client.get(f"{API}/markets/", HTTP_X_FORWARDED_FOR="198.51.100.3"), 60)
    assert client.get(f"{API}/markets/", HTTP_X_FORWARDED_FOR="198.51.100.4").status_code == 200


def test_registration_is_limited_per_ip(budgets, audit_clean):
    budgets(register="2/hour")
    client = api_client()
    for name in ("first-bot", "second-bot"):
        assert client.post(f"{API}/agents/", {"name": name}).status_code == 201

    with unchanged(audit_clean):
        assert_limited(client.post(f"{API}/agents/", {"name": "third-bot"}), 3600)
    # Reading is not registering; another address may still register.
    assert client.get(f"{API}/agents/").status_code == 200
    elsewhere = api_client()
    elsewhere.defaults["REMOTE_ADDR"] = "10.0.0.9"
    assert elsewhere.post(f"{API}/agents/", {"name": "third-bot"}).status_code == 201


def test_an_empty_budget_turns_a_scope_off(budgets, make_agent):
    budgets(agent_read="")
    client = api_client(make_agent())
    for _ in range(5):
        assert client.get(f"{API}/agents/me/").status_code == 200


def test_the_budget_in_force_is_documented(budgets, client):
    budgets(agent_write="77/min", register="5/hour")
    guide = client.get("/docs/").content.decode()
    skill = client.get("/skill.md").content.decode()
    for text in (guide, skill):
        assert "77 per min" in text and "5 per hour" in text


class _DownCache:
    """A cache whose every call fails the way the Redis client does when Redis is unreachable."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return fail


def test_requests_go_through_when_the_cache_is_down(budgets, make_agent, market, monkeypatch, caplog, audit_clean):
    budgets(agent_write="1/min", agent_read="1/min", anon="1/min", register="1/hour")
    monkeypatch.setattr(throttling._Throttle, "cache", _DownCache())
    client = api_client(make_agent())

    with caplog.at_level(logging.WARNING, logger="moltstreet.throttling"):
        for price in ("0.30", "0.31"):
            place(client, market, "YES", "BUY", price, 1)
        for _ in range(2):
            assert client.get(f"{API}/orders/").status_code == 200
            assert api_client().get(f"{API}/markets/").status_code == 200
        assert api_client().post(f"{API}/agents/", {"name": "while-redis-is-down"}).status_code == 201

    assert any("cache unavailable" in r.getMessage() for r in caplog.records)
    audit_clean()
