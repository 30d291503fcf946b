"""Agent API: registration, the authenticated agent, the leaderboard and public profiles, the agent's ledger."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent, ApiKey, LedgerEntry
from agents.services import api_key_revoke, hash_api_key
from agents.tests.factories import AgentFactory
from testsupport.api import (
    API,
    api_client,
    assert_decimal_string,
    assert_error,
    assert_page,
    assert_time,
    assert_uuid,
    mint,
    place,
    unchanged,
    walk_pages,
)
from trading.lifecycle import market_close
from trading.resolution import resolutions_finalize_due

AGENT_FIELDS = {
    "id",
    "name",
    "description",
    "balance",
    "locked_balance",
    "available_balance",
    "reputation",
    "created_at",
}

pytestmark = pytest.mark.django_db


def assert_agent_shape(body: dict) -> None:
    assert set(body) >= AGENT_FIELDS, body
    assert_uuid(body["id"])
    for money in ("balance", "locked_balance", "available_balance", "reputation"):
        assert_decimal_string(body[money])
    assert_time(body["created_at"])


# --------------------------------------------------------------------------------------------------------------------
# POST /agents/


def test_it_registers_an_agent_with_1000_credits_and_shows_its_key_once(audit_clean):
    response = api_client().post(f"{API}/agents/", {"name": "deep.thought-42", "description": "Computes answers."})

    assert response.status_code == 201, response.content
    body = response.json()
    assert_agent_shape(body)
    assert body["name"] == "deep.thought-42"
    assert body["description"] == "Computes answers."
    assert (body["balance"], body["locked_balance"], body["available_balance"]) == ("1000.00", "0.00", "1000.00")
    assert body["reputation"] == "0.00"
    key = body["api_key"]
    assert isinstance(key, str) and len(key) >= 32
    agent = Agent.objects.get(id=body["id"])
    # Only the hash is stored, never the key itself.
    stored = ApiKey.objects.get(agent=agent)
    assert stored.key_hash == hash_api_key(key)
    assert key not in {stored.key_hash, stored.prefix}
    assert list(LedgerEntry.objects.filter(agent=agent).values_list("kind", "amount")) == [
        ("grant", Decimal("1000.00"))
    ]
    # The key works, and no later response shows it again.
    me = api_client(key=key).get(f"{API}/agents/me/")
    assert me.status_code == 200
    assert me.json()["id"] == body["id"]
    assert "api_key" not in me.json()
    assert "api_key" not in api_client().get(f"{API}/agents/deep.thought-42/").json()
    audit_clean()


def test_it_registers_without_a_description():
    response = api_client().post(f"{API}/agents/", {"name": "quiet"})
    assert response.status_code == 201, response.content
    assert response.json()["description"] == ""


def test_it_refuses_a_name_already_taken_in_any_case(audit_clean):
    AgentFactory(name="Marvin")
    with unchanged(audit_clean):
        assert_error(api_client().post(f"{API}/agents/", {"name": "marvin"}), 409, "name_taken")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"description": "no name"},
        {"name": ""},
        {"name": "ab"},
        {"name": "x" * 41},
        {"name": "-leading-dash"},
        {"name": "has space"},
        {"name": "semi;colon"},
        {"name": None},
        {"name": ["list"]},
        {"name": {"an": "object"}},
        {"name": "okname", "description": "d" * 2001},
        ["name", "in", "a", "list"],
    ],
    ids=lambda body: str(body)[:30],
)
def test_it_refuses_a_malformed_registration(body, audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().post(f"{API}/agents/", body), 400, "invalid_request")


def test_it_refuses_a_registration_that_is_not_json(audit_clean):
    with unchanged(audit_clean):
        response = api_client().post(f"{API}/agents/", "{name: 'x'", content_type="application/json")
        assert_error(response, 400, "malformed_json")
        response = api_client().post(f"{API}/agents/", "name=abc", content_type="application/x-www-form-urlencoded")
        assert_error(response, 415, "unsupported_media_type")


# --------------------------------------------------------------------------------------------------------------------
# GET /agents/me/ and authentication


def test_it_shows_the_authenticated_agent_with_its_reserved_and_available_balance(market):
    alice = AgentFactory()
    client = api_client(alice)
    place(client, market, "YES", "BUY", "0.25", 10)

    response = client.get(f"{API}/agents/me/")

    assert response.status_code == 200
    body = response.json()
    assert_agent_shape(body)
    assert body["name"] == alice.name
    assert (body["balance"], body["locked_balance"], body["available_balance"]) == ("1000.00", "2.50", "997.50")
    assert "api_key" not in body


def test_it_asks_for_a_key_when_none_is_sent(audit_clean):
    with unchanged(audit_clean):
        response = api_client().get(f"{API}/agents/me/")
        assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_an_unknown_key(audit_clean):
    AgentFactory()
    with unchanged(audit_clean):
        assert_error(api_client(key="ms_" + "x" * 43).get(f"{API}/agents/me/"), 401, "invalid_api_key")


def test_it_refuses_a_revoked_key(audit_clean):
    alice = AgentFactory()
    api_key_revoke(agent=alice, key_id=ApiKey.objects.get(agent=alice).id, allow_last=True)
    with unchanged(audit_clean):
        assert_error(api_client(alice).get(f"{API}/agents/me/"), 401, "invalid_api_key")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Token {key}",
        "Basic Zm9vOmJhcg==",
        "{key}",
        "Bearer {key} extra",
        "Bearer {key}x",
        "Bearer x{key}",
        "Bearer " + "ms_" + "a" * 500,
    ],
)
def test_it_refuses_a_malformed_authorization_header(header, audit_clean):
    alice = AgentFactory()
    with unchanged(audit_clean):
        response = api_client(authorization=header.format(key=alice.api_key)).get(f"{API}/agents/me/")
        assert_error(response, 401, "invalid_api_key")


def test_it_reads_the_bearer_scheme_case_insensitively():
    # RFC 7235: the authentication scheme is case-insensitive.
    alice = AgentFactory()
    response = api_client(authorization=f"bearer {alice.api_key}").get(f"{API}/agents/me/")
    assert response.status_code == 200
    assert response.json()["id"] == str(alice.id)


def test_a_wrong_key_is_refused_even_on_public_endpoints(audit_clean):
    # A client that sends a key expects it to be used; silently treating it as anonymous would hide the mistake.
    with unchanged(audit_clean):
        assert_error(api_client(key="ms_wrong").get(f"{API}/agents/"), 401, "invalid_api_key")


# --------------------------------------------------------------------------------------------------------------------
# GET /agents/{name}/


def test_it_shows_a_public_profile_by_name():
    AgentFactory(name="bob.the-builder_2")
    response = api_client().get(f"{API}/agents/bob.the-builder_2/")
    assert response.status_code == 200
    body = response.json()
    assert_agent_shape(body)
    assert body["name"] == "bob.the-builder_2"
    assert body["balance"] == "1000.00"
    assert "api_key" not in body


@pytest.mark.parametrize("name", ["nobody", "NOBODY", "%00", "a" * 300])
def test_it_answers_404_for_an_unknown_agent(name, audit_clean):
    AgentFactory()
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/agents/{name}/"), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# GET /agents/ (leaderboard)


@pytest.fixture
def resolved_world(market):
    """alice bought 10 YES at 0.60 from bob's NO at 0.40 and said 0.90; bob said 0.20; carol only watched.
    The market resolved YES: alice +4.00, bob -4.00. The oracle and the market's creator complete the board."""
    alice, bob, carol = (AgentFactory(name=name) for name in ("alice", "bob", "carol"))
    oracle = AgentFactory(name="oracle", oracle=True)
    a, b = api_client(alice), api_client(bob)
    place(a, market, "YES", "BUY", "0.60", 10, forecast="0.9")
    placed = place(b, market, "NO", "BUY", "0.40", 10)
    assert placed["order"]["status"] == "filled"
    assert b.post(f"{API}/markets/{market.id}/forecast/", {"probability": "0.2"}).status_code == 201
    market_close(market_id=market.id)
    response = api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "YES"})
    assert response.status_code == 202, response.content
    resolutions_finalize_due(now=timezone.now() + timedelta(days=2))  # the dispute window passed undisputed
    return {"alice": alice, "bob": bob, "carol": carol, "oracle": oracle, "market": market}


def leaderboard(query: str = "") -> list[dict]:
    results, _pages = walk_pages(api_client(), f"{API}/agents/{query}")
    return results


def test_the_leaderboard_ranks_by_reputation_by_default(resolved_world, audit_clean):
    board = leaderboard()

    assert len(board) == Agent.objects.count() == 5
    for row in board:
        assert_agent_shape(row)
        assert "api_key" not in row
    reputations = [Decimal(row["reputation"]) for row in board]
    assert reputations == sorted(reputations, reverse=True)
    assert (board[0]["name"], board[0]["reputation"]) == ("alice", "4.00")
    assert (board[-1]["name"], board[-1]["reputation"]) == ("bob", "-4.00")
    assert [row["name"] for row in leaderboard("?ordering=-reputation")] == [row["name"] for row in board]
    assert next(row["name"] for row in leaderboard("?ordering=reputation")) == "bob"
    audit_clean()


def test_the_leaderboard_ranks_by_balance(resolved_world):
    # alice: 1000 - 6.00 + 10.00 = 1004.00; bob: 1000 - 4.00 = 996.00; the creator paid the 10.00 fee.
    richest_first = leaderboard("?ordering=-balance")
    assert [Decimal(row["balance"]) for row in richest_first] == [
        Decimal("1004.00"),
        Decimal("1000.00"),
        Decimal("1000.00"),
        Decimal("996.00"),
        Decimal("990.00"),
    ]
    assert richest_first[0]["name"] == "alice"
    assert richest_first[-1]["name"] == "market-maker-of-questions"
    poorest_first = leaderboard("?ordering=balance")
    assert [row["balance"] for row in poorest_first] == [row["balance"] for row in reversed(richest_first)]


def test_the_leaderboard_ranks_by_brier_score_leaving_out_agents_without_one(resolved_world):
    # alice said 0.90 on a YES market: (0.9 - 1)^2 = 0.01; bob said 0.20: 0.64. Lower is better.
    best_first = leaderboard("?ordering=brier_score")
    assert [(row["name"], Decimal(row["brier_score"])) for row in best_first] == [
        ("alice", Decimal("0.01")),
        ("bob", Decimal("0.64")),
    ]
    assert [row["name"] for row in leaderboard("?ordering=-brier_score")] == ["bob", "alice"]
    carol = api_client().get(f"{API}/agents/carol/").json()
    assert carol["brier_score"] is None


@pytest.mark.parametrize("ordering", ["api_key", "-reputation,api_key", "reputation,", "-"])
def test_the_leaderboard_refuses_an_unknown_ordering_listing_the_fields(ordering, resolved_world, audit_clean):
    # DRF would fall back to the default order without a word; an agent must learn that its ordering was not used.
    with unchanged(audit_clean):
        error = assert_error(api_client().get(f"{API}/agents/?ordering={ordering}"), 400, "invalid_request")
    assert error["message"].startswith("Cannot order by ")
    assert "reputation, balance, brier_score" in error["message"]
    assert set(error["detail"]) == {"ordering"}


def test_the_leaderboard_pages_through_agents_with_equal_scores_without_repeats_or_gaps():
    names = {AgentFactory().name for _ in range(9)}

    for query, size in (
        ("?page_size=2", 2),
        ("?page_size=2&ordering=balance", 2),
        ("?ordering=-reputation&page_size=4", 4),
    ):
        results, pages = walk_pages(api_client(), f"{API}/agents/{query}")
        seen = [row["name"] for row in results]
        assert sorted(seen) == sorted(names), query
        assert pages == -(-len(names) // size), query


# --------------------------------------------------------------------------------------------------------------------
# GET /ledger/


def test_the_ledger_lists_own_cash_movements_newest_first(audit_clean):
    alice = AgentFactory()
    client = api_client(alice)
    deadline = (timezone.now() + timedelta(days=30)).isoformat()
    created = client.post(f"{API}/markets/", {"question": "Will it snow?", "deadline": deadline})
    assert created.status_code == 201, created.content

    response = client.get(f"{API}/ledger/")

    assert response.status_code == 200
    rows = assert_page(response.json())
    assert [(row["kind"], row["amount"], row["balance_after"]) for row in rows] == [
        ("fee", "-10.00", "990.00"),
        ("grant", "1000.00", "1000.00"),
    ]
    fee, grant = rows
    assert fee["market"] == created.json()["id"]
    assert grant["market"] is None
    for row in rows:
        assert {"id", "kind", "amount", "balance_after", "market", "created_at"} <= set(row)
        assert_time(row["created_at"])
    # Replaying the ledger from zero gives the balance.
    assert sum(Decimal(row["amount"]) for row in rows) == Decimal(client.get(f"{API}/agents/me/").json()["balance"])
    audit_clean()


def test_the_ledger_never_shows_another_agents_movements(market):
    alice, bob = AgentFactory(), AgentFactory()
    mint(api_client(alice), api_client(bob), market, 5, "0.70")

    for agent in (alice, bob):
        rows, _ = walk_pages(api_client(agent), f"{API}/ledger/")
        assert len(rows) == 2  # the grant and one trade
        assert {row["id"] for row in rows} == set(LedgerEntry.objects.filter(agent=agent).values_list("id", flat=True))
    # The other rows exist (the other trader's, the creator's fee), they are just not shown.
    assert LedgerEntry.objects.count() == 2 + 2 + 2


def test_the_ledger_filters_by_kind_and_pages_with_a_cursor(market):
    alice = AgentFactory()
    client = api_client(alice)
    for n in range(4):
        mint(client, api_client(AgentFactory()), market, 1 + n, "0.50")

    fees_and_trades, pages = walk_pages(client, f"{API}/ledger/?page_size=2")
    assert pages == 3
    assert [row["kind"] for row in fees_and_trades] == ["trade"] * 4 + ["grant"]
    assert len({row["id"] for row in fees_and_trades}) == 5
    ids = [row["id"] for row in fees_and_trades]
    assert ids == sorted(ids, reverse=True)
    only_grants = client.get(f"{API}/ledger/?kind=grant").json()["results"]
    assert [row["kind"] for row in only_grants] == ["grant"]


def test_the_ledger_filters_by_market_and_time_and_refuses_market_id(market, make_agent, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    mint(client, api_client(make_agent()), market, 2, "0.50")
    grant = LedgerEntry.objects.get(agent=alice, kind="grant")

    def kinds(query: str) -> list[str]:
        response = client.get(f"{API}/ledger/{query}")
        assert response.status_code == 200, response.content
        return [row["kind"] for row in assert_page(response.json())]

    assert kinds(f"?market={market.id}") == ["trade"]
    at = grant.created_at.isoformat().replace("+", "%2B")
    assert kinds(f"?until={at}") == ["grant"]
    assert kinds(f"?since={at}&kind=trade") == ["trade"]
    with unchanged(audit_clean):
        # The old name of the filter is refused, naming the one to use: it was easy to send ?market= and get all.
        error = assert_error(client.get(f"{API}/ledger/?market_id={market.id}"), 400, "invalid_request")
        assert error["message"] == "Unknown query parameter: market_id (use market)."
        assert set(error["detail"]) == {"market_id"}
        assert_error(client.get(f"{API}/ledger/?kind=bonus"), 400, "invalid_request")


def test_the_ledger_needs_a_key(audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/ledger/"), 401, "not_authenticated")
