"""The live runner's bookkeeping without a server: the feeds' messages applied to the book, the holding, the orders
and the cash as the exchange applies them, each fill delivered once however it arrives, netting derived as the
exchange nets, refusals raised like the backtest's."""

from __future__ import annotations

from decimal import Decimal

import pytest
from moltstreet_client import InvalidRequest, MarketClosed, Strategy
from moltstreet_client.models import OrderResult
from moltstreet_client.runner import LiveRunner

D = Decimal


class FakeClient:
    """Answers ``place_order`` with the next prepared answer; records what was asked."""

    api_key = "key"

    def __init__(self):
        self.answers: list[dict] = []
        self.placed: list[tuple] = []

    def place_order(self, market, side, action, price, size, **options):
        if side not in ("YES", "NO"):
            raise ValueError(f"side must be one of YES, NO, not {side!r}")
        self.placed.append((market, side, action, price, size, options))
        return OrderResult.from_dict(self.answers.pop(0))


class Fills(Strategy):
    def __init__(self):
        super().__init__()
        self.fills = []
        self.books = 0

    def on_fill(self, ctx, fill):
        self.fills.append((fill.reason, fill.side, fill.action, fill.price, fill.size, fill.cash, ctx.inventory))

    def on_book(self, ctx):
        self.books += 1


def order(status="open", filled=0, size=5, side="YES", action="BUY", price="0.50", order_id="o1"):
    return {
        "id": order_id,
        "market": "m",
        "side": side,
        "action": action,
        "price": price,
        "size": size,
        "filled": filled,
        "status": status,
    }


def private(runner, *messages):
    for message in messages:
        runner._handle("private", None, {"market": "m", **message}, 10**9)


@pytest.fixture
def setup():
    client = FakeClient()
    strategy = Fills()
    runner = LiveRunner(strategy, client, ["m"])
    market = runner.markets["m"]
    market.snapshot(
        {
            "type": "snapshot",
            "seq": 7,
            "market": {"id": "m", "status": "open", "yes_price": "0.47", "reference_price": "0.4812"},
            "book": {"yes": [{"price": "0.44", "size": 3}], "no": [{"price": "0.55", "size": 9}]},
            "trades": [{"price": "0.47"}, {"price": "0.46"}],
        }
    )
    runner.cash = D("100.00")
    return client, strategy, runner, market


def test_the_snapshot_and_book_messages_make_the_book_the_strategy_sees(setup):
    _client, strategy, runner, market = setup
    ctx = market.ctx
    assert (ctx.best_bid, ctx.bid_size, ctx.best_ask, ctx.ask_size) == (D("0.44"), 3, D("0.45"), 9)
    assert (ctx.last_price, ctx.recent_prices, ctx.reference_price) == (D("0.47"), (D("0.46"), D("0.47")), D("0.4812"))
    runner._handle("market", "m", {"type": "book", "seq": 8, "levels": [{"side": "NO", "price": "0.55", "size": 0}]}, 1)
    assert (ctx.best_ask, ctx.ask_size, strategy.books) == (None, 0, 1)


def test_a_fill_is_delivered_once_whether_it_came_in_the_answer_or_the_feed(setup):
    client, strategy, runner, market = setup
    client.answers.append(
        {"order": order("partial", 2), "trades": [{"id": "t1", "price": "0.45", "size": 2, "taker_side": "YES"}]}
    )
    view = market.ctx.buy("YES", "0.50", 5)
    assert (view.filled, view.status, market.yes_shares) == (2, "partial", 2)
    assert runner.cash == D("100.00") - D("2.50") + D("0.10"), "5 x 0.50 reserved, 0.05 x 2 released"
    runner._deliver()
    # The same transaction's private messages arrive afterwards, the order's first state included.
    fill = {"id": "t1", "order": "o1", "side": "YES", "action": "BUY", "role": "taker", "price": "0.45", "size": 2}
    private(
        runner,
        {"type": "order", "event": "placed", "order": order("open", 0)},
        {"type": "fill", "fill": {**fill, "fill_price": "0.45"}},
        {"type": "balance", "available_balance": "97.60"},
    )
    assert (view.filled, view.status, market.yes_shares) == (2, "partial", 2), "an older state does not undo a newer"
    assert strategy.fills == [("taker", "YES", "BUY", D("0.45"), 2, D("-0.90"), 2)]
    assert runner.cash == D("97.60")

    # Later a trade fills the rest as maker: its order message may come before its fill.
    maker = {**fill, "id": "t2", "role": "maker", "price": "0.50", "fill_price": "0.50", "size": 3}
    private(
        runner,
        {"type": "order", "event": "filled", "order": order("filled", 5)},
        {"type": "fill", "fill": maker},
        {"type": "balance", "available_balance": "97.60"},
    )
    assert strategy.fills[-1] == ("maker", "YES", "BUY", D("0.50"), 3, D("-1.50"), 5)
    assert market.ctx.orders == [] and view.status == "filled"


def test_pairs_of_unreserved_yes_and_no_merge_as_the_exchange_nets_them(setup):
    client, strategy, runner, market = setup
    market.yes_shares = 5
    client.answers.append({"order": order("open", 0, size=2, action="SELL", price="0.60", order_id="s1"), "trades": []})
    market.ctx.sell("YES", "0.60", 2)  # reserves 2 YES
    fill = {"order": "o2", "side": "NO", "action": "BUY", "role": "maker", "price": "0.40", "fill_price": "0.60"}
    private(
        runner,
        {"type": "order", "event": "filled", "order": order("filled", 4, size=4, side="NO", order_id="o2")},
        {"type": "fill", "fill": {**fill, "id": "t3", "size": 4}},
        {"type": "balance", "available_balance": "101.00"},
    )
    # 5 YES (2 reserved) and 4 NO: 3 pairs merge, as CashBook.net does.
    assert [f[0] for f in strategy.fills] == ["maker", "netting"]
    assert strategy.fills[1] == ("netting", "PAIR", "MERGE", D("1"), 3, D("3"), 1)
    assert (market.yes_shares, market.no_shares) == (2, 1)


def test_refusals_are_the_sdk_errors_a_backtest_raises(setup):
    client, _strategy, _runner, market = setup
    with pytest.raises(InvalidRequest):
        market.ctx.buy("MAYBE", "0.50", 1)
    with pytest.raises(InvalidRequest):
        market.ctx.forecast("1.5")
    market.status = "closed"
    with pytest.raises(MarketClosed):
        market.ctx.buy("YES", "0.50", 1)
    with pytest.raises(MarketClosed):
        market.ctx.forecast("0.5")
    assert client.placed == [], "nothing sent for a closed market"


def test_closing_the_market_ends_the_resting_orders_and_releases_their_reserve(setup):
    client, _strategy, runner, market = setup
    client.answers.append({"order": order("open", 0), "trades": []})
    market.ctx.buy("YES", "0.50", 5)
    assert runner.cash == D("97.50")
    runner._handle("market", "m", {"type": "market", "seq": 9, "event": "closed", "market": {"status": "closed"}}, 2)
    assert market.ctx.orders == [] and runner.cash == D("100.00")
    assert (market.ctx.status, market.ctx.best_bid, market.ctx.best_ask) == ("closed", None, None)


def test_a_late_message_of_an_order_that_ended_does_not_bring_it_back(setup):
    client, _strategy, runner, market = setup
    client.answers.append({"order": {**order("cancelled", 0), "cancel_reason": "ioc_remainder"}, "trades": []})
    view = market.ctx.buy("YES", "0.50", 5, time_in_force="IOC")
    assert (view.status, view.cancel_reason, runner.cash) == ("cancelled", "ioc_remainder", D("100.00"))
    private(
        runner,
        {"type": "order", "event": "placed", "order": order("open", 0)},
        {"type": "order", "event": "cancelled", "order": order("cancelled", 0)},
        {"type": "balance", "available_balance": "100.00"},
    )
    assert market.ctx.orders == [] and market.orders == {}, "ended orders are forgotten, and stay ended"
