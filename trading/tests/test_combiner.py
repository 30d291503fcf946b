"""Group commit of single orders per market (``trading.combiner``, issue 17) on PostgreSQL with real threads.

Orders of one market queued while its previous batch runs are placed in one transaction; each request still gets
exactly what :func:`~trading.orders.order_place` would have given it at its place in the arrival order (DESIGN
sections 3 and 6): its own result or error, priority by arrival, idempotency by ``client_order_id``, exact money.
How many transactions placed a market's orders is read from PostgreSQL itself: the rows one transaction inserts
share their ``xmin``, and a market's event rows are only ever inserted.

The deterministic tests hold the first batch inside its transaction (``Gate``) while the others arrive one by one,
so the arrival order is known and every later order lands in one second batch. The SIGKILL test runs the fault
test of moltstreet/tests/test_faults.py against a daphne with combining on.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections
from django.test import override_settings

from markets.models import Market, MarketEvent
from moltstreet.errors import InsufficientBalance, MoltStreetError
from testsupport.api import api_client
from trading import combiner, order_batch
from trading.models import Order, Trade
from trading.orders import PlaceResult, order_place
from trading.tests.factories import new_agent, new_market
from trading.tests.test_concurrency import run_threads
from trading.tests.test_order_tools_concurrency import books_problems

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

STEP = 30.0  # seconds any wait may take before the test fails


def transactions_of(market: Market, after_seq: int = 0) -> int:
    """How many transactions wrote the market's events after ``after_seq`` (distinct ``xmin`` of its rows)."""
    table = MarketEvent._meta.db_table  # the model's own table name, not input
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(DISTINCT xmin::text) FROM {table} WHERE market_id = %s AND seq > %s",  # noqa: S608
            [market.id, after_seq],
        )
        return cursor.fetchone()[0]


def last_seq(market: Market) -> int:
    return MarketEvent.objects.filter(market=market).order_by("-seq").values_list("seq", flat=True).first() or 0


class ArrivalDeque(deque):
    """A market queue's ``waiting`` that tells the test each time an order has queued."""

    arrived = threading.Condition()
    arrivals = 0

    def append(self, item: Any) -> None:
        super().append(item)
        with ArrivalDeque.arrived:
            ArrivalDeque.arrivals += 1
            ArrivalDeque.arrived.notify_all()


@dataclass
class CountingQueue(combiner._Queue):
    waiting: deque = field(default_factory=ArrivalDeque)


class Gate:
    """Holds the first batch of the test inside its transaction (the market locked) until :meth:`open`."""

    def __init__(self, monkeypatch) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0
        original = order_batch._place_in_market

        def gated(**kwargs):
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                assert self.released.wait(STEP), "the gate was never opened"
            return original(**kwargs)

        monkeypatch.setattr(order_batch, "_place_in_market", gated)
        monkeypatch.setattr(combiner, "_Queue", CountingQueue)
        ArrivalDeque.arrivals = 0

    def open(self) -> None:
        self.released.set()


def wait_arrivals(count: int) -> None:
    with ArrivalDeque.arrived:
        assert ArrivalDeque.arrived.wait_for(lambda: ArrivalDeque.arrivals >= count, timeout=STEP), "orders not queued"


def in_thread(fn, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list]:
    """Run ``fn`` in a thread of its own (its own connection); the list gets its result or the exception raised."""
    box: list = []

    def run() -> None:
        try:
            box.append(fn(*args, **kwargs))
        except Exception as exc:
            box.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def queued_behind_gate(gate: Gate, calls: list[dict[str, Any]]) -> list[Any]:
    """Place ``calls`` (``combiner.place`` keyword arguments) each in a thread of its own: the first becomes the
    leader and is held in its transaction by ``gate``, the others queue behind it in this order; then the gate opens.
    Each call's outcome (its result or the exception raised), in order."""
    started = []
    for n, call in enumerate(calls):
        started.append(in_thread(combiner.place, **call))
        if n == 0:
            assert gate.entered.wait(STEP)  # the first order is the leader, held in its transaction
        else:
            wait_arrivals(n + 1)  # queued, in this order
    gate.open()
    for thread, _box in started:
        thread.join(STEP)
        assert not thread.is_alive()
    return [box[0] for _thread, box in started]


def outcome_view(outcome: PlaceResult | Exception) -> Any:
    """What a client can tell of an outcome, ids aside: the error code, or created, status, fills and trades."""
    if isinstance(outcome, MoltStreetError):
        return outcome.code
    if isinstance(outcome, Exception):
        raise outcome
    order = outcome.order
    return (
        outcome.created,
        order.status,
        order.filled,
        [(t.price, t.size, t.maker_agent_id == t.taker_agent_id) for t in outcome.trades],
    )


# The scenario: (agent index, side, price, size, client_order_id) in arrival order. Agent 0's resting YES bid is met
# by agents 1 and 2 in the order they arrived (agent 2's remainder rests); agent 3 cannot afford its order; agent 1
# repeats its order; agent 4 rests behind agent 2 at the same price; agent 0's second bid meets agent 2, then 4.
SCENARIO = [
    (0, "YES", "0.50", 5, "a0"),
    (1, "NO", "0.50", 3, "b1"),
    (2, "NO", "0.50", 3, "c1"),
    (3, "YES", "0.90", 5000, "d1"),  # 4500.00 > 1000.00: insufficient_balance
    (1, "NO", "0.50", 3, "b1"),  # a repeat: the original order, created False, its trades
    (4, "NO", "0.50", 2, "e1"),
    (0, "YES", "0.50", 2, "a1"),  # meets agent 2's remaining 1 first (earlier), then 1 of agent 4's
]


def test_orders_queued_behind_a_batch_are_placed_in_one_transaction_each_with_its_own_result(monkeypatch):
    """Alone, order by order, the scenario gives each order its result; combined (the first order held in its
    transaction while the others queue, one after the other), the same orders give the same results in two
    transactions, priority by arrival kept, the failing order alone failing, the repeat answered with the
    original, the books exact."""
    creator = new_agent("creator")
    alone_agents = [new_agent("alone") for _ in range(5)]
    alone_market = new_market(creator)
    alone = []
    for kwargs in [dict(zip(["i", "side", "price", "size", "c"], row, strict=True)) for row in SCENARIO]:
        try:
            alone.append(
                order_place(
                    agent=alone_agents[kwargs["i"]],
                    market_id=alone_market.id,
                    side=kwargs["side"],
                    action="BUY",
                    price=kwargs["price"],
                    size=kwargs["size"],
                    client_order_id=kwargs["c"],
                )
            )
        except MoltStreetError as exc:
            alone.append(exc)

    agents = [new_agent("combined") for _ in range(5)]
    market = new_market(creator)
    before = last_seq(market)
    gate = Gate(monkeypatch)
    combiner.reset_stats()
    calls = [
        {"agent": agents[i], "market_id": market.id, "side": side, "action": "BUY", "price": price, "size": size}
        | {"client_order_id": c}
        for i, side, price, size, c in SCENARIO
    ]
    combined = queued_behind_gate(gate, calls)

    assert [outcome_view(o) for o in combined] == [outcome_view(o) for o in alone]
    assert isinstance(combined[3], InsufficientBalance)
    assert combined[4].order.id == combined[1].order.id and not combined[4].created
    # Priority by arrival: agent 1 before agent 2, agent 2's rest before agent 4's.
    makers = list(Trade.objects.filter(market=market).order_by("seq").values_list("maker_agent_id", "taker_agent_id"))
    a0, a1, a2, _a3, a4 = (a.id for a in agents)
    assert makers == [(a0, a1), (a0, a2), (a2, a0), (a4, a0)]
    assert combiner.stats().batches == 2 and combiner.stats().orders == len(SCENARIO)
    assert transactions_of(market, before) == 2  # the first order alone, then the six queued behind it
    assert Order.objects.filter(market=market).count() == len(SCENARIO) - 2  # no order for the refusal, the repeat
    assert books_problems(agents + alone_agents + [creator]) == []


def test_an_unknown_market_fails_each_order_of_its_batch_and_the_next_batch_runs(monkeypatch):
    """A batch that fails as a whole (an unknown market) gives every order its error, and the queue goes on."""
    agent = new_agent()
    missing = "00000000-0000-4000-8000-000000000000"
    gate = Gate(monkeypatch)
    call = {"agent": agent, "market_id": missing, "side": "YES", "action": "BUY", "price": "0.5", "size": 1}
    outcomes = queued_behind_gate(gate, [call] * 3)
    assert [outcome.code for outcome in outcomes] == ["not_found"] * 3
    assert combiner._queues[missing].busy is False


def test_a_batch_failing_unexpectedly_is_placed_again_order_by_order_so_only_the_culprit_fails(monkeypatch):
    """An unexpected error in one order rolls its batch back; each order is then placed alone: the others are
    placed once, the culprit gets its error, nothing is stored twice."""
    creator = new_agent("creator")
    agents = [new_agent() for _ in range(3)]
    market = new_market(creator)
    gate = Gate(monkeypatch)
    original_one = order_batch._place_one

    def flaky(*, agent, market_id, order):
        if agent.id == agents[1].id:
            raise RuntimeError("boom")
        return original_one(agent=agent, market_id=market_id, order=order)

    monkeypatch.setattr(order_batch, "_place_one", flaky)
    order = {"market_id": market.id, "side": "YES", "action": "BUY", "price": "0.40", "size": 1}
    outcomes = queued_behind_gate(gate, [{"agent": a, **order} for a in (agents[0], agents[0], agents[1], agents[2])])
    assert [type(o).__name__ for o in outcomes] == ["PlaceResult", "PlaceResult", "RuntimeError", "PlaceResult"]
    assert Order.objects.filter(market=market).count() == 3
    assert books_problems([*agents, creator]) == []


def test_concurrent_orders_of_one_market_are_combined_and_the_books_stay_exact():
    """Sixteen threads released together, each placing crossing orders (every fourth unaffordable) with a client
    order id and then repeating one: fewer transactions than orders, every result as stored, repeats answered
    with their original, the books exact and the audit clean."""
    creator = new_agent("creator")
    agents = [new_agent("hot") for _ in range(16)]
    market = new_market(creator)
    before = last_seq(market)
    combiner.reset_stats()

    def job(index: int):
        def run(outcomes: list) -> None:
            for n in range(6):
                yes = (index + n) % 2 == 0
                size = 5000 if n == 3 else 1 + (index + n) % 3
                kwargs = {
                    "agent": agents[index],
                    "market_id": market.id,
                    "side": "YES" if yes else "NO",
                    "action": "BUY",
                    "price": "0.55" if yes else "0.47",
                    "size": size,
                    "client_order_id": f"{index}-{n}",
                }
                try:
                    outcomes.append((kwargs, combiner.place(**kwargs)))
                except MoltStreetError as exc:
                    outcomes.append((kwargs, exc))
            kwargs = outcomes[0][0]
            outcomes.append((kwargs, combiner.place(**kwargs)))  # a repeat of its first order

        return run

    results = run_threads([job(i) for i in range(16)])
    placed = 0
    for outcomes, unexpected in results:
        assert unexpected is None, unexpected
        first = outcomes[0][1]
        for kwargs, outcome in outcomes[:-1]:
            if kwargs["size"] == 5000:
                assert isinstance(outcome, InsufficientBalance), outcome
                continue
            assert isinstance(outcome, PlaceResult) and outcome.created, outcome
            stored = Order.objects.get(id=outcome.order.id)
            assert stored.client_order_id == kwargs["client_order_id"] and stored.agent_id == kwargs["agent"].id
            assert stored.filled >= outcome.order.filled  # later orders may have filled it further
            placed += 1
        repeat = outcomes[-1][1]
        assert not repeat.created and repeat.order.id == first.order.id
    stats = combiner.stats()
    assert stats.orders == 16 * 7
    assert Order.objects.filter(market=market).count() == placed == 16 * 5
    assert transactions_of(market, before) < placed, stats  # combined: fewer transactions than orders
    assert stats.batches < stats.orders and stats.largest > 1, stats
    assert books_problems([*agents, creator]) == []


def test_post_orders_goes_through_the_combiner_when_the_setting_is_on():
    """``MOLTSTREET_ORDER_COMBINING`` on: ``POST /orders/`` answers as always (201, then 200 for the repeat), placed
    through the combiner; a malformed order is refused as before."""
    agent = new_agent()
    market = new_market()
    client = api_client(agent)
    body = {
        "market": str(market.id),
        "side": "YES",
        "action": "BUY",
        "price": "0.30",
        "size": 2,
        "client_order_id": "x",
    }
    combiner.reset_stats()
    with override_settings(MOLTSTREET={**_settings(), "ORDER_COMBINING": True}):
        first = client.post("/api/v1/orders/", body, format="json")
        again = client.post("/api/v1/orders/", body, format="json")
        bad = client.post("/api/v1/orders/", {**body, "price": "1.50", "client_order_id": "y"}, format="json")
    assert first.status_code == 201, first.content
    assert again.status_code == 200 and again.json()["order"]["id"] == first.json()["order"]["id"]
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_price"
    assert combiner.stats().orders == 2
    assert Order.objects.get(id=first.json()["order"]["id"]).price == Decimal("0.30")


def _settings() -> dict:
    from django.conf import settings

    return dict(settings.MOLTSTREET)


@pytest.mark.faults
def test_a_server_combining_orders_killed_mid_batch_loses_no_acknowledged_order():
    """The SIGKILL test of test_faults.py with ``MOLTSTREET_ORDER_COMBINING=on``: six clients post crossing orders
    (every fifth unaffordable), the server is killed while orders have committed unanswered; afterwards every order
    a client was told of (201/200) is stored, every refused one is not, retries place nothing twice, the audit is
    clean, and the server did combine orders (fewer transactions than orders)."""
    from moltstreet.tests.test_faults import NO_RATE_LIMITS, _kill_mid_burst
    from testsupport.e2e import server_env
    from testsupport.faults import killable_daphne, private_redis

    with private_redis("combine-kill") as redis_server:
        env = {
            **server_env(),
            **NO_RATE_LIMITS,
            "REDIS_URL": redis_server.url(),
            "MOLTSTREET_LIVE_PUBLISH_TIMEOUT": "60",
            "MOLTSTREET_ORDER_COMBINING": "on",
        }
        with killable_daphne("combine-kill", env) as server:
            _kill_mid_burst(server, redis_server)
    market = Market.objects.get(question="Will the exchange survive a SIGKILL?")
    assert transactions_of(market) < Order.objects.filter(market=market).count()
