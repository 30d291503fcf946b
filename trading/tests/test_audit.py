"""The audit finds each kind of breach of DESIGN section 5 (trading/audit.py): every check is shown to fail when the
books are corrupted behind the services' back, one corruption at a time."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import F

from agents.models import Agent, LedgerEntry
from markets.models import MarketEvent
from trading.audit import run_audit
from trading.models import BookLevel, Order, Position, Trade
from trading.services import order_place

pytestmark = pytest.mark.django_db


@pytest.fixture
def traded(market, make_agent):
    """A market with a trade and a resting order: alice bids YES 0.40 x 5, bob sells her 3 as NO 0.60, and a bid of
    alice's at 0.30 rests."""
    alice, bob = make_agent(), make_agent()
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.40", size=5)
    order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.60", size=3)
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.30", size=2)
    assert run_audit().ok, run_audit().render()
    return {"market": market, "alice": alice, "bob": bob}


CORRUPTIONS = {
    "a reserve nobody holds": (
        1,
        lambda w: Agent.objects.filter(id=w["alice"].id).update(locked_balance=F("locked_balance") + 1),
    ),
    "a contract from nowhere": (
        2,
        lambda w: Position.objects.filter(agent=w["alice"]).update(yes_shares=F("yes_shares") + 1),
    ),
    "a credit from nowhere": (3, lambda w: Agent.objects.filter(id=w["bob"].id).update(balance=F("balance") + 1)),
    "a ledger row that does not add up": (
        4,
        lambda w: LedgerEntry.objects.filter(agent=w["bob"], kind="trade").update(amount=F("amount") + Decimal("0.01")),
    ),
    "a book level out of step": (5, lambda w: BookLevel.objects.filter(market=w["market"]).update(size=F("size") + 1)),
    "a crossed book": (
        5,
        lambda w: Order.objects.filter(market=w["market"], status="open").update(book_price=Decimal("0.70")),
    ),
    "an order filled more than it traded": (
        5,
        lambda w: Order.objects.filter(market=w["market"], status="partial").update(filled=F("filled") + 1),
    ),
    "a trade without its event": (6, lambda w: MarketEvent.objects.filter(market=w["market"], kind="trade").delete()),
    "a trade at another seq": (6, lambda w: Trade.objects.filter(market=w["market"]).update(seq=F("seq") - 1)),
    "reputation out of thin air": ("4a", lambda w: Agent.objects.filter(id=w["bob"].id).update(reputation=5)),
    "a linked trade nobody booked": (
        "4a",
        lambda w: Position.objects.filter(agent=w["alice"]).update(linked_cash=-1, linked_yes=3),
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_the_audit_reports_each_kind_of_breach(corruption, traded):
    invariant, corrupt = CORRUPTIONS[corruption]
    corrupt(traded)
    report = run_audit()
    assert not report.ok
    assert any(breach.startswith(f"[invariant {invariant}]") for breach in report.breaches), report.render()
