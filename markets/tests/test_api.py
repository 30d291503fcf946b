"""Market API: creation with its fee, list with filters, search, ordering and cursor pages, detail, forecasts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import LedgerEntry
from agents.tests.factories import AgentFactory
from markets.models import Forecast, Market
from markets.tests.factories import MarketFactory
from testsupport.api import (
    API,
    api_client,
    assert_decimal_string,
    assert_error,
    assert_page,
    assert_time,
    assert_uuid,
    balances,
    mint,
    operator_resolver,
    place,
    unchanged,
    walk_pages,
)
from trading.lifecycle import market_close
from trading.resolution import market_resolve

MARKET_FIELDS = {
    "id",
    "question",
    "description",
    "category",
    "deadline",
    "status",
    "outcome",
    "yes_price",
    "no_price",
    "volume",
    "created_at",
    "resolved_at",
}

pytestmark = pytest.mark.django_db


def days_from_now(days: float):
    return timezone.now() + timedelta(days=days)


def in_days(days: float) -> str:
    return (timezone.now() + timedelta(days=days)).isoformat()


def assert_market_shape(body: dict) -> None:
    assert set(body) >= MARKET_FIELDS, body
    assert_uuid(body["id"])
    assert_time(body["deadline"])
    assert_time(body["created_at"])
    assert body["status"] in ("open", "closed", "resolved")
    assert body["outcome"] in ("YES", "NO", "VOID", None)
    assert (body["outcome"] is None) == (body["status"] != "resolved")
    for price in ("yes_price", "no_price"):
        if body[price] is not None:
            assert_decimal_string(body[price])
    assert isinstance(body["volume"], int)
    if body["resolved_at"] is not None:
        assert_time(body["resolved_at"])


# --------------------------------------------------------------------------------------------------------------------
# POST /markets/


def test_it_creates_a_market_and_charges_the_10_credit_fee(audit_clean):
    alice = AgentFactory()
    client = api_client(alice)
    deadline = timezone.now() + timedelta(days=3)

    response = client.post(
        f"{API}/markets/",
        {
            "question": "Will the bridge open by June?",
            "description": "Resolves YES if cars cross it before 1 June.",
            "category": "infrastructure",
            "deadline": deadline.isoformat(),
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert_market_shape(body)
    assert body["question"] == "Will the bridge open by June?"
    assert body["description"] == "Resolves YES if cars cross it before 1 June."
    assert body["category"] == "infrastructure"
    assert assert_time(body["deadline"]) == deadline
    assert (body["status"], body["outcome"], body["yes_price"], body["no_price"]) == ("open", None, None, None)
    assert (body["volume"], body["resolved_at"]) == (0, None)
    me = client.get(f"{API}/agents/me/").json()
    assert (me["balance"], me["locked_balance"], me["available_balance"]) == ("990.00", "0.00", "990.00")
    fee = LedgerEntry.objects.get(agent=alice, kind="fee")
    assert (fee.amount, str(fee.market_id)) == (Decimal("-10.00"), body["id"])
    assert Market.objects.get(id=body["id"]).creator_id == alice.id
    audit_clean()


@pytest.mark.parametrize(
    "change",
    [
        {"deadline": "past"},
        {"deadline": "now"},
        {"deadline": "six years"},
        {"deadline": "not a date"},
        {"deadline": 1893456000},
        {"deadline": None},
        {"deadline": "missing"},
        {"question": "missing"},
        {"question": ""},
        {"question": "   "},
        {"question": "?" * 301},
        {"question": "?" * 501},
        {"question": ["a list"]},
        {"question": "null \u0000 inside"},
        {"category": "c" * 41},
        {"description": {"an": "object"}},
    ],
    ids=lambda change: next(f"{k}={str(v)[:20]}" for k, v in change.items()),
)
def test_it_refuses_a_malformed_market_and_charges_nothing(change, audit_clean):
    alice = AgentFactory()
    times = {
        "past": in_days(-1),
        "now": timezone.now().isoformat(),
        "six years": in_days(6 * 366),
    }
    body = {"question": "Will it rain?", "deadline": in_days(2)}
    for field, value in change.items():
        if value == "missing":
            body.pop(field)
        else:
            body[field] = times.get(value, value) if isinstance(value, str) else value

    with unchanged(audit_clean):
        assert_error(api_client(alice).post(f"{API}/markets/", body), 400, "invalid_request")
    assert balances(alice) == (Decimal("1000.00"), Decimal("0.00"))


def test_it_refuses_a_market_whose_creator_cannot_pay_the_fee(market, audit_clean):
    alice = AgentFactory()
    client = api_client(alice)
    place(client, market, "YES", "BUY", "0.99", 1005)  # reserves 994.95, leaving 5.05 available

    with unchanged(audit_clean):
        response = client.post(f"{API}/markets/", {"question": "Can I pay?", "deadline": in_days(1)})
        assert_error(response, 400, "insufficient_balance")
    assert balances(alice) == (Decimal("1000.00"), Decimal("994.95"))


def test_it_refuses_to_create_a_market_without_a_key(audit_clean):
    AgentFactory()
    with unchanged(audit_clean):
        response = api_client().post(f"{API}/markets/", {"question": "Anonymous?", "deadline": in_days(1)})
        assert_error(response, 401, "not_authenticated")
        response = api_client(key="ms_nope").post(f"{API}/markets/", {"question": "Wrong key?", "deadline": in_days(1)})
        assert_error(response, 401, "invalid_api_key")


def test_it_refuses_a_malformed_json_market(audit_clean):
    alice = AgentFactory()
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/markets/", '{"question": "x",', content_type="application/json")
        assert_error(response, 400, "malformed_json")


# --------------------------------------------------------------------------------------------------------------------
# GET /markets/ and /markets/{id}/


@pytest.fixture
def three_markets():
    """An open, a closed and a resolved market of one creator (newest last), as ids."""
    creator = AgentFactory(name="creator")
    ids = {}
    for name, question in (
        ("resolved", "Will the comet be visible?"),
        ("closed", "Will the election be close?"),
        ("open", "Will the river flood this spring?"),
    ):
        market = MarketFactory(creator=creator, question=question, deadline=days_from_now(5), category=name)
        ids[name] = str(market.id)
    market_close(market_id=ids["closed"])
    market_resolve(market_id=ids["resolved"], outcome="NO", resolver=operator_resolver())
    return ids


def test_it_lists_markets_newest_first_in_a_cursor_page(three_markets):
    response = api_client().get(f"{API}/markets/")
    assert response.status_code == 200
    results = assert_page(response.json())
    for row in results:
        assert_market_shape(row)
    assert [row["id"] for row in results] == [three_markets["open"], three_markets["closed"], three_markets["resolved"]]
    assert [(row["status"], row["outcome"]) for row in results] == [
        ("open", None),
        ("closed", None),
        ("resolved", "NO"),
    ]
    assert_time(results[2]["resolved_at"])


@pytest.mark.parametrize("status", ["open", "closed", "resolved"])
def test_it_filters_markets_by_status(status, three_markets):
    results = assert_page(api_client().get(f"{API}/markets/?status={status}").json())
    assert [row["id"] for row in results] == [three_markets[status]]


def test_it_searches_market_questions(three_markets):
    results = assert_page(api_client().get(f"{API}/markets/?search=flood").json())
    assert [row["id"] for row in results] == [three_markets["open"]]
    assert assert_page(api_client().get(f"{API}/markets/?search=zebra").json()) == []


@pytest.mark.parametrize("query", ["?status=bogus", "?status=OPEN", "?outcome=MAYBE", "?category=%00"])
def test_it_refuses_an_unknown_filter_value(query, three_markets, audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/markets/{query}"), 400, "invalid_request")


def test_it_orders_markets_by_volume(market):
    quiet = {"id": str(MarketFactory(question="Quiet?", deadline=days_from_now(1)).id)}
    mint(api_client(AgentFactory()), api_client(AgentFactory()), market, 7)

    by_volume = assert_page(api_client().get(f"{API}/markets/?ordering=-volume").json())

    assert [(row["id"], row["volume"]) for row in by_volume] == [(str(market.id), 7), (quiet["id"], 0)]
    ascending = assert_page(api_client().get(f"{API}/markets/?ordering=volume").json())
    assert [row["id"] for row in ascending] == [quiet["id"], str(market.id)]


def test_the_market_list_pages_with_a_cursor_without_repeats_or_gaps():
    creator = AgentFactory()
    created = [
        str(MarketFactory(creator=creator, question=f"Question {n}?", deadline=days_from_now(1 + n % 2)).id)
        for n in range(5)
    ]

    newest_first, pages = walk_pages(api_client(), f"{API}/markets/?page_size=2")
    assert pages == 3
    assert [row["id"] for row in newest_first] == list(reversed(created))
    # Ordering by a column full of ties (every volume is 0) must still page through each market exactly once.
    by_volume, pages = walk_pages(api_client(), f"{API}/markets/?page_size=2&ordering=-volume")
    assert pages == 3
    assert sorted(row["id"] for row in by_volume) == sorted(created)
    # The previous link leads back to the first page.
    second = api_client().get(api_client().get(f"{API}/markets/?page_size=2").json()["next"]).json()
    first_again = api_client().get(second["previous"]).json()
    assert [row["id"] for row in first_again["results"]] == list(reversed(created))[:2]


def test_it_answers_a_forged_cursor_with_404_in_the_error_shape(market, audit_clean):
    # DRF's CursorPagination treats an undecodable cursor as a page that does not exist.
    with unchanged(audit_clean):
        error = assert_error(api_client().get(f"{API}/markets/?cursor=abc"), 404, "not_found")
    assert "cursor" in error["message"].lower()


def test_it_shows_a_market_with_its_prices_and_volume(market):
    mint(api_client(AgentFactory()), api_client(AgentFactory()), market, 4, "0.62")
    api_client(AgentFactory()).post(
        f"{API}/orders/", {"market": str(market.id), "side": "YES", "action": "BUY", "price": "0.55", "size": 1}
    )

    response = api_client().get(f"{API}/markets/{market.id}/")

    assert response.status_code == 200
    body = response.json()
    assert_market_shape(body)
    assert body["id"] == str(market.id)
    assert (body["yes_price"], body["no_price"], body["volume"]) == ("0.62", "0.38", 4)
    assert body["best_bid"] == "0.55"
    assert body["best_ask"] is None


@pytest.mark.parametrize("market_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "1", "%00"])
def test_it_answers_404_for_an_unknown_market(market_id, market, audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/markets/{market_id}/"), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# POST /markets/{id}/forecast/


def test_it_records_a_stated_forecast_without_trading(market, audit_clean):
    alice = AgentFactory()
    client = api_client(alice)

    response = client.post(
        f"{API}/markets/{market.id}/forecast/", {"probability": "0.73", "reasoning": "Base rates say so."}
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["agent"] == alice.name
    assert body["market"] == str(market.id)
    assert Decimal(assert_decimal_string(body["probability"], places=None)) == Decimal("0.73")
    assert body["reasoning"] == "Base rates say so."
    assert_time(body["created_at"])
    assert balances(alice) == (Decimal("1000.00"), Decimal("0.00"))
    assert Forecast.objects.filter(agent=alice, market=market).count() == 1
    # Numbers are accepted as well as strings, and 0 and 1 are allowed.
    assert client.post(f"{API}/markets/{market.id}/forecast/", {"probability": 1}).status_code == 201
    assert client.post(f"{API}/markets/{market.id}/forecast/", {"probability": 0}).status_code == 201
    audit_clean()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"probability": None},
        {"probability": "1.01"},
        {"probability": -0.1},
        {"probability": "abc"},
        {"probability": True},
        {"probability": [0.5]},
        {"probability": "NaN"},
        {"probability": "0.5", "reasoning": "r" * 5001},
    ],
    ids=str,
)
def test_it_refuses_a_malformed_forecast(body, market, audit_clean):
    alice = AgentFactory()
    with unchanged(audit_clean):
        assert_error(api_client(alice).post(f"{API}/markets/{market.id}/forecast/", body), 400, "invalid_request")


def test_it_refuses_a_forecast_on_a_closed_market(market, audit_clean):
    alice = AgentFactory()
    market_close(market_id=market.id)
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/markets/{market.id}/forecast/", {"probability": "0.5"})
        assert_error(response, 409, "market_closed")


def test_it_refuses_a_forecast_once_the_deadline_has_passed(market, audit_clean):
    alice = AgentFactory()
    Market.objects.filter(id=market.id).update(deadline=timezone.now() - timedelta(seconds=1))
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/markets/{market.id}/forecast/", {"probability": "0.5"})
        assert_error(response, 409, "market_closed")


@pytest.mark.parametrize("market_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_it_refuses_a_forecast_on_an_unknown_market(market_id, market, audit_clean):
    alice = AgentFactory()
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/markets/{market_id}/forecast/", {"probability": "0.5"})
        assert_error(response, 404, "not_found")


def test_it_refuses_a_forecast_without_a_key(market, audit_clean):
    with unchanged(audit_clean):
        response = api_client().post(f"{API}/markets/{market.id}/forecast/", {"probability": "0.5"})
        assert_error(response, 401, "not_authenticated")
