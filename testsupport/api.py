"""Helpers for the agent API tests: an API client that checks every error it receives, shape assertions, and a
snapshot of everything a rejected request must leave alone.

The client (:func:`api_client`) asserts the one error shape of DESIGN section 7 on *every* 4xx/5xx response it
receives, so no test in the API suites can get an error in another shape past it, whatever the test itself checks.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

from rest_framework.test import APIClient

API = "/api/v1"
DECIMAL_RE = re.compile(r"^-?\d+\.\d+$")


class CheckedAPIClient(APIClient):
    """``APIClient`` that sends JSON and asserts the error shape on every response with a 4xx or 5xx status."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.default_format = "json"

    def request(self, **kwargs):
        response = super().request(**kwargs)
        if response.status_code >= 400:
            assert_error_shape(response)
        return response


def api_client(agent: Any = None, *, key: str | None = None, authorization: str | None = None) -> CheckedAPIClient:
    """A JSON client: anonymous, as ``agent`` (``Authorization: Bearer <agent.api_key>``), with a raw ``key``, or with
    a raw ``authorization`` header value."""
    client = CheckedAPIClient()
    if agent is not None:
        key = agent.api_key
    if key is not None:
        authorization = f"Bearer {key}"
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


def make_oracle(agent: Any) -> None:
    """Flag ``agent`` as an oracle, as an operator does in the admin."""
    from agents.models import Agent

    Agent.objects.filter(id=agent.id).update(is_oracle=True)


def post_order(client: APIClient, market: Any, side: str, action: str, price: Any, size: Any, **extra: Any):
    """``POST /orders/`` with the given fields, sent as given (a ``Decimal`` price as its string), so a test can try
    any JSON type."""
    body = {"market": str(market.id), "side": side, "action": action, "price": price, "size": size, **extra}
    if isinstance(price, Decimal):
        body["price"] = str(price)
    return client.post(f"{API}/orders/", body)


def place(client: APIClient, market: Any, side: str, action: str, price: Any, size: Any, **extra: Any) -> dict:
    """Place an order that must be accepted (201); returns ``{order, trades}``."""
    response = post_order(client, market, side, action, price, size, **extra)
    assert response.status_code == 201, response.content
    return response.json()


def mint(yes_buyer: APIClient, no_buyer: APIClient, market: Any, size: int, yes_price: str = "0.50") -> dict:
    """Through the API: a resting BUY YES at ``yes_price`` met by a BUY NO at ``1 - yes_price`` (one mint trade).
    Returns the taker's ``{order, trades}``."""
    place(yes_buyer, market, "YES", "BUY", yes_price, size)
    placed = place(no_buyer, market, "NO", "BUY", str(Decimal(1) - Decimal(yes_price)), size)
    assert placed["order"]["status"] == "filled", placed
    return placed


# --------------------------------------------------------------------------------------------------------------------
# Shapes


def assert_error_shape(response) -> dict[str, Any]:
    """The body is exactly ``{"error": {"code": str, "message": str, "detail": dict-or-list}}`` as JSON."""
    assert response.status_code >= 400, response.status_code
    assert response["Content-Type"].startswith("application/json"), (response.status_code, response["Content-Type"])
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"code", "message", "detail"}, body
    assert isinstance(error["code"], str), body
    assert re.fullmatch(r"[a-z][a-z_]*", error["code"]), body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    assert isinstance(error["detail"], (dict, list)), body
    return error


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    """A 4xx response with ``status``, in the one error shape, with ``code``; returns the ``error`` object."""
    assert 400 <= status < 600, status
    body = response.content.decode(errors="replace")[:500]
    assert response.status_code == status, (response.status_code, body)
    error = assert_error_shape(response)
    assert error["code"] == code, (error["code"], code, body)
    return error


def assert_decimal_string(value: Any, places: int | None = 2) -> Decimal:
    """A decimal string such as ``"0.55"`` (never a float or an int); returns it as ``Decimal``."""
    assert isinstance(value, str), (value, type(value))
    assert DECIMAL_RE.match(value), value
    if places is not None:
        assert len(value.split(".")[1]) == places, value
    return Decimal(value)


def assert_uuid(value: Any) -> uuid.UUID:
    assert isinstance(value, str), value
    parsed = uuid.UUID(value)
    assert str(parsed) == value, value
    return parsed


def assert_time(value: Any) -> datetime:
    """An ISO 8601 time with a time zone."""
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def assert_page(body: Any) -> list[dict[str, Any]]:
    """A cursor page ``{next, previous, results}``; returns the results."""
    assert isinstance(body, dict), body
    assert set(body) == {"next", "previous", "results"}, body
    assert isinstance(body["results"], list), body
    for link in ("next", "previous"):
        assert body[link] is None or ("cursor=" in body[link]), body[link]
    return body["results"]


def walk_pages(client: APIClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Follow ``next`` from ``url`` to the end; returns every result and the number of pages read."""
    results: list[dict[str, Any]] = []
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        results += assert_page(response.json())
        pages += 1
        url = response.json()["next"]
        assert pages < 100, "pagination does not end"
    return results, pages


# --------------------------------------------------------------------------------------------------------------------
# State


def state() -> dict[str, Any]:
    """Every row a rejected request must leave alone: balances, reserves, positions, orders, trades, ledger,
    markets with their sequence numbers, events and forecasts."""
    from agents.models import Agent, ApiKey, LedgerEntry
    from markets.models import Forecast, Market, MarketEvent
    from trading.models import Order, Position, Trade

    return {
        "agents": list(
            Agent.objects.order_by("id").values_list(
                "id", "name", "balance", "locked_balance", "reputation", "brier_count", "is_oracle"
            )
        ),
        "api_keys": list(ApiKey.objects.order_by("id").values_list("id", "revoked_at")),
        "positions": list(
            Position.objects.order_by("id").values_list(
                "id", "yes_shares", "no_shares", "yes_reserved", "no_reserved", "yes_cost", "no_cost", "realized_pnl"
            )
        ),
        "orders": list(Order.objects.order_by("id").values_list("id", "status", "filled", "cancel_reason")),
        "trades": Trade.objects.count(),
        "ledger": LedgerEntry.objects.count(),
        "markets": list(
            Market.objects.order_by("id").values_list("id", "status", "outcome", "seq", "volume", "last_price")
        ),
        "events": MarketEvent.objects.count(),
        "forecasts": Forecast.objects.count(),
    }


@contextmanager
def unchanged(audit_clean=None) -> Iterator[None]:
    """Assert that the block changes no row of :func:`state` (and, given the fixture, that the audit is clean)."""
    before = state()
    yield
    after = state()
    assert after == before, {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    if audit_clean is not None:
        audit_clean()


def balances(agent: Any) -> tuple[Decimal, Decimal]:
    """(balance, locked_balance) of ``agent`` as stored now."""
    from agents.models import Agent

    return Agent.objects.values_list("balance", "locked_balance").get(id=agent.id)


__all__ = [
    "API",
    "CheckedAPIClient",
    "api_client",
    "assert_decimal_string",
    "assert_error",
    "assert_error_shape",
    "assert_page",
    "assert_time",
    "assert_uuid",
    "balances",
    "make_oracle",
    "mint",
    "place",
    "post_order",
    "state",
    "unchanged",
    "walk_pages",
]


def operator_resolver():
    """The resolver of tests that resolve as an operator does (final at once): a named operator, no account."""
    from markets.models import Resolver

    return Resolver.operator(None, "test operator")
