"""The money is right: every row of DESIGN section 3's table, priority, netting, time in force, self-trade
prevention, idempotency, cancels, lifecycle and resolution, each checked to the cent on both agents.

Every agent starts with 1000.00 credits. Contracts are handed out with ``mint`` (a BUY YES met by a BUY NO at the
complementary price), so each test's arithmetic starts from known balances and cost bases.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import LedgerEntry
from agents.services import agent_grant_credits
from markets.models import Market, MarketEvent
from markets.services import forecast_record
from markets.tests.factories import ForecastFactory
from moltstreet.errors import (
    ClientOrderIdConflict,
    InsufficientBalance,
    InsufficientPosition,
    InvalidRequest,
    MarketAlreadyResolved,
    MarketClosed,
    NotFound,
    OrderNotCancellable,
    PostOnlyWouldCross,
)
from testsupport.api import operator_resolver
from trading.lifecycle import market_close, markets_close_due, orders_expire_due
from trading.models import Order, Trade
from trading.orders import order_cancel, order_cancel_all, order_place
from trading.resolution import market_resolve
from trading.tests.factories import (
    assert_book_not_crossed,
    book_tops,
    cash,
    external_money,
    holding,
    mint,
    new_agent,
    new_market,
    pairs_outstanding,
    place,
    position,
    snapshot,
    total_money,
)

pytestmark = pytest.mark.django_db

D = Decimal


def money(balance: str, locked: str, available: str) -> tuple[Decimal, Decimal, Decimal]:
    return D(balance), D(locked), D(available)


def ledger_amounts(trade: Trade) -> dict[object, Decimal]:
    return {
        e.agent_id: e.amount for e in LedgerEntry.objects.filter(reference=str(trade.id), kind=LedgerEntry.Kind.TRADE)
    }


@pytest.fixture
def m(db):
    return new_market()


@pytest.fixture
def frozen_now(monkeypatch):
    """Move the clock: ``frozen_now(delta)`` makes ``timezone.now()`` return real now + delta from then on."""

    real_now = timezone.now

    def move(delta: timedelta):
        later = real_now() + delta
        monkeypatch.setattr(timezone, "now", lambda: later)
        return later

    return move


# ---------------------------------------------------------------------------------------------------------------------
# DESIGN section 3's table, each row with the taker on either side.


@pytest.mark.parametrize("taker", ["no_party", "yes_party"])
def test_a_yes_buyer_meeting_a_no_buyer_mints_a_pair_and_puts_one_credit_per_pair_into_the_market(
    m, audit_clean, taker
):
    yes_buyer, no_buyer = new_agent(), new_agent()
    if taker == "no_party":
        place(yes_buyer, m, "YES", "BUY", "0.60", 10)
        result = place(no_buyer, m, "NO", "BUY", "0.40", 4)
    else:
        place(no_buyer, m, "NO", "BUY", "0.40", 10)
        result = place(yes_buyer, m, "YES", "BUY", "0.60", 4)

    [trade] = result.trades
    assert (trade.price, trade.size, trade.kind) == (D("0.60"), 4, "mint")
    assert trade.taker_side == ("NO" if taker == "no_party" else "YES")
    assert ledger_amounts(trade) == {yes_buyer.id: D("-2.40"), no_buyer.id: D("-1.60")}
    if taker == "no_party":  # the YES buyer still bids for 6 at 0.60
        assert cash(yes_buyer) == money("997.60", "3.60", "994.00")
        assert cash(no_buyer) == money("998.40", "0.00", "998.40")
    else:  # the NO buyer still bids for 6 at 0.40
        assert cash(yes_buyer) == money("997.60", "0.00", "997.60")
        assert cash(no_buyer) == money("998.40", "2.40", "996.00")
    assert holding(yes_buyer, m) == (4, 0, 0, 0)
    assert holding(no_buyer, m) == (0, 4, 0, 0)
    assert position(yes_buyer, m).yes_cost == D("2.40")
    assert position(no_buyer, m).no_cost == D("1.60")
    # 4 pairs minted: 4.00 credits left the agents and sit in the market.
    assert yes_buyer.balance + no_buyer.balance == D("1996.00")
    assert pairs_outstanding(m) == 4
    assert total_money() == external_money()
    audit_clean()


@pytest.mark.parametrize("taker", ["no_party", "yes_party"])
def test_a_yes_buyer_meeting_a_yes_seller_moves_a_yes_contract_and_no_cash_leaves_the_agents(m, audit_clean, taker):
    buyer, seller, helper = new_agent(), new_agent(), new_agent()
    mint(seller, helper, m, 10)  # seller: 10 YES for 5.00 -> 995.00
    if taker == "no_party":
        place(buyer, m, "YES", "BUY", "0.60", 10)
        result = place(seller, m, "YES", "SELL", "0.60", 4)
    else:
        place(seller, m, "YES", "SELL", "0.60", 10)
        result = place(buyer, m, "YES", "BUY", "0.60", 4)

    [trade] = result.trades
    assert (trade.price, trade.size, trade.kind) == (D("0.60"), 4, "transfer_yes")
    assert ledger_amounts(trade) == {buyer.id: D("-2.40"), seller.id: D("2.40")}
    if taker == "no_party":
        assert cash(buyer) == money("997.60", "3.60", "994.00")
        assert holding(seller, m) == (6, 0, 0, 0)
    else:  # the seller's resting SELL still reserves its other 6 YES
        assert cash(buyer) == money("997.60", "0.00", "997.60")
        assert holding(seller, m) == (6, 0, 6, 0)
    assert cash(seller) == money("997.40", "0.00", "997.40")
    assert holding(buyer, m) == (4, 0, 0, 0)
    seller_pos = position(seller, m)
    assert (seller_pos.yes_cost, seller_pos.realized_pnl) == (D("3.00"), D("0.40"))
    assert buyer.balance + seller.balance == D("1995.00")  # unchanged by the trade
    assert pairs_outstanding(m) == 10
    audit_clean()


@pytest.mark.parametrize("taker", ["no_party", "yes_party"])
def test_a_no_seller_meeting_a_no_buyer_moves_a_no_contract_and_no_cash_leaves_the_agents(m, audit_clean, taker):
    seller, buyer, helper = new_agent(), new_agent(), new_agent()
    mint(helper, seller, m, 10)  # seller: 10 NO for 5.00 -> 995.00
    if taker == "no_party":
        place(seller, m, "NO", "SELL", "0.40", 10)  # a YES bid at 0.60
        result = place(buyer, m, "NO", "BUY", "0.40", 4)
    else:
        place(buyer, m, "NO", "BUY", "0.40", 10)
        result = place(seller, m, "NO", "SELL", "0.40", 4)

    [trade] = result.trades
    assert (trade.price, trade.size, trade.kind) == (D("0.60"), 4, "transfer_no")
    assert ledger_amounts(trade) == {buyer.id: D("-1.60"), seller.id: D("1.60")}
    if taker == "no_party":
        assert cash(buyer) == money("998.40", "0.00", "998.40")
        assert holding(seller, m) == (0, 6, 0, 6)
    else:
        assert cash(buyer) == money("998.40", "2.40", "996.00")
        assert holding(seller, m) == (0, 6, 0, 0)
    assert cash(seller) == money("996.60", "0.00", "996.60")
    assert holding(buyer, m) == (0, 4, 0, 0)
    seller_pos = position(seller, m)
    assert (seller_pos.no_cost, seller_pos.realized_pnl) == (D("3.00"), D("-0.40"))
    assert buyer.balance + seller.balance == D("1995.00")
    assert pairs_outstanding(m) == 10
    audit_clean()


@pytest.mark.parametrize("taker", ["no_party", "yes_party"])
def test_a_no_seller_meeting_a_yes_seller_burns_a_pair_and_takes_one_credit_per_pair_out_of_the_market(
    m, audit_clean, taker
):
    no_seller, yes_seller = new_agent(), new_agent()
    mint(yes_seller, no_seller, m, 10)  # each paid 5.00 -> 995.00
    if taker == "no_party":
        place(no_seller, m, "NO", "SELL", "0.40", 10)  # a YES bid at 0.60
        result = place(yes_seller, m, "YES", "SELL", "0.60", 4)  # a NO bid at 0.40
    else:
        place(yes_seller, m, "YES", "SELL", "0.60", 10)
        result = place(no_seller, m, "NO", "SELL", "0.40", 4)

    [trade] = result.trades
    assert (trade.price, trade.size, trade.kind) == (D("0.60"), 4, "burn")
    assert ledger_amounts(trade) == {yes_seller.id: D("2.40"), no_seller.id: D("1.60")}
    assert cash(yes_seller) == money("997.40", "0.00", "997.40")
    assert cash(no_seller) == money("996.60", "0.00", "996.60")
    if taker == "no_party":
        assert holding(no_seller, m) == (0, 6, 0, 6)
        assert holding(yes_seller, m) == (6, 0, 0, 0)
    else:
        assert holding(no_seller, m) == (0, 6, 0, 0)
        assert holding(yes_seller, m) == (6, 0, 6, 0)
    # 4 pairs burned: 4.00 credits came out of the market to the agents.
    assert yes_seller.balance + no_seller.balance == D("1994.00")
    assert pairs_outstanding(m) == 6
    assert (position(yes_seller, m).realized_pnl, position(no_seller, m).realized_pnl) == (D("0.40"), D("-0.40"))
    assert total_money() == external_money()
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Price improvement goes to the taker; the maker trades at its own limit.


def test_it_pays_the_maker_price_and_returns_the_improvement_to_the_taker(m, audit_clean):
    maker, taker = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 5)
    result = place(taker, m, "YES", "BUY", "0.70", 5)

    assert [(t.price, t.size) for t in result.trades] == [(D("0.60"), 5)]
    assert result.order.status == "filled"
    # Reserved 3.50 at the limit, paid 3.00: the 0.50 improvement is back in the available balance.
    assert cash(taker) == money("997.00", "0.00", "997.00")
    assert cash(maker) == money("998.00", "0.00", "998.00")
    assert position(taker, m).yes_cost == D("3.00")
    audit_clean()


def test_a_partly_filled_improved_buy_keeps_reserving_only_its_unfilled_rest_at_its_limit(m, audit_clean):
    maker, taker = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 5)
    result = place(taker, m, "YES", "BUY", "0.70", 10)

    assert [(t.price, t.size) for t in result.trades] == [(D("0.60"), 5)]
    assert (result.order.status, result.order.filled) == ("partial", 5)
    assert cash(taker) == money("997.00", "3.50", "993.50")
    assert book_tops(m) == (D("0.70"), None)
    audit_clean()


def test_a_taker_selling_yes_below_the_best_bid_receives_the_bid(m, audit_clean):
    seller, helper, bidder = new_agent(), new_agent(), new_agent()
    mint(seller, helper, m, 5)  # seller: 995.00, 5 YES at 0.50
    place(bidder, m, "YES", "BUY", "0.60", 5)
    result = place(seller, m, "YES", "SELL", "0.30", 5)

    assert [(t.price, t.size, t.kind) for t in result.trades] == [(D("0.60"), 5, "transfer_yes")]
    assert cash(seller) == money("1000.50", "0.00", "1000.50")  # 997.50 + 5 x 0.60, not 5 x 0.30
    assert cash(bidder) == money("997.00", "0.00", "997.00")
    assert holding(seller, m) == (0, 0, 0, 0)
    assert position(seller, m).realized_pnl == D("0.50")
    audit_clean()


def test_a_taker_buying_no_pays_the_complement_of_the_resting_yes_bid(m, audit_clean):
    yes_bidder, taker = new_agent(), new_agent()
    place(yes_bidder, m, "YES", "BUY", "0.60", 5)
    result = place(taker, m, "NO", "BUY", "0.55", 5)

    assert [(t.price, t.size, t.kind) for t in result.trades] == [(D("0.60"), 5, "mint")]
    assert cash(taker) == money("998.00", "0.00", "998.00")  # 5 x 0.40, not 5 x 0.55
    assert cash(yes_bidder) == money("997.00", "0.00", "997.00")
    audit_clean()


def test_a_taker_selling_no_below_the_best_no_bid_receives_the_bid(m, audit_clean):
    seller, helper, bidder = new_agent(), new_agent(), new_agent()
    mint(helper, seller, m, 5)  # seller: 995.00, 5 NO at 0.50
    place(bidder, m, "NO", "BUY", "0.45", 5)
    result = place(seller, m, "NO", "SELL", "0.20", 5)

    assert [(t.price, t.size, t.kind) for t in result.trades] == [(D("0.55"), 5, "transfer_no")]
    assert cash(seller) == money("999.75", "0.00", "999.75")  # 997.50 + 5 x 0.45, not 5 x 0.20
    assert cash(bidder) == money("997.75", "0.00", "997.75")
    assert position(seller, m).realized_pnl == D("-0.25")
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Several makers: best price first, then earliest arrival; partial fills.


@pytest.fixture
def ladder(m):
    """NO bids: early 3 @ 0.45, deep 3 @ 0.40, late 3 @ 0.45, and last a SELL YES 2 @ 0.50 (a NO bid at 0.50)."""
    early, deep, late, seller, helper = (new_agent(f"ladder-{n}") for n in range(5))
    mint(seller, helper, m, 2)  # seller: 999.00, 2 YES at 0.50
    orders = {
        "early": place(early, m, "NO", "BUY", "0.45", 3).order,
        "deep": place(deep, m, "NO", "BUY", "0.40", 3).order,
        "late": place(late, m, "NO", "BUY", "0.45", 3).order,
        "seller": place(seller, m, "YES", "SELL", "0.50", 2).order,
    }
    agents = {"early": early, "deep": deep, "late": late, "seller": seller, "helper": helper}
    return agents, orders


def test_it_fills_the_best_price_first_then_the_earliest_order_at_the_same_price(m, ladder, audit_clean):
    agents, orders = ladder
    taker = new_agent()
    result = place(taker, m, "YES", "BUY", "0.60", 10)

    assert [(t.maker_order_id, t.price, t.size) for t in result.trades] == [
        (orders["seller"].id, D("0.50"), 2),
        (orders["early"].id, D("0.55"), 3),
        (orders["late"].id, D("0.55"), 3),
        (orders["deep"].id, D("0.60"), 2),
    ]
    assert [t.kind for t in result.trades] == ["transfer_yes", "mint", "mint", "mint"]
    assert [t.seq for t in result.trades] == sorted(t.seq for t in result.trades)
    # 2 x 0.50 + 3 x 0.55 + 3 x 0.55 + 2 x 0.60 = 5.50 of the 6.00 reserved.
    assert cash(taker) == money("994.50", "0.00", "994.50")
    assert holding(taker, m) == (10, 0, 0, 0)
    assert cash(agents["seller"]) == money("1000.00", "0.00", "1000.00")
    assert cash(agents["early"]) == money("998.65", "0.00", "998.65")
    assert cash(agents["late"]) == money("998.65", "0.00", "998.65")
    assert cash(agents["deep"]) == money("999.20", "0.40", "998.80")
    deep_order = Order.objects.get(id=orders["deep"].id)
    assert (deep_order.status, deep_order.filled) == ("partial", 2)
    assert holding(agents["deep"], m) == (0, 2, 0, 0)
    assert result.order.status == "filled"
    assert pairs_outstanding(m) == 10
    assert Market.objects.get(id=m.id).last_price == D("0.60")
    audit_clean()


def test_it_stops_at_its_limit_and_rests_the_rest_without_crossing_the_book(m, ladder, audit_clean):
    agents, orders = ladder
    taker = new_agent()
    result = place(taker, m, "YES", "BUY", "0.55", 10)

    assert [(t.maker_order_id, t.price, t.size) for t in result.trades] == [
        (orders["seller"].id, D("0.50"), 2),
        (orders["early"].id, D("0.55"), 3),
        (orders["late"].id, D("0.55"), 3),
    ]
    assert (result.order.status, result.order.filled) == ("partial", 8)
    # Paid 1.00 + 1.65 + 1.65 = 4.30; 2 left at 0.55 stay reserved (1.10).
    assert cash(taker) == money("995.70", "1.10", "994.60")
    assert cash(agents["deep"]) == money("1000.00", "1.20", "998.80")
    assert book_tops(m) == (D("0.55"), D("0.40"))
    assert_book_not_crossed(m)
    audit_clean()


def test_a_taker_larger_than_the_book_fills_everything_and_rests_the_rest(m, ladder, audit_clean):
    agents, _orders = ladder
    taker = new_agent()
    result = place(taker, m, "YES", "BUY", "0.60", 20)

    assert sum(t.size for t in result.trades) == 11
    # 1.00 + 1.65 + 1.65 + 1.80 = 6.10 paid; 9 x 0.60 = 5.40 still reserved.
    assert cash(taker) == money("993.90", "5.40", "988.50")
    assert Order.objects.filter(market=m, status__in=Order.RESTING).get() == result.order
    assert cash(agents["deep"]) == money("998.80", "0.00", "998.80")
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Netting: nobody holds both sides, except contracts reserved for a resting sell.


def test_an_agent_holding_yes_who_buys_no_gets_one_credit_per_pair_back_and_holds_one_side(m, audit_clean):
    agent, helper, yes_bidder = new_agent(), new_agent(), new_agent()
    mint(agent, helper, m, 10)  # agent: 995.00, 10 YES at 0.50
    place(yes_bidder, m, "YES", "BUY", "0.60", 4)
    result = place(agent, m, "NO", "BUY", "0.40", 4)

    assert [(t.price, t.size) for t in result.trades] == [(D("0.60"), 4)]
    # Paid 1.60 for 4 NO, then 4 pairs merged into 4.00.
    assert cash(agent) == money("997.40", "0.00", "997.40")
    assert holding(agent, m) == (6, 0, 0, 0)
    pos = position(agent, m)
    assert (pos.yes_cost, pos.no_cost, pos.realized_pnl) == (D("3.00"), D("0.00"), D("0.40"))
    [netting] = LedgerEntry.objects.filter(agent=agent, kind=LedgerEntry.Kind.NETTING)
    assert netting.amount == D("4.00")
    assert pairs_outstanding(m) == 10
    audit_clean()


def test_contracts_reserved_for_a_resting_sell_are_not_netted_until_the_sell_is_cancelled(m, audit_clean):
    agent, helper, yes_bidder = new_agent(), new_agent(), new_agent()
    mint(agent, helper, m, 10)  # agent: 995.00, 10 YES
    sell = place(agent, m, "YES", "SELL", "0.90", 6).order
    place(yes_bidder, m, "YES", "BUY", "0.60", 10)
    place(agent, m, "NO", "BUY", "0.40", 10)

    # 10 NO for 4.00; only the 4 unreserved YES merge with NO (4.00 back).
    assert cash(agent) == money("995.00", "0.00", "995.00")
    assert holding(agent, m) == (6, 6, 6, 0)
    audit_clean()

    order_cancel(agent=agent, order_id=sell.id)

    assert cash(agent) == money("1001.00", "0.00", "1001.00")
    assert holding(agent, m) == (0, 0, 0, 0)
    assert position(agent, m).realized_pnl == D("1.00")  # 10.00 of netting - 9.00 paid
    audit_clean()


def test_a_self_trade_cancel_does_not_net_away_the_contracts_the_incoming_sell_offers(m, audit_clean):
    agent, helper, yes_bidder = new_agent(), new_agent(), new_agent()
    mint(agent, helper, m, 5)  # agent: 5 YES
    resting = place(agent, m, "YES", "SELL", "0.90", 5).order  # reserves all 5 YES; a NO bid at 0.10
    place(yes_bidder, m, "YES", "BUY", "0.60", 5)
    place(agent, m, "NO", "BUY", "0.40", 5)  # 5 NO; nothing to net, the YES are reserved
    assert holding(agent, m) == (5, 5, 5, 0)
    balance_before = cash(agent)[0]

    # SELL NO at 0.05 is a YES bid at 0.95: it crosses the agent's own NO bid at 0.10, which is cancelled.
    result = place(agent, m, "NO", "SELL", "0.05", 5)

    assert result.trades == []
    assert Order.objects.get(id=resting.id).cancel_reason == "self_trade"
    assert result.order.status == "open"
    assert holding(agent, m) == (5, 5, 0, 5)
    assert cash(agent)[0] == balance_before
    assert_book_not_crossed(m)
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Time in force and post-only.


def test_a_gtc_order_that_does_not_cross_rests_with_its_reserve(m, audit_clean):
    agent = new_agent()
    result = place(agent, m, "YES", "BUY", "0.30", 10)

    assert (result.order.status, result.order.time_in_force, result.trades) == ("open", "GTC", [])
    assert cash(agent) == money("1000.00", "3.00", "997.00")
    assert book_tops(m) == (D("0.30"), None)
    audit_clean()


def test_a_gtd_order_trades_until_its_expiry(m, audit_clean):
    maker, taker = new_agent(), new_agent()
    gtd = place(maker, m, "NO", "BUY", "0.40", 5, time_in_force="GTD", expires_at=timezone.now() + timedelta(hours=1))
    assert gtd.order.status == "open"
    result = place(taker, m, "YES", "BUY", "0.60", 2)

    assert [(t.maker_order_id, t.price, t.size) for t in result.trades] == [(gtd.order.id, D("0.60"), 2)]
    assert cash(maker) == money("999.20", "1.20", "998.00")
    audit_clean()


def test_matching_expires_a_past_due_gtd_order_instead_of_trading_with_it(m, audit_clean, frozen_now):
    stale, fresh, taker = new_agent(), new_agent(), new_agent()
    gtd = place(stale, m, "NO", "BUY", "0.45", 5, time_in_force="GTD", expires_at=timezone.now() + timedelta(hours=1))
    place(fresh, m, "NO", "BUY", "0.40", 5)
    frozen_now(timedelta(hours=2))

    result = place(taker, m, "YES", "BUY", "0.60", 5)

    assert [(t.maker_agent_id, t.price, t.size) for t in result.trades] == [(fresh.id, D("0.60"), 5)]
    gtd_order = Order.objects.get(id=gtd.order.id)
    assert (gtd_order.status, gtd_order.cancel_reason, gtd_order.filled) == ("expired", "expired", 0)
    assert cash(stale) == money("1000.00", "0.00", "1000.00")
    assert cash(taker) == money("997.00", "0.00", "997.00")
    audit_clean()


def test_orders_expire_due_expires_past_due_gtd_orders_and_releases_their_reserve(m, audit_clean):
    buyer, seller, helper = new_agent(), new_agent(), new_agent()
    mint(seller, helper, m, 4)
    expiry = timezone.now() + timedelta(hours=1)
    buy = place(buyer, m, "YES", "BUY", "0.30", 10, time_in_force="GTD", expires_at=expiry).order
    sell = place(seller, m, "YES", "SELL", "0.80", 4, time_in_force="GTD", expires_at=expiry).order
    keep = place(buyer, m, "YES", "BUY", "0.20", 5).order
    assert cash(buyer) == money("1000.00", "4.00", "996.00")
    assert holding(seller, m) == (4, 0, 4, 0)

    assert orders_expire_due(now=expiry - timedelta(seconds=1)) == 0
    assert orders_expire_due(now=expiry) == 2

    assert {o.id: (o.status, o.cancel_reason) for o in Order.objects.filter(id__in=[buy.id, sell.id, keep.id])} == {
        buy.id: ("expired", "expired"),
        sell.id: ("expired", "expired"),
        keep.id: ("open", ""),
    }
    assert cash(buyer) == money("1000.00", "1.00", "999.00")
    assert holding(seller, m) == (4, 0, 0, 0)
    audit_clean()


def test_a_gtd_order_needs_a_future_expiry(m, audit_clean):
    agent = new_agent()
    before = snapshot()
    with pytest.raises(InvalidRequest):
        place(agent, m, "YES", "BUY", "0.30", 1, time_in_force="GTD", expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(InvalidRequest):
        place(agent, m, "YES", "BUY", "0.30", 1, time_in_force="GTD")
    assert snapshot() == before
    audit_clean()


def test_an_ioc_order_fills_what_crosses_and_cancels_the_rest_releasing_its_reserve(m, audit_clean):
    maker, taker = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 4)
    result = place(taker, m, "YES", "BUY", "0.60", 10, time_in_force="IOC")

    assert [(t.price, t.size) for t in result.trades] == [(D("0.60"), 4)]
    order = Order.objects.get(id=result.order.id)
    assert (order.status, order.filled, order.cancel_reason) == ("cancelled", 4, "ioc_remainder")
    assert cash(taker) == money("997.60", "0.00", "997.60")
    assert holding(taker, m) == (4, 0, 0, 0)
    assert book_tops(m) == (None, None)
    audit_clean()


def test_an_ioc_sell_that_cannot_fill_releases_its_contracts(m, audit_clean):
    seller, helper = new_agent(), new_agent()
    mint(seller, helper, m, 5)
    result = place(seller, m, "YES", "SELL", "0.50", 5, time_in_force="IOC")

    assert (result.order.status, result.order.cancel_reason, result.trades) == ("cancelled", "ioc_remainder", [])
    assert holding(seller, m) == (5, 0, 0, 0)
    assert cash(seller) == money("997.50", "0.00", "997.50")
    audit_clean()


def test_a_fok_order_that_cannot_fill_completely_changes_nothing(m, audit_clean):
    maker, taker = new_agent(), new_agent()
    resting = place(maker, m, "NO", "BUY", "0.40", 3).order
    before = snapshot()

    result = place(taker, m, "YES", "BUY", "0.60", 5, time_in_force="FOK")

    assert result.trades == []
    assert (result.order.status, result.order.filled, result.order.cancel_reason) == ("cancelled", 0, "fok_unfilled")
    assert cash(taker) == money("1000.00", "0.00", "1000.00")
    assert cash(maker) == money("1000.00", "1.20", "998.80")
    maker_order = Order.objects.get(id=resting.id)
    assert (maker_order.status, maker_order.filled) == ("open", 0)
    after = snapshot()
    assert after["agents"] == before["agents"]
    assert after["positions"] == before["positions"]
    assert after["ledger"] == before["ledger"]
    assert after["trades"] == before["trades"]
    audit_clean()


def test_a_fok_order_that_can_fill_completely_fills_at_the_makers_prices(m, audit_clean):
    first, second, taker = new_agent(), new_agent(), new_agent()
    place(first, m, "NO", "BUY", "0.40", 5)
    place(second, m, "NO", "BUY", "0.35", 5)
    result = place(taker, m, "YES", "BUY", "0.65", 8, time_in_force="FOK")

    assert [(t.price, t.size) for t in result.trades] == [(D("0.60"), 5), (D("0.65"), 3)]
    assert result.order.status == "filled"
    assert cash(taker) == money("995.05", "0.00", "995.05")
    assert cash(second) == money("998.95", "0.70", "998.25")
    audit_clean()


def test_a_post_only_order_that_would_cross_is_rejected_and_changes_nothing(m, audit_clean):
    maker, agent = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 5)
    before = snapshot()

    with pytest.raises(PostOnlyWouldCross):
        place(agent, m, "YES", "BUY", "0.60", 5, post_only=True)

    assert snapshot() == before
    assert cash(agent) == money("1000.00", "0.00", "1000.00")
    audit_clean()


def test_a_post_only_order_that_does_not_cross_rests(m, audit_clean):
    maker, agent = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 5)
    result = place(agent, m, "YES", "BUY", "0.59", 5, post_only=True)

    assert (result.order.status, result.order.post_only, result.trades) == ("open", True, [])
    assert cash(agent) == money("1000.00", "2.95", "997.05")
    assert book_tops(m) == (D("0.59"), D("0.40"))
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Self-trade prevention.


def test_it_never_trades_with_the_same_agent_and_cancels_its_resting_order_then_keeps_matching(m, audit_clean):
    agent, other = new_agent(), new_agent()
    own = place(agent, m, "NO", "BUY", "0.45", 5).order
    place(other, m, "NO", "BUY", "0.40", 5)
    assert cash(agent) == money("1000.00", "2.25", "997.75")

    result = place(agent, m, "YES", "BUY", "0.60", 5)

    assert [(t.maker_agent_id, t.price, t.size) for t in result.trades] == [(other.id, D("0.60"), 5)]
    assert not Trade.objects.filter(maker_agent=agent).exists()
    own = Order.objects.get(id=own.id)
    assert (own.status, own.cancel_reason, own.filled) == ("cancelled", "self_trade", 0)
    assert cash(agent) == money("997.00", "0.00", "997.00")
    assert holding(agent, m) == (5, 0, 0, 0)
    assert_book_not_crossed(m)
    audit_clean()


def test_a_self_trade_cancel_leaves_the_incoming_order_resting_and_the_book_uncrossed(m, audit_clean):
    agent = new_agent()
    own = place(agent, m, "NO", "BUY", "0.45", 5).order

    result = place(agent, m, "YES", "BUY", "0.60", 5)

    assert result.trades == []
    assert Order.objects.get(id=own.id).cancel_reason == "self_trade"
    assert result.order.status == "open"
    assert cash(agent) == money("1000.00", "3.00", "997.00")
    assert book_tops(m) == (D("0.60"), None)
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# client_order_id idempotency.


def test_a_repeated_client_order_id_returns_the_original_order_and_creates_nothing(m, audit_clean):
    maker, agent = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 2)
    first = place(agent, m, "YES", "BUY", "0.60", 5, client_order_id="abc-1")
    assert first.created is True
    before = snapshot()

    again = place(agent, m, "YES", "BUY", "0.60", 5, client_order_id="abc-1")

    assert again.created is False
    assert again.order.id == first.order.id
    assert [t.id for t in again.trades] == [t.id for t in first.trades]
    assert snapshot() == before
    assert cash(agent) == money("998.80", "1.80", "997.00")
    audit_clean()


def test_a_retried_gtd_order_returns_the_original_even_after_its_expiry_passed(m, audit_clean, monkeypatch):
    """A client retrying after a timeout must get its order back, not a refusal of the now-past ``expires_at``."""
    maker, agent = new_agent(), new_agent()
    place(maker, m, "NO", "BUY", "0.40", 2)
    expires = timezone.now() + timedelta(seconds=30)
    first = place(agent, m, "YES", "BUY", "0.60", 5, time_in_force="GTD", expires_at=expires, client_order_id="g-1")
    before = snapshot()
    later = timezone.now() + timedelta(minutes=5)
    monkeypatch.setattr(timezone, "now", lambda: later)

    again = place(agent, m, "YES", "BUY", "0.60", 5, time_in_force="GTD", expires_at=expires, client_order_id="g-1")

    assert (again.created, again.order.id) == (False, first.order.id)
    assert snapshot() == before
    with pytest.raises(InvalidRequest):  # a new id with that expiry is refused, as before
        place(agent, m, "YES", "BUY", "0.60", 5, time_in_force="GTD", expires_at=expires, client_order_id="g-2")
    assert snapshot() == before
    audit_clean()


def test_the_same_client_order_id_with_different_parameters_is_a_conflict(m, audit_clean):
    agent = new_agent()
    place(agent, m, "YES", "BUY", "0.60", 5, client_order_id="abc-2")
    before = snapshot()

    with pytest.raises(ClientOrderIdConflict):
        place(agent, m, "YES", "BUY", "0.61", 5, client_order_id="abc-2")
    with pytest.raises(ClientOrderIdConflict):
        place(agent, m, "NO", "BUY", "0.30", 5, client_order_id="abc-2")

    with pytest.raises(ClientOrderIdConflict):
        place(agent, m, "YES", "BUY", "0.60", 5, client_order_id="abc-2", time_in_force="IOC")
    with pytest.raises(ClientOrderIdConflict):
        place(agent, m, "YES", "BUY", "0.60", 5, client_order_id="abc-2", post_only=True)

    assert snapshot() == before
    # Another agent may use the same id.
    assert place(new_agent(), m, "YES", "BUY", "0.50", 1, client_order_id="abc-2").created is True
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Insufficient balance and position.


def test_it_refuses_a_buy_beyond_the_available_balance_and_changes_nothing(m, audit_clean):
    agent = new_agent()
    place(agent, m, "YES", "BUY", "0.60", 1000)  # 600.00 reserved, 400.00 available
    before = snapshot()

    with pytest.raises(InsufficientBalance):
        place(agent, m, "YES", "BUY", "0.40", 1001)  # 400.40

    assert snapshot() == before
    place(agent, m, "YES", "BUY", "0.40", 1000)  # exactly 400.00 is fine
    assert cash(agent) == money("1000.00", "1000.00", "0.00")
    audit_clean()


def test_it_refuses_to_sell_contracts_the_agent_does_not_hold_or_has_reserved(m, audit_clean):
    agent, helper = new_agent(), new_agent()
    before = snapshot()
    with pytest.raises(InsufficientPosition):
        place(agent, m, "YES", "SELL", "0.50", 1)
    assert snapshot() == before

    mint(agent, helper, m, 5)
    place(agent, m, "YES", "SELL", "0.90", 3)
    before = snapshot()
    with pytest.raises(InsufficientPosition):
        place(agent, m, "YES", "SELL", "0.80", 3)  # only 2 unreserved
    with pytest.raises(InsufficientPosition):
        place(agent, m, "NO", "SELL", "0.80", 1)
    assert snapshot() == before
    place(agent, m, "YES", "SELL", "0.80", 2)
    assert holding(agent, m) == (5, 0, 5, 0)
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Cancelling.


def test_cancelling_a_buy_releases_its_reserve(m, audit_clean):
    agent, seller_of_no = new_agent(), new_agent()
    order = place(agent, m, "YES", "BUY", "0.30", 10).order
    place(seller_of_no, m, "NO", "BUY", "0.70", 4)  # fills 4 of the BUY at 0.30
    assert cash(agent) == money("998.80", "1.80", "997.00")

    cancelled = order_cancel(agent=agent, order_id=order.id)

    assert (cancelled.status, cancelled.cancel_reason, cancelled.filled) == ("cancelled", "user", 4)
    assert cash(agent) == money("998.80", "0.00", "998.80")
    assert holding(agent, m) == (4, 0, 0, 0)
    audit_clean()


def test_cancelling_a_sell_releases_its_contracts(m, audit_clean):
    agent, helper = new_agent(), new_agent()
    mint(agent, helper, m, 5)
    order = place(agent, m, "YES", "SELL", "0.90", 5).order
    assert holding(agent, m) == (5, 0, 5, 0)

    order_cancel(agent=agent, order_id=order.id)

    assert holding(agent, m) == (5, 0, 0, 0)
    assert cash(agent) == money("997.50", "0.00", "997.50")
    audit_clean()


def test_cancelling_a_filled_order_is_refused(m, audit_clean):
    maker, taker = new_agent(), new_agent()
    order = place(maker, m, "NO", "BUY", "0.40", 5).order
    place(taker, m, "YES", "BUY", "0.60", 5)
    before = snapshot()

    with pytest.raises(OrderNotCancellable):
        order_cancel(agent=maker, order_id=order.id)
    with pytest.raises(OrderNotCancellable):
        order_cancel(agent=taker, order_id=Order.objects.get(agent=taker).id)

    assert snapshot() == before
    audit_clean()


def test_cancelling_twice_is_refused_the_second_time(m, audit_clean):
    agent = new_agent()
    order = place(agent, m, "YES", "BUY", "0.30", 10).order
    order_cancel(agent=agent, order_id=order.id)
    with pytest.raises(OrderNotCancellable):
        order_cancel(agent=agent, order_id=order.id)
    assert cash(agent) == money("1000.00", "0.00", "1000.00")
    audit_clean()


def test_cancelling_someone_elses_or_an_unknown_order_is_not_found(m, audit_clean):
    owner, intruder = new_agent(), new_agent()
    order = place(owner, m, "YES", "BUY", "0.30", 10).order
    before = snapshot()

    with pytest.raises(NotFound):
        order_cancel(agent=intruder, order_id=order.id)
    with pytest.raises(NotFound):
        order_cancel(agent=owner, order_id="not-a-uuid")
    with pytest.raises(NotFound):
        order_cancel(agent=owner, order_id="00000000-0000-0000-0000-000000000000")

    assert snapshot() == before
    assert cash(owner) == money("1000.00", "3.00", "997.00")
    audit_clean()


def test_cancel_all_releases_every_resting_order_of_the_agent_across_markets(m, audit_clean):
    agent, other, helper = new_agent(), new_agent(), new_agent()
    second = new_market()
    mint(agent, helper, second, 4)  # agent: 998.00, 4 YES in the second market
    place(agent, m, "YES", "BUY", "0.30", 10)
    place(agent, m, "NO", "BUY", "0.20", 10)
    place(agent, second, "YES", "SELL", "0.90", 4)
    kept = place(other, m, "YES", "BUY", "0.25", 4).order
    assert cash(agent) == money("998.00", "5.00", "993.00")

    cancelled = order_cancel_all(agent=agent)

    assert len(cancelled) == 3
    assert cash(agent) == money("998.00", "0.00", "998.00")
    assert holding(agent, second) == (4, 0, 0, 0)
    assert Order.objects.get(id=kept.id).status == "open"
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Market lifecycle.


def test_closing_a_market_cancels_resting_orders_and_refuses_new_ones(m, audit_clean):
    buyer, seller, helper = new_agent(), new_agent(), new_agent()
    mint(seller, helper, m, 5)
    buy = place(buyer, m, "YES", "BUY", "0.30", 10).order
    sell = place(seller, m, "YES", "SELL", "0.80", 5).order

    market_close(market_id=m.id)

    for order in Order.objects.filter(id__in=[buy.id, sell.id]):
        assert (order.status, order.cancel_reason) == ("cancelled", "market_closed")
    assert cash(buyer) == money("1000.00", "0.00", "1000.00")
    assert holding(seller, m) == (5, 0, 0, 0)
    before = snapshot()
    with pytest.raises(MarketClosed):
        place(buyer, m, "YES", "BUY", "0.30", 1)
    with pytest.raises(MarketClosed):
        forecast_record(agent=buyer, market_id=m.id, probability="0.5")
    assert snapshot() == before
    audit_clean()


def test_orders_after_the_deadline_are_refused_at_once_even_before_the_market_is_closed(audit_clean, frozen_now):
    agent = new_agent()
    market = new_market(deadline=timezone.now() + timedelta(hours=1))
    place(agent, market, "YES", "BUY", "0.30", 10)
    later = frozen_now(timedelta(hours=2))
    before = snapshot()

    with pytest.raises(MarketClosed):
        place(agent, market, "YES", "BUY", "0.30", 1)
    assert snapshot() == before

    assert [mk.id for mk in markets_close_due(now=later)] == [market.id]
    assert Market.objects.get(id=market.id).status == "closed"
    assert cash(agent) == money("1000.00", "0.00", "1000.00")
    audit_clean()


def test_orders_in_an_unknown_market_are_not_found(audit_clean):
    agent = new_agent()
    for market_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        with pytest.raises(NotFound):
            order_place(agent=agent, market_id=market_id, side="YES", action="BUY", price="0.50", size=1)
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Resolution, P&L, reputation and Brier scores.


@pytest.fixture
def traded(m):
    """yes_holder: 10 YES bought at 0.60 (6.00); no_holder: 10 NO at 0.40 (4.00); bidder: a resting BUY of 5 @ 0.30."""
    yes_holder, no_holder, bidder = new_agent(), new_agent(), new_agent()
    place(yes_holder, m, "YES", "BUY", "0.60", 10)
    place(no_holder, m, "NO", "BUY", "0.40", 10)
    place(bidder, m, "YES", "BUY", "0.30", 5)
    assert cash(bidder) == money("1000.00", "1.50", "998.50")
    return yes_holder, no_holder, bidder


@pytest.mark.parametrize(
    ("outcome", "yes_after", "no_after"),
    [
        ("YES", "1004.00", "996.00"),  # 10 YES pay 10.00
        ("NO", "994.00", "1006.00"),  # 10 NO pay 10.00
        ("VOID", "999.00", "1001.00"),  # 0.50 per contract on both sides
    ],
)
def test_resolution_pays_the_winning_side_and_records_pnl_and_reputation(
    m, traded, audit_clean, outcome, yes_after, no_after
):
    yes_holder, no_holder, bidder = traded
    money_before = total_money()

    market_resolve(market_id=m.id, outcome=outcome, resolver=operator_resolver())

    assert cash(yes_holder) == money(yes_after, "0.00", yes_after)
    assert cash(no_holder) == money(no_after, "0.00", no_after)
    assert cash(bidder) == money("1000.00", "0.00", "1000.00")  # its resting order was cancelled
    assert Order.objects.get(agent=bidder).cancel_reason == "market_resolved"
    yes_pnl, no_pnl = D(yes_after) - 1000, D(no_after) - 1000
    assert (position(yes_holder, m).realized_pnl, position(no_holder, m).realized_pnl) == (yes_pnl, no_pnl)
    assert (yes_holder.reputation, no_holder.reputation, bidder.reputation) == (yes_pnl, no_pnl, D("0.00"))
    assert holding(yes_holder, m) == holding(no_holder, m) == (0, 0, 0, 0)
    payouts = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PAYOUT, market_id=m.id)
    assert sum(e.amount for e in payouts) == D("10.00")
    assert pairs_outstanding(m) == 0
    assert total_money() == money_before
    market = Market.objects.get(id=m.id)
    assert (market.status, market.outcome) == ("resolved", outcome)
    audit_clean()


def test_a_second_resolution_is_refused_and_changes_nothing(m, traded, audit_clean):
    market_resolve(market_id=m.id, outcome="YES", resolver=operator_resolver())
    before = snapshot()

    for outcome in ("YES", "NO", "VOID"):
        with pytest.raises(MarketAlreadyResolved):
            market_resolve(market_id=m.id, outcome=outcome, resolver=operator_resolver())
    with pytest.raises(MarketAlreadyResolved):
        market_close(market_id=m.id)

    assert snapshot() == before
    audit_clean()


def test_realized_pnl_counts_sales_netting_and_payouts_and_reputation_sums_over_markets(m, audit_clean):
    agent, counterparty, buyer = new_agent(), new_agent(), new_agent()
    place(agent, m, "YES", "BUY", "0.60", 10)
    place(counterparty, m, "NO", "BUY", "0.40", 10)  # agent: 10 YES for 6.00
    place(buyer, m, "YES", "BUY", "0.70", 4)
    place(agent, m, "YES", "SELL", "0.70", 4)  # sells 4 at 0.70: +2.80, basis 2.40, +0.40
    place(counterparty, m, "YES", "BUY", "0.80", 2)
    place(agent, m, "NO", "BUY", "0.20", 2)  # 2 NO for 0.40, nets 2 pairs: +2.00, basis 1.20 + 0.40, +0.40
    assert holding(agent, m) == (4, 0, 0, 0)
    assert cash(agent) == money("998.40", "0.00", "998.40")
    assert position(agent, m).realized_pnl == D("0.80")

    market_resolve(market_id=m.id, outcome="YES", resolver=operator_resolver())  # 4 YES at cost 2.40 pay 4.00: +1.60

    assert position(agent, m).realized_pnl == D("2.40")
    assert cash(agent) == money("1002.40", "0.00", "1002.40")
    assert cash(agent)[0] - 1000 == position(agent, m).realized_pnl
    agent.refresh_from_db()
    assert agent.reputation == D("2.40")

    other = new_market()
    place(agent, other, "NO", "BUY", "0.30", 5)
    place(counterparty, other, "YES", "BUY", "0.70", 5)  # agent: 5 NO for 1.50
    market_resolve(market_id=other.id, outcome="VOID", resolver=operator_resolver())  # pays 2.50: +1.00

    agent.refresh_from_db()
    assert position(agent, other).realized_pnl == D("1.00")
    assert agent.reputation == D("3.40")
    assert agent.balance == D("1003.40")
    audit_clean()


def test_brier_score_uses_the_last_forecast_before_close(audit_clean):
    forecaster, counterparty, silent = new_agent(), new_agent(), new_agent()
    yes_market, no_market, void_market = new_market(), new_market(), new_market()
    place(forecaster, yes_market, "YES", "BUY", "0.60", 1, forecast="0.8")
    ForecastFactory(agent=forecaster, market=yes_market, probability="0.7", reasoning="second thoughts")
    place(counterparty, yes_market, "NO", "BUY", "0.40", 1, forecast=D("0.2"))
    place(silent, yes_market, "YES", "BUY", "0.10", 1)
    place(forecaster, no_market, "YES", "BUY", "0.40", 1, forecast="0.4")
    ForecastFactory(agent=forecaster, market=void_market, probability="0.99")

    market_resolve(market_id=yes_market.id, outcome="YES", resolver=operator_resolver())
    forecaster.refresh_from_db()
    counterparty.refresh_from_db()
    assert forecaster.brier_score == D("0.090000")  # (0.7 - 1)^2, not (0.8 - 1)^2
    assert counterparty.brier_score == D("0.640000")  # (0.2 - 1)^2

    market_close(market_id=no_market.id)
    market_resolve(market_id=no_market.id, outcome="NO", resolver=operator_resolver())
    market_resolve(market_id=void_market.id, outcome="VOID", resolver=operator_resolver())  # VOID markets do not count

    forecaster.refresh_from_db()
    silent.refresh_from_db()
    assert (forecaster.brier_count, forecaster.brier_score) == (2, D("0.125000"))  # (0.09 + 0.16) / 2
    assert (silent.brier_count, silent.brier_score) == (0, None)
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Market sequence numbers.


def test_every_market_change_takes_the_next_sequence_number_without_gaps(m, audit_clean):
    a, b, c = new_agent(), new_agent(), new_agent()
    place(a, m, "YES", "BUY", "0.60", 10)
    place(b, m, "NO", "BUY", "0.45", 4)  # a trade: the order, the trade, the maker's change
    place(c, m, "NO", "BUY", "0.30", 5, time_in_force="IOC")
    order = place(c, m, "NO", "BUY", "0.20", 5).order
    order_cancel(agent=c, order_id=order.id)
    with pytest.raises(InsufficientBalance):
        place(c, m, "YES", "BUY", "0.50", 5000)  # a refused order takes no number
    market_close(market_id=m.id)
    market_resolve(market_id=m.id, outcome="NO", resolver=operator_resolver())

    m.refresh_from_db()
    seqs = list(MarketEvent.objects.filter(market=m).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, m.seq + 1))
    kinds = list(MarketEvent.objects.filter(market=m).order_by("seq").values_list("kind", flat=True))
    assert kinds[0] == kinds[-2] == kinds[-1] == "market"
    for trade in Trade.objects.filter(market=m):
        assert MarketEvent.objects.get(market=m, seq=trade.seq).kind == "trade"
    orders = Order.objects.filter(market=m)
    assert len({o.seq for o in orders}) == orders.count()
    audit_clean()


def test_operator_adjustments_keep_money_conserved(m, audit_clean):
    agent = new_agent()
    place(agent, m, "YES", "BUY", "0.50", 100)  # 50.00 reserved
    agent_grant_credits(agent_id=agent.id, amount=D("25.00"))
    assert cash(agent) == money("1025.00", "50.00", "975.00")
    before = snapshot()
    with pytest.raises(InsufficientBalance):
        agent_grant_credits(agent_id=agent.id, amount=D("-975.01"))  # would dip into the reserve
    assert snapshot() == before
    agent_grant_credits(agent_id=agent.id, amount=D("-975.00"))
    assert cash(agent) == money("50.00", "50.00", "0.00")
    assert total_money() == external_money()
    audit_clean()
