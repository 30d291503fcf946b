"""Helpers for the trading tests: agents, markets and orders made through the services, and state read-backs.

Agents and markets come from the apps' factory-boy factories (``AgentFactory``, ``MarketFactory``, importable from here),
which go through ``agent_register`` and ``market_create``; orders go through ``order_place`` (``place``, ``mint``).
So the ledger and the market sequence stay exactly as in production; nothing writes balances directly.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

from django.db.models import Max, Sum
from django.utils import timezone

from agents.models import Agent, LedgerEntry
from agents.tests.factories import AgentFactory
from markets.models import Market
from markets.tests.factories import MarketFactory
from moltstreet.money import ONE, ZERO, complement
from testsupport.api import state as snapshot  # noqa: F401  (re-exported for the trading tests)
from trading.models import Order, Position
from trading.orders import PlaceResult, order_place

_names = itertools.count(1)


def new_agent(prefix: str = "trader", **fields) -> Agent:
    """A freshly registered agent named ``<prefix>-<n>`` with the initial 1000.00 credits (``AgentFactory``; ``fields``
    as it takes them, e.g. ``credits=``, ``oracle=True``), with ``.api_key`` set."""
    return AgentFactory(name=f"{prefix}-{next(_names)}", **fields)


def new_market(creator: Agent | None = None, *, deadline=None, question: str = "Will it rain?") -> Market:
    """An open market (``MarketFactory``); its creator (a fresh agent unless given) pays the 10.00 fee."""
    return MarketFactory(
        creator=creator or new_agent("creator"),
        question=question,
        deadline=deadline or timezone.now() + timedelta(days=7),
    )


def place(agent: Agent, market: Market, side: str, action: str, price, size: int, **kwargs) -> PlaceResult:
    return order_place(agent=agent, market_id=market.id, side=side, action=action, price=price, size=size, **kwargs)


def mint(yes_buyer: Agent, no_buyer: Agent, market: Market, size: int, yes_price: str = "0.50") -> None:
    """Give ``yes_buyer`` ``size`` YES and ``no_buyer`` ``size`` NO: a resting BUY YES met by a BUY NO at the
    complementary price (one mint trade at ``yes_price``)."""
    place(yes_buyer, market, "YES", "BUY", yes_price, size)
    result = place(no_buyer, market, "NO", "BUY", complement(Decimal(yes_price)), size)
    assert sum(t.size for t in result.trades) == size, "the mint must fill completely"


def cash(agent: Agent) -> tuple[Decimal, Decimal, Decimal]:
    """(balance, locked_balance, available_balance) as stored now."""
    agent.refresh_from_db()
    return agent.balance, agent.locked_balance, agent.available_balance


def holding(agent: Agent, market: Market) -> tuple[int, int, int, int]:
    """(yes_shares, no_shares, yes_reserved, no_reserved); zeros when the agent has no position row."""
    pos = Position.objects.filter(agent=agent, market=market).first()
    if pos is None:
        return (0, 0, 0, 0)
    return (pos.yes_shares, pos.no_shares, pos.yes_reserved, pos.no_reserved)


def position(agent: Agent, market: Market) -> Position:
    return Position.objects.get(agent=agent, market=market)


def pairs_outstanding(market: Market) -> int:
    totals = Position.objects.filter(market=market).aggregate(yes=Sum("yes_shares"), no=Sum("no_shares"))
    assert (totals["yes"] or 0) == (totals["no"] or 0), totals
    return totals["yes"] or 0


def book_tops(market: Market) -> tuple[Decimal | None, Decimal | None]:
    """(best YES bid, best NO bid) of the resting book."""
    tops = dict(
        Order.objects.filter(market=market, status__in=Order.RESTING)
        .values("book_side")
        .annotate(best=Max("book_price"))
        .values_list("book_side", "best")
    )
    return tops.get("YES"), tops.get("NO")


def assert_book_not_crossed(market: Market) -> None:
    best_yes, best_no = book_tops(market)
    if best_yes is not None and best_no is not None:
        assert best_yes + best_no < ONE, f"book crossed: YES {best_yes} + NO {best_no}"


def total_money() -> Decimal:
    """Σ agent balances + Σ pairs outstanding × 1.00 (DESIGN invariant 3's left side)."""
    balances = Agent.objects.aggregate(s=Sum("balance"))["s"] or ZERO
    pairs = Position.objects.aggregate(s=Sum("yes_shares"))["s"] or 0
    return balances + pairs * ONE


def external_money() -> Decimal:
    """Σ grants - Σ fees ± Σ adjustments (DESIGN invariant 3's right side)."""
    return LedgerEntry.objects.filter(kind__in=["grant", "fee", "adjustment"]).aggregate(s=Sum("amount"))["s"] or ZERO
