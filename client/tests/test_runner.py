"""The live runner against a live server: a strategy places and cancels through its context, its fills reach
``on_fill`` (taking at once, resting from the private feed), refusals are counted as in a backtest, several orders
go in batch requests, the dead-man's switch is kept armed while it runs, and stopping withdraws what rests."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from moltstreet_client import (
    Execution,
    InsufficientBalance,
    InvalidRequest,
    LiveRunner,
    MoltStreetError,
    NotFound,
    Strategy,
    run_live,
)
from moltstreet_client.strategies import MarketMaker

pytestmark = pytest.mark.multiprocess

D = Decimal
STEP = 20.0  # seconds any one step may take


class Recorder(Strategy):
    """A tiny strategy: on start it takes the best ask for 2 contracts (IOC), rests a bid for 5 at 0.40, places and
    cancels a bid at 0.10, and tries an order beyond its cash; it records every hook."""

    name = "recorder"

    def __init__(self, **params):
        super().__init__(**params)
        self.calls: list[str] = []
        self.fills: list[Execution] = []
        self.refused: list[type] = []
        self.cancelled: list[bool] = []
        self.started = threading.Event()
        self.maker_filled = threading.Event()
        self.printed = threading.Event()
        self.shares_at_fill: list[int] = []
        self.ended_with: dict = {}

    def on_start(self, ctx):
        self.calls.append("start")
        taken = ctx.buy("YES", ctx.best_ask, 2, time_in_force="IOC")
        assert (taken.filled, taken.status) == (2, "filled")
        self.bid = ctx.buy("YES", "0.40", 5)
        low = ctx.buy("YES", "0.10", 1)
        self.cancelled.append(ctx.cancel(low))
        self.cancelled.append(ctx.cancel(low.id))  # no longer resting
        try:
            ctx.buy("YES", "0.50", 100_000)
        except InsufficientBalance as exc:
            self.refused.append(type(exc))
        self.orders_at_start = [(o.side, o.action, o.price, o.remaining) for o in ctx.orders]
        self.started.set()
        ctx.buy("YES", "0.50", 50_000)  # refused again, out of the hook this time: counted by the runner

    def on_book(self, ctx):
        self.calls.append("book")

    def on_trade(self, ctx, trade):
        self.calls.append(f"trade {trade.price} {trade.size}")
        if trade.price == D("0.40"):
            self.printed.set()

    def on_fill(self, ctx, fill):
        self.calls.append(f"fill {fill.reason}")
        self.fills.append(fill)
        self.shares_at_fill.append(ctx.yes_shares)
        if fill.reason == "maker":
            self.maker_filled.set()

    def on_end(self, ctx):
        self.calls.append("end")
        self.ended_with = {"yes": ctx.yes_shares, "orders": len(ctx.orders)}


def _record_requests(client) -> list[tuple[str, str, dict | None]]:
    """Every request ``client`` sends from now on, as ``(method, path, JSON body or None)``."""
    sent: list[tuple[str, str, dict | None]] = []

    def record(request):
        body = json.loads(request.content) if request.content else None
        sent.append((request.method, request.url.path, body))

    client._http.event_hooks = {"request": [record], "response": []}
    return sent


def _routes(sent) -> list[str]:
    """The requests as ``METHOD /path/``, order ids replaced by ``{id}``."""
    routes = []
    for method, path, _body in sent:
        parts = path.rstrip("/").split("/")
        if len(parts) == 5 and parts[3] == "orders" and len(parts[4]) == 36:
            parts[4] = "{id}"
        routes.append(f"{method} {'/'.join(parts)}/")
    return routes


def _run_in_thread(runner: LiveRunner, **options):
    box: dict = {}

    def target():
        try:
            box["result"] = runner.run(**options)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_a_strategy_places_cancels_and_gets_its_fills_live(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(bob)
    bob.place_order(market.id, "NO", "BUY", "0.55", 2)  # a YES ask at 0.45 for alice to take

    strategy = Recorder()
    runner = LiveRunner(strategy, alice, [market.id])
    thread, box = _run_in_thread(runner)
    assert strategy.started.wait(STEP), box
    # Bob sells YES into alice's resting bid (a NO bid at 0.60 crosses a YES bid at 0.40): a maker fill for her.
    bob.place_order(market.id, "NO", "BUY", "0.60", 3)
    # The fill comes by the private feed, the trade by the market's: in either order.
    assert strategy.maker_filled.wait(STEP) and strategy.printed.wait(STEP), strategy.calls
    runner.stop()
    thread.join(STEP)
    assert not thread.is_alive() and "error" not in box, box
    result = box["result"]

    taker, maker = strategy.fills
    assert (taker.reason, taker.side, taker.action, taker.price, taker.size, taker.cash) == (
        "taker",
        "YES",
        "BUY",
        D("0.45"),
        2,
        D("-0.90"),
    )
    assert (maker.reason, maker.price, maker.size, maker.cash, maker.order) == (
        "maker",
        D("0.40"),
        3,
        D("-1.20"),
        strategy.bid.id,
    )
    assert strategy.shares_at_fill == [2, 5], "the holding is updated before on_fill"
    assert strategy.calls.index("fill taker") == 1, "the taking fill comes right after the hook that placed it"
    assert "trade 0.40 3" in strategy.calls and "book" in strategy.calls
    assert strategy.calls[-1] == "end" and strategy.ended_with == {"yes": 5, "orders": 1}
    assert strategy.cancelled == [True, False]
    assert strategy.refused == [InsufficientBalance]
    assert strategy.orders_at_start == [("YES", "BUY", D("0.40"), 5)]

    assert result.refusals == {"insufficient_balance": 1}
    assert result.withdrawn is True
    assert (result.trades, result.contracts, result.cash_flows) == (2, 5, D("-2.10"))
    assert result.orders == 3 and result.cancels == 2  # the 0.10 bid, then the rest of the 0.40 bid on the way out
    assert list(alice.orders(market=market.id, status="resting")) == []
    [position] = alice.positions(market=market.id)
    assert (position.yes_shares, position.no_shares) == (5, 0)
    assert alice.me().balance == D("1000.00") - D("2.10")


class Netter(Strategy):
    """Holds NO, then buys YES: the exchange nets the pairs, and the runner delivers that netting."""

    def __init__(self, **params):
        super().__init__(**params)
        self.fills: list[Execution] = []
        self.done = threading.Event()

    def on_start(self, ctx):
        ctx.buy("YES", ctx.best_ask, 3, time_in_force="IOC")

    def on_fill(self, ctx, fill):
        self.fills.append(fill)
        if fill.reason == "netting":
            self.cash_after = ctx.cash
            self.holding_after = (ctx.yes_shares, ctx.no_shares)
            self.done.set()


def test_netting_reaches_on_fill_as_the_exchange_did_it(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(bob)
    bob.place_order(market.id, "YES", "BUY", "0.50", 4)
    alice.place_order(market.id, "NO", "BUY", "0.50", 4)  # alice holds 4 NO
    bob.place_order(market.id, "NO", "BUY", "0.70", 3)  # a YES ask at 0.30

    strategy = Netter()
    result = run_live(strategy, alice, market.id, duration=3, handle_signals=False)
    kinds = [(f.reason, f.side, f.size) for f in strategy.fills]
    assert kinds == [("taker", "YES", 3), ("netting", "PAIR", 3)]
    assert strategy.holding_after == (0, 1)
    [position] = alice.positions(market=market.id)
    assert (position.yes_shares, position.no_shares) == (0, 1), "the runner's holding is the exchange's"
    assert strategy.cash_after == alice.me().available_balance
    assert result.cash_flows == D("-0.90") + D("3")


def test_the_built_in_market_maker_quotes_live_and_withdraws_on_stop(make_client, market_of):
    maker, taker, other = make_client(), make_client(), make_client()
    market = market_of(taker)
    taker.place_order(market.id, "YES", "BUY", "0.50", 1)
    other.place_order(market.id, "NO", "BUY", "0.50", 1)  # a trade at 0.50: the fair value

    strategy = MarketMaker(half_spread="0.03", size=4)
    sent = _record_requests(maker)
    runner = LiveRunner(strategy, maker, [market.id], heartbeat_seconds=5)
    thread, box = _run_in_thread(runner)
    quotes = []
    for _ in range(100):
        quotes = sorted((o.side, o.action, o.price) for o in maker.orders(market=market.id, status="resting"))
        if len(quotes) == 2:
            break
        threading.Event().wait(0.1)
    assert quotes == [("NO", "BUY", D("0.47")), ("YES", "BUY", D("0.47"))]  # a YES bid 0.47, a YES ask 0.53
    taker.place_order(market.id, "NO", "BUY", "0.53", 4)  # sells YES to the bid: the maker is long 4
    for _ in range(100):
        quotes = sorted((o.side, o.action, o.price) for o in maker.orders(market=market.id, status="resting"))
        if ("YES", "SELL") in {(s, a) for s, a, _ in quotes}:
            break
        threading.Event().wait(0.1)
    runner.stop()
    thread.join(STEP)
    assert "error" not in box, box
    assert ("YES", "SELL") in {(s, a) for s, a, _ in quotes}, "long YES, it offers what it holds"
    assert box["result"].withdrawn and list(maker.orders(market=market.id, status="resting")) == []

    # Its quotes went in batches: one request for the new quotes of a requote, one for the quotes it withdrew.
    routes = _routes(sent)
    assert "POST /api/v1/orders/" not in routes and "DELETE /api/v1/orders/{id}/" not in routes, routes
    batches = [body["orders"] for method, path, body in sent if path == "/api/v1/orders/batch/"]
    assert [len(orders) for orders in batches[:1]] == [2], "both first quotes in one request"
    assert all(order["post_only"] for orders in batches for order in orders)
    assert routes.count("POST /api/v1/orders/batch-cancel/") >= 1, "the requote after the fill moved a quote"
    # The switch: armed before anything was placed, disarmed after the quotes were withdrawn, on the way out.
    beats = [body["timeout_seconds"] for method, path, body in sent if path == "/api/v1/agents/me/heartbeat/"]
    assert beats[0] == 5 and beats[-1] == 0 and set(beats[:-1]) == {5}, beats
    writes = [route for route in routes if not route.startswith("GET ")]  # the test reads with this client too
    assert writes.index("POST /api/v1/agents/me/heartbeat/") < writes.index("POST /api/v1/orders/batch/")
    assert writes[-2:] == ["POST /api/v1/orders/cancel-all/", "POST /api/v1/agents/me/heartbeat/"], writes
    assert box["result"].heartbeats == len(beats) - 1


class Batcher(Strategy):
    """On start: places 23 bids in one call (one with a bad price, one beyond its cash), cancels the 21 that rest in
    one call (one id twice), then tries a batch that is refused whole, out of the hook."""

    def __init__(self, **params):
        super().__init__(**params)
        self.done = threading.Event()

    def on_start(self, ctx):
        wanted = [("YES", "BUY", D(n) / 100, 1) for n in range(1, 24)]
        wanted[5] = ("YES", "BUY", "0.555", 1)  # off the tick: refused without being sent
        wanted[21] = ("YES", "BUY", "0.22", 100_000)  # beyond its cash: refused by the exchange
        try:
            ctx.place_orders(wanted, post_only=True)
        except MoltStreetError as exc:
            self.raised = exc
        self.resting = [(o.price, o.size) for o in ctx.orders]
        ids = [o.id for o in ctx.orders]
        self.cancelled = ctx.cancel_orders([*ids, ids[0]])
        self.left = list(ctx.orders)
        self.done.set()
        ctx.place_orders([("YES", "BUY", "0.50", 50_000)])  # refused, out of the hook: counted by the runner


def test_several_orders_go_in_batches_of_twenty_and_each_refusal_is_handled_on_its_own(make_client, market_of):
    alice = make_client()
    market = market_of(alice)
    strategy = Batcher()
    sent = _record_requests(alice)
    runner = LiveRunner(strategy, alice, [market.id])
    thread, box = _run_in_thread(runner)
    assert strategy.done.wait(STEP), box
    runner.stop()
    thread.join(STEP)
    assert "error" not in box, box
    result = box["result"]

    placed = [(D(n) / 100, 1) for n in range(1, 24) if n not in (6, 22)]
    assert strategy.resting == placed, "every entry but the two refused, in the order given"
    assert isinstance(strategy.raised, InvalidRequest), "the first refusal in the order given is raised"
    assert strategy.cancelled == [True] * 21 + [False] and strategy.left == []
    batches = [len(body["orders"]) for method, path, body in sent if path == "/api/v1/orders/batch/"]
    assert batches == [20, 2, 1], "22 sent (the bad price was not), 20 a request"
    cancels = [len(body["ids"]) for method, path, body in sent if path == "/api/v1/orders/batch-cancel/"]
    assert cancels == [20, 2]
    assert "POST /api/v1/orders/" not in _routes(sent)
    # The refusal it caught is its own business; the one in the batch and the one out of the hook are counted.
    assert result.refusals == {"insufficient_balance": 2}
    assert (result.orders, result.cancels) == (21, 21)
    assert result.heartbeats == 0 and "/api/v1/agents/me/heartbeat/" not in {path for _m, path, _b in sent}
    assert result.withdrawn is True and list(alice.orders(market=market.id, status="resting")) == []
    assert alice.me().available_balance == alice.me().balance


def test_a_heartbeat_outside_the_servers_range_is_refused_before_anything_runs(make_client):
    for seconds in (0, 4, 301, 30.0, True):
        with pytest.raises(ValueError, match="heartbeat_seconds"):
            LiveRunner(Recorder(), make_client(), ["m"], heartbeat_seconds=seconds)


def test_an_unknown_market_is_refused_before_anything_runs(make_client):
    client = make_client()
    strategy = Recorder()
    with pytest.raises(NotFound):
        run_live(strategy, client, "00000000-0000-0000-0000-000000000000", duration=1, handle_signals=False)
    assert strategy.calls == []


def test_a_client_without_a_key_cannot_run_live(make_client):
    with pytest.raises(ValueError, match="API key"):
        run_live(Recorder(), make_client(register=False), "x", duration=1, handle_signals=False)


def test_shared_feeds_give_a_late_subscriber_the_snapshot_and_every_message_since(make_client, market_of):
    from moltstreet_client.runner import MarketFeeds

    trader = make_client()
    market = market_of(trader)
    feeds = MarketFeeds(trader)
    early, late = [], []
    try:
        first = feeds.subscribe(market.id, early.append)
        trader.place_order(market.id, "YES", "BUY", "0.30", 1)
        end = trader.market(market.id).seq
        for _ in range(200):
            if early and early[-1]["seq"] >= end:
                break
            threading.Event().wait(0.05)
        again = feeds.subscribe(market.id, late.append)
        assert again is first and first["type"] == "snapshot"
        assert late == early and [m["seq"] for m in early] == list(range(first["seq"] + 1, end + 1))
        feeds.unsubscribe(market.id, early.append)
        trader.place_order(market.id, "YES", "BUY", "0.31", 1)
        for _ in range(200):
            if late[-1]["seq"] >= end + 1:
                break
            threading.Event().wait(0.05)
        assert late[-1]["seq"] == end + 1 and early[-1]["seq"] == end, "unsubscribed: no more messages"
    finally:
        feeds.close()
