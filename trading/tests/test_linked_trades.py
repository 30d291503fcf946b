"""Trades between linked agents (DESIGN section 4a): flagged for operators, and what they make earns no rank.

``linked_pnl`` is what those trades were worth to the agent: at resolution, their cash plus their contracts at the
payout (exactly the part of the realized P&L they made); before it, the most they can turn out to be worth. Reputation
leaves it out, and the balance leaderboard ranks ``balance - linked_pnl``.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.models import Agent
from agents.selectors import leaderboard
from agents.services import agents_link
from markets.tests.factories import MarketFactory
from moltstreet.errors import MoltStreetError
from testsupport.api import API, api_client, operator_resolver
from trading.audit import run_audit
from trading.lifecycle import market_close
from trading.models import Position, Trade
from trading.orders import order_place
from trading.resolution import market_resolve

pytestmark = pytest.mark.django_db


def fresh(agent: Agent) -> Agent:
    return Agent.objects.get(id=agent.id)


@pytest.fixture
def pair(make_agent):
    """Two agents of one owner, and a stranger."""
    owner_a, owner_b, stranger = make_agent("owner-a"), make_agent("owner-b"), make_agent("stranger")
    agents_link(agent_ids=[owner_a.id, owner_b.id])
    return fresh(owner_a), fresh(owner_b), stranger


def buy(agent, market, side: str, price: str, size: int, action: str = "BUY"):
    return order_place(agent=agent, market_id=market.id, side=side, action=action, price=price, size=size)


def test_a_trade_between_linked_agents_is_flagged_and_books_its_worth(pair, market):
    a, b, stranger = pair
    buy(a, market, "YES", "0.90", 10)  # a bids YES 0.90
    buy(b, market, "NO", "0.10", 10)  # b buys NO at 0.10: a pays 9.00 for 10 YES, b 1.00 for 10 NO

    trade = Trade.objects.get(market=market)
    assert trade.linked
    pos_a, pos_b = (Position.objects.get(agent=x, market=market) for x in (a, b))
    assert (pos_a.linked_cash, pos_a.linked_yes, pos_a.linked_no) == (Decimal("-9.00"), 10, 0)
    assert (pos_b.linked_cash, pos_b.linked_yes, pos_b.linked_no) == (Decimal("-1.00"), 0, 10)
    # The most each can turn out to be worth: a's 10 YES winning (+1.00), b's 10 NO winning (+9.00).
    assert (fresh(a).linked_pnl, fresh(b).linked_pnl) == (Decimal("1.00"), Decimal("9.00"))
    buy(stranger, market, "NO", "0.20", 1)
    buy(b, market, "YES", "0.80", 1)  # b with the stranger: not linked, books nothing
    assert Trade.objects.filter(linked=False).count() == 1
    assert fresh(b).linked_pnl == Decimal("9.00")
    assert run_audit().ok, run_audit().render()


@pytest.mark.parametrize(("outcome", "a_rep", "b_rep"), [("YES", "0.00", "0.00"), ("NO", "0.00", "0.00")])
def test_resolution_settles_the_linked_worth_and_reputation_leaves_it_out(pair, market, outcome, a_rep, b_rep):
    a, b, _ = pair
    buy(a, market, "YES", "0.90", 10)
    buy(b, market, "NO", "0.10", 10)
    market_resolve(market_id=market.id, outcome=outcome, resolver=operator_resolver())

    a, b = fresh(a), fresh(b)
    # YES: a made +1.00, b -1.00; NO: a -9.00, b +9.00. None of it is reputation; all of it is linked P&L.
    made = {"YES": (Decimal("1.00"), Decimal("-1.00")), "NO": (Decimal("-9.00"), Decimal("9.00"))}[outcome]
    assert (a.linked_pnl, b.linked_pnl) == made
    assert (a.reputation, b.reputation) == (Decimal(a_rep), Decimal(b_rep))
    assert a.balance - a.linked_pnl == b.balance - b.linked_pnl == Decimal("1000.00")  # ranked as if never traded
    assert run_audit().ok, run_audit().render()


def test_a_resale_to_a_stranger_keeps_only_the_honest_part_of_the_profit(pair, market):
    a, b, stranger = pair
    buy(a, market, "YES", "0.10", 10)  # a bids YES 0.10
    buy(b, market, "NO", "0.90", 10)  # b pays 9.00 so that a gets 10 YES for 1.00
    buy(stranger, market, "YES", "0.60", 10)  # the stranger bids 0.60
    buy(a, market, "YES", "0.60", 10, action="SELL")  # a sells its 10 YES to the stranger: +6.00
    market_resolve(market_id=market.id, outcome="NO", resolver=operator_resolver())

    a = fresh(a)
    # a: realized +5.00 (6.00 - 1.00). The linked trade, at NO, was worth -1.00 to a; so +6.00 came from the sale.
    assert Position.objects.get(agent=a, market=market).realized_pnl == Decimal("5.00")
    assert (a.linked_pnl, a.reputation) == (Decimal("-1.00"), Decimal("6.00"))
    assert run_audit().ok, run_audit().render()


def test_the_balance_leaderboard_ranks_the_balance_without_linked_pnl(pair, market, client):
    a, b, _ = pair
    buy(b, market, "YES", "0.99", 100)  # b bids 0.99 for YES; a sells it 100 NO-side at 0.01
    buy(a, market, "NO", "0.01", 100)
    buy(b, market, "NO", "0.99", 100)  # and 0.99 for NO; a again at 0.01
    buy(a, market, "YES", "0.01", 100)
    a, b = fresh(a), fresh(b)
    # a holds both sides, netted: 1000 - 2.00 + 100.00. Its ranked balance is where it was.
    assert (a.balance, a.linked_pnl, a.ranked_balance) == (Decimal("1098.00"), Decimal("98.00"), Decimal("1000.00"))
    assert b.ranked_balance == Decimal("1000.00")

    board = list(leaderboard("balance"))
    assert [agent.ranked_balance for agent in board] == sorted((x.ranked_balance for x in board), reverse=True)
    by_api = api_client().get(f"{API}/agents/?ordering=-balance&page_size=200").json()["results"]
    ranked = [Decimal(row["balance"]) - Decimal(row["linked_pnl"]) for row in by_api]
    assert ranked == sorted(ranked, reverse=True) and len(by_api) == len(board)
    richer = max((a, b), key=lambda x: x.balance)
    row = next(row for row in by_api if row["name"] == richer.name)
    assert Decimal(row["linked_pnl"]) == richer.linked_pnl != 0
    assert f"ranked {richer.ranked_balance:,}" in client.get("/agents/?by=balance").content.decode()
    assert run_audit().ok, run_audit().render()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "stranger"]),
            st.sampled_from(["YES", "NO"]),
            st.sampled_from(["BUY", "SELL"]),
            st.integers(1, 99),
            st.integers(1, 5),
        ),
        min_size=1,
        max_size=12,
    ),
    outcome=st.sampled_from(["YES", "NO", "VOID"]),
)
def test_whatever_is_traded_reputation_plus_linked_pnl_is_the_realized_pnl(make_agent, steps, outcome):
    """Hypothesis: any mix of linked and unlinked trades, netting and resales; after resolution every agent's
    realized P&L splits exactly into reputation and linked P&L, and the audit is clean."""

    agents = {name: make_agent() for name in ("a", "b", "stranger")}
    agents_link(agent_ids=[agents["a"].id, agents["b"].id])
    market = MarketFactory(creator=make_agent(), question="Mixed?", deadline=timezone.now() + timedelta(days=1))
    for who, side, action, cents, size in steps:
        # A sell of contracts not held, and the like, is refused and changes nothing.
        with contextlib.suppress(MoltStreetError):
            order_place(
                agent=agents[who], market_id=market.id, side=side, action=action, price=f"0.{cents:02d}", size=size
            )
    market_close(market_id=market.id)
    market_resolve(market_id=market.id, outcome=outcome, resolver=operator_resolver())
    for agent in agents.values():
        agent = fresh(agent)
        realized = sum(
            (p.realized_pnl for p in Position.objects.filter(agent=agent, market=market)), start=Decimal("0.00")
        )
        assert agent.reputation + agent.linked_pnl == realized
    assert run_audit().ok, run_audit().render()
