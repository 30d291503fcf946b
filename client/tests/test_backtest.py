"""The backtest engine (DESIGN section 11): its fill rules on small hand-built histories, a full backtest whose
executions, P&L and metrics are computed by hand, the P&L identity and determinism of every built-in strategy, and
every built-in on the real Polymarket trades of ../shared/data replayed into the database and read back through
``GET /api/v1/markets/{id}/events/``.

The hand-built histories are what that endpoint sends: ``book`` (a level's new absolute size; ``price`` the bid in
that side's queue, a NO price for ``side`` NO), ``trade`` (``price`` the YES price, ``taker_side``), ``reference``
and ``market`` events, each with ``seq`` and ``created_at``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from moltstreet_client import metrics
from moltstreet_client.backtest import MarketHistory, run_backtest
from moltstreet_client.errors import (
    InsufficientBalance,
    InsufficientPosition,
    MarketClosed,
    MoltStreetError,
    PostOnlyWouldCross,
)
from moltstreet_client.strategies import BUILTINS, MarketMaker
from moltstreet_client.strategy import Execution, Strategy

D = Decimal
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "polymarket" / "fed-march-2026-trades.csv"


# --------------------------------------------------------------------------------------------------------------------
# Building histories by hand


class History:
    """Events as ``GET /markets/{id}/events/`` sends them, one a minute from ``T0`` unless ``at`` says when."""

    def __init__(self, market: str = "m1", deadline: datetime | None = None):
        self.market = market
        self.deadline = deadline
        self.events: list[dict[str, Any]] = []
        self.now = T0
        self.add("market", at=T0, event="created", market={"status": "open", "outcome": None})

    def add(self, kind: str, *, at: datetime | None = None, **fields: Any) -> datetime:
        self.now = at if at is not None else self.now + timedelta(minutes=1)
        self.events.append({"type": kind, "seq": len(self.events) + 1, "created_at": _iso(self.now), **fields})
        return self.now

    def book(self, side: str, price: str, size: int, at: datetime | None = None) -> datetime:
        return self.add("book", at=at, levels=[{"side": side, "price": price, "size": size}])

    def trade(self, price: str, size: int, taker_side: str, at: datetime | None = None) -> datetime:
        return self.add("trade", at=at, trade={"price": price, "size": size, "taker_side": taker_side})

    def reference(self, yes_price: str, at: datetime | None = None) -> datetime:
        return self.add("reference", at=at, reference={"yes_price": yes_price})

    def close(self, at: datetime | None = None) -> datetime:
        return self.add("market", at=at, event="closed", market={"status": "closed", "outcome": None})

    def resolve(self, outcome: str, at: datetime | None = None) -> datetime:
        return self.add("market", at=at, event="resolved", market={"status": "resolved", "outcome": outcome})

    def history(self) -> MarketHistory:
        return MarketHistory(self.market, f"Question {self.market}?", self.deadline, list(self.events))


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class Script(Strategy):
    """Runs ``steps[time]`` (a function of the context) at the hook of the event recorded at that time, once, and
    records what it returned or raised, every fill, and what each hook saw."""

    name = "script"

    def __init__(self, steps: dict[datetime, Callable[[Any], Any]]):
        super().__init__()
        self.steps = dict(steps)
        self.out: dict[datetime, Any] = {}
        self.fills: list[Execution] = []
        self.seen: list[tuple[str, datetime, Any]] = []

    def _step(self, ctx, hook: str, detail: Any = None) -> None:
        self.seen.append((hook, ctx.now, detail))
        step = self.steps.pop(ctx.now, None)
        if step is not None:
            try:
                self.out[ctx.now] = step(ctx)
            except MoltStreetError as exc:
                self.out[ctx.now] = exc

    def on_book(self, ctx):
        self._step(ctx, "book", (ctx.best_bid, ctx.best_ask, ctx.ask_size))

    def on_trade(self, ctx, trade):
        self._step(ctx, "trade", (ctx.best_bid, ctx.best_ask, ctx.ask_size))

    def on_reference(self, ctx, price):
        self._step(ctx, "reference", price)

    def on_market(self, ctx, event):
        self._step(ctx, "market", event)

    def on_fill(self, ctx, fill):
        self.fills.append(fill)


def run(history: History | list[History], steps: dict, **options):
    strategy = Script(steps)
    histories = [h.history() for h in history] if isinstance(history, list) else history.history()
    result = run_backtest(strategy, histories, **options)
    return result, strategy


def fills(result) -> list[tuple]:
    return [(e.side, e.action, e.price, e.size, e.reason, e.cash) for e in result.executions]


def identity_holds(result) -> bool:
    flows = sum((e.cash for e in result.executions), D(0))
    return result.pnl == flows + sum(result.payouts.values(), D(0)) + sum(result.marked.values(), D(0))


# --------------------------------------------------------------------------------------------------------------------
# One backtest computed by hand


def hand_history() -> History:
    """Three UTC days of one market: a book, two prints through a resting bid, a sale into a bid, a mark, a close
    and a YES resolution."""
    h = History()
    h.book("NO", "0.40", 10, at=T0 + timedelta(minutes=1))  # a YES ask at 0.60 for 10
    h.book("YES", "0.55", 8, at=T0 + timedelta(minutes=2))
    h.reference("0.58", at=T0 + timedelta(minutes=3))  # the strategy buys here
    h.book("YES", "0.56", 3, at=T0 + timedelta(minutes=4))
    h.trade("0.56", 3, "NO", at=T0 + timedelta(minutes=5))  # prints through its bid at 0.57
    h.book("YES", "0.56", 0, at=T0 + timedelta(minutes=6))
    h.book("YES", "0.55", 0, at=T0 + timedelta(minutes=7))
    day2 = T0 + timedelta(days=1)
    h.book("YES", "0.50", 10, at=day2 - timedelta(minutes=1))
    h.trade("0.50", 10, "NO", at=day2)  # through the rest of its bid
    h.book("YES", "0.50", 0, at=day2 + timedelta(minutes=1))
    h.book("YES", "0.52", 5, at=day2 + timedelta(hours=1))  # the strategy sells into it
    day3 = T0 + timedelta(days=2)
    h.book("NO", "0.35", 2, at=day3 - timedelta(minutes=1))
    h.trade("0.65", 2, "YES", at=day3)  # a mark only
    h.book("NO", "0.35", 0, at=day3 + timedelta(minutes=1))
    h.close(at=day3 + timedelta(hours=1))
    h.resolve("YES", at=day3 + timedelta(hours=2))
    return h


def hand_steps() -> dict:
    def buy(ctx):
        ctx.forecast("0.70")
        taken = ctx.buy("YES", "0.60", 4, time_in_force="IOC")
        rests = ctx.buy("YES", "0.57", 6)
        return taken, rests

    return {
        T0 + timedelta(minutes=3): buy,
        T0 + timedelta(days=1, hours=1): lambda ctx: ctx.sell("YES", "0.52", 4, time_in_force="IOC"),
    }


def test_a_hand_computed_backtest_gives_its_executions_pnl_and_every_metric():
    result, strategy = run(hand_history(), hand_steps())

    day2 = T0 + timedelta(days=1)
    assert fills(result) == [
        ("YES", "BUY", D("0.60"), 4, "taker", D("-2.40")),  # the displayed ask, at its price
        ("YES", "BUY", D("0.57"), 3, "maker", D("-1.71")),  # 0.56 printed through 0.57: its price, the print's size
        ("YES", "BUY", D("0.57"), 3, "maker", D("-1.71")),  # 0.50 printed through: the 3 left
        ("YES", "SELL", D("0.52"), 4, "taker", D("2.08")),
    ]
    assert [e.time for e in result.executions] == [
        T0 + timedelta(minutes=3),
        T0 + timedelta(minutes=5),
        day2,
        day2 + timedelta(hours=1),
    ]
    assert strategy.fills == result.executions  # each reached on_fill
    # Cash flows -3.74, the YES payout of the 6 contracts left, nothing marked.
    assert result.payouts == {"m1": D("6.00")}
    assert result.marked == {}
    assert result.positions == {}
    assert result.final_equity == D("1002.26")
    assert identity_holds(result)
    assert metrics.pnl_identity_gap(result) == 0
    # Equity (cash + contracts at the last trade, else the reference): 1000; 997.60 + 4 x 0.58; 995.89 + 7 x 0.56;
    # 994.18 + 10 x 0.50; 996.26 + 6 x 0.50; 996.26 + 6 x 0.65; 1002.26 paid out.
    assert [v for _, v in result.equity] == [
        D("1000.00"),
        D("999.92"),
        D("999.81"),
        D("999.18"),
        D("999.26"),
        D("1000.16"),
        D("1002.26"),
    ]
    # Daily closes 1000, 999.81, 999.26, 1002.26: returns -0.00019, -0.000550104520, 0.003002221644;
    # mean 0.000754039041, sample sd (n - 1) 0.001955290919; x sqrt(365) = 7.3676.
    assert metrics.daily_closes(result.equity, result.start, result.end, result.cash) == [
        D("1000.00"),
        D("999.81"),
        D("999.26"),
        D("1002.26"),
    ]
    assert result.metrics == {
        "pnl": D("2.26"),
        "return": D("0.002260"),
        "sharpe": D("7.3676"),
        "max_drawdown": D("0.000820"),  # the peak 1000 to the trough 999.18
        "win_rate": D("1.0000"),  # its one market made money
        "trades": 4,
        "brier": D("0.0900"),  # (0.70 - 1)^2
    }
    bins = result.as_dict()["reliability"]
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    assert bins[7] == {"lower": "0.70", "upper": "0.80", "count": 1, "mean_forecast": "0.7000", "observed": "1.0000"}


def test_the_same_backtest_twice_gives_the_same_result():
    first, _ = run(hand_history(), hand_steps())
    again, _ = run(hand_history(), hand_steps())
    assert first.as_dict() == again.as_dict()


# --------------------------------------------------------------------------------------------------------------------
# Fill rules


def test_a_resting_order_fills_only_on_a_print_strictly_through_its_price_at_its_price_up_to_the_print_size():
    h = History()
    placed = h.reference("0.50")
    h.trade("0.50", 9, "NO")  # at its price: the queue ahead is unknown
    through = h.trade("0.49", 2, "NO")
    h.trade("0.60", 9, "YES")  # at the NO bid's YES ask 0.60: not through it either
    above = h.trade("0.61", 7, "YES")
    result, s = run(h, {placed: lambda ctx: (ctx.buy("YES", "0.50", 5), ctx.buy("NO", "0.40", 5))})
    bid, ask = s.out[placed]
    assert fills(result) == [
        ("YES", "BUY", D("0.50"), 2, "maker", D("-1.00")),  # at its own price, not the print's 0.49
        ("NO", "BUY", D("0.40"), 5, "maker", D("-2.00")),  # a print above 1 - 0.40, its whole size
        ("PAIR", "MERGE", D("1"), 2, "netting", D("2")),  # the 2 YES against 2 of the NO
    ]
    assert [e.time for e in result.executions] == [through, above, above]
    assert (bid.filled, bid.status, ask.filled, ask.status) == (2, "partial", 5, "filled")


def test_one_print_is_shared_among_resting_orders_best_price_first_then_oldest():
    h = History()
    placed = h.reference("0.50")
    h.trade("0.40", 6, "NO")
    result, _ = run(
        h, {placed: lambda ctx: (ctx.buy("YES", "0.45", 3), ctx.buy("YES", "0.47", 2), ctx.buy("YES", "0.45", 3))}
    )
    assert [(e.price, e.size, e.order) for e in result.executions] == [
        (D("0.47"), 2, "bt-3"),
        (D("0.45"), 3, "bt-1"),
        (D("0.45"), 1, "bt-5"),
    ]


def test_a_crossing_order_takes_no_more_than_the_displayed_sizes_at_their_prices_and_rests_the_rest():
    h = History()
    h.book("NO", "0.40", 3)  # YES ask 0.60 x 3
    h.book("NO", "0.38", 2)  # YES ask 0.62 x 2
    h.book("NO", "0.30", 50)  # YES ask 0.70: beyond its limit
    go = h.reference("0.60")
    result, s = run(h, {go: lambda ctx: (ctx.buy("YES", "0.62", 10), ctx.orders, ctx.cash)})
    order, resting, cash = s.out[go]
    assert fills(result) == [
        ("YES", "BUY", D("0.60"), 3, "taker", D("-1.80")),
        ("YES", "BUY", D("0.62"), 2, "taker", D("-1.24")),
    ]
    assert (order.filled, order.status, order.remaining) == (5, "partial", 5)
    assert [o.id for o in resting] == [order.id]
    # 1000 - 3.04 paid - 5 x 0.62 still reserved by the resting part.
    assert cash == D("1000") - D("3.04") - D("3.10")


def test_liquidity_it_took_is_not_taken_again_and_shrinks_with_the_recorded_level():
    h = History()
    h.book("NO", "0.40", 3)
    first = h.reference("0.60")
    again = h.reference("0.61")
    grown = h.book("NO", "0.40", 5)  # the recorded level grows to 5: 2 more than it took
    shrunk = h.book("NO", "0.40", 2)  # and shrinks to 2: what it took came off first, nothing is left
    h.book("NO", "0.40", 4)  # 4 recorded, 2 of them its own: 2 available
    last = h.reference("0.62")
    ioc = {"time_in_force": "IOC"}
    result, s = run(
        h,
        {
            first: lambda ctx: ctx.buy("YES", "0.60", 3, **ioc),
            again: lambda ctx: (ctx.best_ask, ctx.buy("YES", "0.60", 3, **ioc)),
            grown: lambda ctx: (ctx.ask_size, ctx.buy("YES", "0.60", 9, **ioc)),
            shrunk: lambda ctx: (ctx.best_ask, ctx.buy("YES", "0.60", 1, **ioc)),
            last: lambda ctx: (ctx.ask_size, ctx.buy("YES", "0.60", 9, **ioc)),
        },
    )
    assert s.out[first].filled == 3
    best_ask, order = s.out[again]
    assert (best_ask, order.filled, order.status, order.cancel_reason) == (None, 0, "cancelled", "ioc_remainder")
    shown, order = s.out[grown]
    assert (shown, order.filled) == (2, 2)
    best_ask, order = s.out[shrunk]
    assert (best_ask, order.filled) == (None, 0)
    shown, order = s.out[last]
    assert (shown, order.filled) == (2, 2)
    assert [e.size for e in result.executions] == [3, 2, 2]


def test_a_recorded_trade_takes_its_size_off_the_level_before_the_strategy_sees_it():
    # The book event recording the level's new size follows the trade; the trade's hook must not see (or take)
    # the liquidity the trade itself took.
    h = History()
    h.book("NO", "0.40", 5)
    printed = h.trade("0.60", 3, "YES")
    h.book("NO", "0.40", 2)
    result, s = run(h, {printed: lambda ctx: (ctx.ask_size, ctx.buy("YES", "0.60", 5, time_in_force="IOC"))})
    shown, order = s.out[printed]
    assert (shown, order.filled) == (2, 2)
    assert [e.size for e in result.executions] == [2]


def test_post_only_refuses_an_order_that_would_cross_the_book_or_its_own_order():
    h = History()
    h.book("NO", "0.40", 3)  # YES ask 0.60
    go = h.reference("0.50")
    result, s = run(
        h,
        {
            go: lambda ctx: [
                _outcome(lambda: ctx.buy("YES", "0.60", 1, post_only=True)),
                _outcome(lambda: ctx.buy("YES", "0.59", 1, post_only=True)).status,
                _outcome(lambda: ctx.sell("NO", "0.40", 1, post_only=True)),  # refused before its holding is
                _outcome(lambda: ctx.buy("NO", "0.41", 1, post_only=True)),  # YES ask 0.59: crosses its own bid
                ctx.cash,
            ]
        },
    )
    crossing, rested, sell, own, cash = s.out[go]
    assert isinstance(crossing, PostOnlyWouldCross)
    assert rested == "open"
    assert isinstance(sell, PostOnlyWouldCross)  # a SELL NO at 0.40 bids YES 0.60: crosses too
    assert isinstance(own, PostOnlyWouldCross)
    assert cash == D("1000") - D("0.59")
    assert result.executions == []


def _outcome(call):
    try:
        return call()
    except MoltStreetError as exc:
        return exc


def test_ioc_cancels_what_does_not_fill_at_once_and_releases_its_reserve():
    h = History()
    h.book("NO", "0.40", 3)
    go = h.reference("0.60")
    result, s = run(h, {go: lambda ctx: (ctx.buy("YES", "0.61", 5, time_in_force="IOC"), ctx.orders, ctx.cash)})
    order, resting, cash = s.out[go]
    assert (order.filled, order.status, order.cancel_reason) == (3, "cancelled", "ioc_remainder")
    assert resting == []
    assert cash == D("1000") - D("1.80")
    assert result.final_equity == D("1000") - D("1.80") + 3 * D("0.60")  # marked at the reference


def test_fok_fills_wholly_at_once_or_not_at_all():
    h = History()
    h.book("NO", "0.40", 3)
    h.book("NO", "0.39", 1)
    go = h.reference("0.60")
    result, s = run(
        h,
        {
            go: lambda ctx: (
                ctx.buy("YES", "0.61", 5, time_in_force="FOK"),
                ctx.cash,
                ctx.buy("YES", "0.61", 4, time_in_force="FOK"),
            )
        },
    )
    unfilled, cash, whole = s.out[go]
    assert (unfilled.filled, unfilled.status, unfilled.cancel_reason) == (0, "cancelled", "fok_unfilled")
    assert cash == D("1000")
    assert (whole.filled, whole.status) == (4, "filled")
    assert fills(result) == [
        ("YES", "BUY", D("0.60"), 3, "taker", D("-1.80")),
        ("YES", "BUY", D("0.61"), 1, "taker", D("-0.61")),
    ]


def test_an_order_that_would_cross_its_own_resting_order_cancels_that_order_first():
    h = History()
    go = h.reference("0.50")
    h.trade("0.58", 5, "NO")  # would print through the cancelled NO bid's YES ask 0.55, were it resting
    result, s = run(h, {go: lambda ctx: (ctx.buy("NO", "0.45", 5), ctx.buy("YES", "0.56", 2), list(ctx.orders))})
    own, crossing, resting = s.out[go]
    assert (own.status, own.cancel_reason) == ("cancelled", "self_trade")
    assert (crossing.status, crossing.filled) == ("open", 0)
    assert [o.id for o in resting] == [crossing.id]
    assert result.executions == []  # 0.58 is above the YES bid at 0.56: nothing prints through it


def test_it_refuses_an_order_beyond_the_available_cash_or_the_contracts_held():
    h = History()
    go = h.reference("0.50")
    result, s = run(
        h,
        {
            go: lambda ctx: [
                _outcome(lambda: ctx.buy("YES", "0.50", 21)),  # 10.50 > 10.00
                ctx.buy("YES", "0.50", 20).status,  # reserves all 10.00
                _outcome(lambda: ctx.buy("NO", "0.01", 1)),
                _outcome(lambda: ctx.sell("YES", "0.50", 1)),
                ctx.cash,
            ]
        },
        cash="10.00",
    )
    beyond, rested, nothing_left, unheld, cash = s.out[go]
    assert isinstance(beyond, InsufficientBalance)
    assert rested == "open"
    assert isinstance(nothing_left, InsufficientBalance)
    assert isinstance(unheld, InsufficientPosition)
    assert cash == D("0.00")
    assert result.final_equity == D("10.00")


def test_a_refusal_raised_out_of_a_hook_is_counted_not_fatal():
    h = History()
    h.reference("0.50")
    h.reference("0.51")

    class Greedy(Strategy):
        def on_reference(self, ctx, price):
            ctx.buy("YES", "0.50", 10_000 if price == D("0.50") else 1)  # 5,000.00: beyond its cash

    result = run_backtest(Greedy(), h.history())
    assert result.refusals == {"insufficient_balance": 1}
    assert result.executions == []
    assert result.final_equity == D("1000")  # the second order rests: reserved, not spent


def test_yes_and_no_held_are_netted_into_one_credit_a_pair():
    h = History()
    h.book("NO", "0.40", 5)  # YES ask 0.60
    h.book("YES", "0.55", 3)  # NO ask 0.45
    go = h.reference("0.58")
    result, s = run(
        h,
        {
            go: lambda ctx: (
                ctx.buy("YES", "0.60", 5, time_in_force="IOC"),
                ctx.buy("NO", "0.45", 3, time_in_force="IOC"),
                ctx.yes_shares,
                ctx.no_shares,
            )
        },
    )
    *_, yes, no = s.out[go]
    assert (yes, no) == (2, 0)
    assert fills(result) == [
        ("YES", "BUY", D("0.60"), 5, "taker", D("-3.00")),
        ("NO", "BUY", D("0.45"), 3, "taker", D("-1.35")),
        ("PAIR", "MERGE", D("1"), 3, "netting", D("3")),
    ]
    assert result.metrics["trades"] == 2  # netting is not a trade
    assert result.positions == {"m1": (2, 0)}
    assert result.marked == {"m1": D("1.16")}  # 2 x the reference 0.58
    assert result.pnl == D("-3.00") - D("1.35") + D("3") + D("1.16")
    assert identity_holds(result)


def test_void_pays_half_a_credit_a_contract_and_win_rate_counts_markets_with_positive_pnl():
    void, no = History("m1"), History("m2")
    for h in (void, no):
        h.book("NO", "0.40", 4)  # YES ask 0.60
        h.book("YES", "0.30", 6)  # NO ask 0.70
    buy_yes = void.reference("0.60", at=T0 + timedelta(minutes=10))
    buy_no = no.reference("0.30", at=T0 + timedelta(minutes=11))
    for h in (void, no):
        h.close(at=T0 + timedelta(minutes=20))
    void.resolve("VOID", at=T0 + timedelta(minutes=30))
    no.resolve("NO", at=T0 + timedelta(minutes=30))
    ioc = {"time_in_force": "IOC"}
    result, s = run(
        [void, no],
        {buy_yes: lambda ctx: ctx.buy("YES", "0.60", 4, **ioc), buy_no: lambda ctx: ctx.buy("NO", "0.70", 6, **ioc)},
    )
    assert (s.out[buy_yes].filled, s.out[buy_no].filled) == (4, 6)
    assert result.payouts == {"m1": D("2.00"), "m2": D("6.00")}  # VOID: 4 x 0.50; NO: 6 x 1.00
    assert result.pnl_by_market() == {"m1": D("2.00") - D("2.40"), "m2": D("6.00") - D("4.20")}
    assert result.metrics["win_rate"] == D("0.5000")
    assert result.pnl == D("1.40")
    assert result.final_equity == D("1001.40")
    assert identity_holds(result)


def test_closing_cancels_resting_orders_and_refuses_new_ones():
    h = History()
    go = h.reference("0.50")
    closed = h.close()
    h.trade("0.30", 5, "NO")  # would print through the bid, had it not been cancelled
    result, s = run(
        h, {go: lambda ctx: ctx.buy("YES", "0.50", 5), closed: lambda ctx: (ctx.cash, ctx.buy("YES", "0.50", 1))}
    )
    order = s.out[go]
    assert (order.status, order.cancel_reason) == ("cancelled", "market_closed")
    assert isinstance(s.out[closed], MarketClosed)
    assert result.executions == []
    assert result.final_equity == D("1000")


def test_the_deadline_closes_the_market_on_the_simulated_clock():
    h = History(deadline=T0 + timedelta(minutes=5))
    go = h.reference("0.50")
    after = h.reference("0.51", at=T0 + timedelta(minutes=6))
    result, s = run(h, {go: lambda ctx: ctx.buy("YES", "0.50", 5), after: lambda ctx: ctx.buy("YES", "0.50", 1)})
    assert (s.out[go].status, s.out[go].cancel_reason) == ("cancelled", "market_closed")
    assert isinstance(s.out[after], MarketClosed)
    assert result.closed_at == {"m1": T0 + timedelta(minutes=6)}


def test_a_gtd_order_expires_on_the_simulated_clock():
    h = History()
    go = h.reference("0.50")
    h.trade("0.49", 1, "NO")  # before expiry: fills 1
    h.trade("0.48", 1, "NO", at=T0 + timedelta(minutes=10))  # after expiry: nothing
    expires = T0 + timedelta(minutes=5)
    result, s = run(h, {go: lambda ctx: ctx.buy("YES", "0.50", 5, time_in_force="GTD", expires_at=expires)})
    order = s.out[go]
    assert (order.filled, order.status) == (1, "expired")
    assert [e.size for e in result.executions] == [1]


# --------------------------------------------------------------------------------------------------------------------
# The market maker


def test_the_market_maker_keeps_a_resting_quote_the_recorded_book_crosses_and_fills_on_the_print_through_it():
    """Its post-only bid rests a tick below the last trade; a recorded seller offers below it (live, that order would
    have traded with the bid) and a buyer lifts that offer: the print is through the bid, which fills at its price.
    Moving the bid away on the book event (as quoting 'never crossing the book' did) made it never fill."""
    h = History()
    h.book("YES", "0.49", 10)
    h.book("NO", "0.49", 10)  # YES ask 0.51
    h.trade("0.50", 1, "YES")  # the last price: it quotes 0.49 / 0.51 (half_spread 0.01)
    h.book("NO", "0.52", 4)  # a YES ask at 0.48 appears, below its bid
    h.trade("0.48", 4, "YES")  # lifted: through its bid at 0.49
    h.book("NO", "0.52", 0)
    result = run_backtest(MarketMaker(half_spread="0.01", skew="0"), h.history())
    assert [(e.side, e.action, e.price, e.size, e.reason) for e in result.executions] == [
        ("YES", "BUY", D("0.49"), 4, "maker")
    ]
    assert result.refusals == {}
    assert identity_holds(result)


def test_the_market_maker_quotes_post_only_without_crossing_the_book():
    h = History()
    h.book("YES", "0.49", 10)
    h.book("NO", "0.50", 10)  # YES ask 0.50: a one-tick book
    h.trade("0.52", 1, "YES")  # the last price 0.52: a bid at 0.51 would cross the ask
    seen: list = []

    class Watched(MarketMaker):
        def on_trade(self, ctx, trade):
            super().on_trade(ctx, trade)
            seen.append(sorted((o.side, o.action, o.price, o.post_only) for o in ctx.orders))

    result = run_backtest(Watched(half_spread="0.01", skew="0"), h.history())
    assert result.refusals == {}
    # The bid a tick under the ask (0.49, not 0.51); the ask a tick over the last price: a NO bid at 1 - 0.53.
    assert seen == [[("NO", "BUY", D("0.47"), True), ("YES", "BUY", D("0.49"), True)]]
    # The print at 0.52 went through the ask it had rested at 0.51 before there was a book (a NO bid at 0.49).
    assert [(e.side, e.action, e.price, e.size, e.reason) for e in result.executions] == [
        ("NO", "BUY", D("0.49"), 1, "maker")
    ]


# --------------------------------------------------------------------------------------------------------------------
# Every built-in: the P&L identity and determinism


def synthetic_history(trades: int = 2000, seed: int = 5, market: str = "synthetic") -> MarketHistory:
    """A market whose YES price walks by one to three ticks: before each trade a recorded order rests at the trade's
    price and is taken by the trade; a source snapshot every 20 trades; closed and resolved YES at the end."""
    rng = random.Random(seed)
    h = History(market)
    price = 50
    for i in range(trades):
        price = max(5, min(95, price + rng.choice((1, 2, 3)) * rng.choice((-1, 1))))
        size = rng.randint(1, 10)
        text = f"0.{price:02d}"
        if rng.random() < 0.5:  # a buyer lifts an offer: a NO bid at 1 - price
            no = f"0.{100 - price:02d}"
            h.book("NO", no, size, at=h.now + timedelta(seconds=20))
            h.trade(text, size, "YES", at=h.now + timedelta(seconds=10))
            h.book("NO", no, 0, at=h.now)
        else:
            h.book("YES", text, size, at=h.now + timedelta(seconds=20))
            h.trade(text, size, "NO", at=h.now + timedelta(seconds=10))
            h.book("YES", text, 0, at=h.now)
        if i % 20 == 0:
            h.reference(f"0.{max(1, min(99, price + rng.choice((-4, 4)))):02d}", at=h.now + timedelta(seconds=5))
    h.close(at=h.now + timedelta(minutes=1))
    h.resolve("YES", at=h.now + timedelta(minutes=1))
    return h.history()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_built_in_keeps_the_pnl_identity_to_the_cent_and_trades(name):
    strategy = BUILTINS[name](**({"interval": 60.0} if name == "noise" else {}))
    result = run_backtest(strategy, synthetic_history())
    assert result.metrics["trades"] > 0
    assert metrics.pnl_identity_gap(result) == 0
    assert identity_holds(result)
    assert result.outcomes == {"synthetic": "YES"}
    assert result.metrics["pnl"] == result.final_equity - result.cash


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_built_in_gives_the_same_result_twice(name):
    params = {"interval": 60.0} if name == "noise" else {}
    first = run_backtest(BUILTINS[name](**params), synthetic_history(500))
    again = run_backtest(BUILTINS[name](**params), synthetic_history(500))
    assert first.as_dict() == again.as_dict()
    assert first.metrics == again.metrics


# --------------------------------------------------------------------------------------------------------------------
# Real recorded trades


NO_CHANGE = "Will there be no change in Fed interest rates after the March 2026 meeting?"
FIRST, ROWS = 600, 160  # its price first moves at the 628th execution (0.97 before it)
SNAPSHOT_EVERY = 40
STEP = timedelta(minutes=10)


@pytest.fixture
def polymarket_history(db) -> MarketHistory:
    """``ROWS`` real executions of one of the file's markets (its YES price 0.97-0.98), from the ``FIRST``-th,
    replayed through the exchange's services (trading/replay.py), with a snapshot of a source that disagrees (0.95,
    then a cent lower each time) after every ``SNAPSHOT_EVERY`` rows, then closed and resolved YES; read back through
    ``GET /markets/{id}/events/`` in pages.

    The replay runs in a few seconds of wall time; the recorded events are then spread ``STEP`` apart (about the
    real pace of this market: 1,791 trades in three days), so that the clock-driven strategies have turns in between.
    """
    from django.utils import timezone

    from markets.models import MarketEvent
    from markets.services import snapshot_record
    from testsupport.api import api_client, operator_resolver, walk_pages
    from trading import replay
    from trading.lifecycle import market_close
    from trading.resolution import market_resolve

    if not DATA.exists():
        pytest.fail(f"the recorded trades are missing: {DATA}")
    rows, malformed = replay.read_trades(DATA)
    assert not malformed
    mine = [row for row in rows if row.question == NO_CHANGE][FIRST : FIRST + ROWS]
    ids, _ = replay.ensure_markets_local(mine, scale=replay.DEFAULT_SCALE)
    market_id = ids[NO_CHANGE]
    exchange = replay.LocalExchange()
    for chunk in range(0, ROWS, SNAPSHOT_EVERY):
        report = replay.replay(mine[chunk : chunk + SNAPSHOT_EVERY], exchange, market_ids=ids)
        assert report.replayed > 0 and not report.failed, report.render()
        reference = D("0.95") - D("0.01") * (chunk // SNAPSHOT_EVERY)  # 2 to 6 cents below the market
        values = {"yes_price": reference, "yes_bid": None, "yes_ask": None, "volume": None, "status": "open"}
        snapshot_record(market_id=market_id, source="polymarket", values=values, taken_at=timezone.now())
    market_close(market_id=market_id)
    market_resolve(market_id=market_id, outcome="YES", resolver=operator_resolver())
    events = list(MarketEvent.objects.filter(market_id=market_id).order_by("seq"))
    start = events[0].created_at
    for i, event in enumerate(events):
        event.created_at = start + i * STEP
    MarketEvent.objects.bulk_update(events, ["created_at"])

    market = api_client().get(f"/api/v1/markets/{market_id}/").json()
    results, pages = walk_pages(api_client(), f"/api/v1/markets/{market_id}/events/?page_size=200")
    assert pages > 1
    return MarketHistory(market["id"], market["question"], market["deadline"], results)


# Parameters for a market whose price only ever moves one tick (0.97 <-> 0.98): momentum on a one-tick move, its
# bid on an empty book resting two hours; the leaner a tick from a source 2-6 cents below the market; the noise
# trader a turn every 5 minutes (events are 10 minutes apart, so turns fall between an offer being recorded and the
# trade that takes it).
REAL_PARAMS = {
    "market_maker": {"half_spread": "0.01"},
    "momentum": {"lookback": 1, "threshold": "0.01", "rest_seconds": 7200.0},
    "reference_leaner": {"edge": "0.01"},
    "noise": {"interval": 300.0, "seed": 3},
}


def test_every_built_in_on_the_replayed_polymarket_trades_keeps_the_pnl_identity(polymarket_history):
    history = polymarket_history
    assert history.trades >= ROWS * 0.9  # trimmed or unaffordable rows aside
    assert history.snapshots == ROWS // SNAPSHOT_EVERY
    prices = {D(e["trade"]["price"]) for e in history.events if e["type"] == "trade"}
    assert prices == {D("0.97"), D("0.98")}

    results = {name: run_backtest(BUILTINS[name](**REAL_PARAMS[name]), history) for name in sorted(BUILTINS)}
    for name, result in results.items():
        assert metrics.pnl_identity_gap(result) == 0, name
        assert identity_holds(result), name
        assert result.outcomes == {history.market: "YES"}, name
        assert not result.marked, name  # resolved: everything was paid out
        assert result.as_dict() == run_backtest(BUILTINS[name](**REAL_PARAMS[name]), history).as_dict(), name

    # Where each should trade: momentum rests a bid at the last price after an up-tick, and the next down-tick
    # prints through it; the leaner offers YES a tick above a source 2-6 cents below the market, which prints above;
    # the noise trader takes offers while they are shown.
    for name in ("momentum", "reference_leaner", "noise"):
        assert results[name].metrics["trades"] >= 1, name
    leaner = results["reference_leaner"]
    assert {(e.side, e.action) for e in leaner.executions if e.reason != "netting"} == {("NO", "BUY")}
    assert leaner.metrics["brier"] is not None  # it stated the source's price as its forecast
    noise_reasons = {e.reason for e in results["noise"].executions}
    assert "taker" in noise_reasons
    # The market maker quotes a tick either side of the last trade. Before the first trade it knows no price and
    # quotes around 0.50: the first print (0.97 or 0.98) goes through its ask at 0.51, which fills. After that, in a
    # market that only prints two adjacent prices, no print is ever strictly through a quote a tick away (the
    # queue at the print's own price is unknown), so it fills nothing more: anything else would be a fill the
    # recorded market did not give.
    maker = results["market_maker"]
    first_print = next(e for e in history.events if e["type"] == "trade")
    assert [(e.side, e.action, e.price, e.reason) for e in maker.executions] == [("NO", "BUY", D("0.49"), "maker")]
    assert _iso(maker.executions[0].time) == first_print["created_at"]
    assert maker.refusals == {}
