"""Real threads against PostgreSQL: the locks of DESIGN section 6 keep the money right under contention.

Each thread has its own database connection (Django's are per thread), waits at a ``threading.Barrier`` so the
requests really overlap, and closes its connections in ``finally``. The negative control turns locking off through
``trading.book_store.LOCKING_ENABLED`` and shows that the same race then breaks the books.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, connections, transaction

from markets.services import lock_market
from moltstreet.errors import MoltStreetError
from trading import book_store
from trading.audit import run_audit
from trading.models import Order, Position, Trade
from trading.orders import order_cancel, order_cancel_all, order_place
from trading.tests.factories import assert_book_not_crossed, external_money, new_agent, new_market, total_money

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

D = Decimal


def run_threads(jobs) -> list[tuple[list, Exception | None]]:
    """Run each job (a callable that appends what happened to the list it is given) in its own thread, all released
    at once by a barrier. Returns each thread's (outcomes, unexpected exception or None)."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def worker(i, job):
        outcomes: list = []
        try:
            connection.ensure_connection()  # connect before the barrier, so the requests themselves overlap
            barrier.wait(timeout=30)
            job(outcomes)
            results[i] = (outcomes, None)
        except Exception as exc:  # reported to the test thread, which fails on it
            results[i] = (outcomes, exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread hung"
    return results


def attempt(outcomes: list, fn, **kwargs):
    """Call a service and record what happened: "ok" or the MoltStreetError class. Anything else propagates."""
    try:
        result = fn(**kwargs)
    except MoltStreetError as exc:
        outcomes.append(type(exc).__name__)
        return None
    outcomes.append("ok")
    return result


def trader(agent, markets, seed: int, orders: int):
    """A job placing ``orders`` random orders that often cross (prices near 0.50), sometimes selling what it holds,
    sometimes cancelling, across ``markets``."""
    rng = random.Random(seed)

    def job(outcomes):
        mine = []
        for _ in range(orders):
            market = rng.choice(markets)
            roll = rng.random()
            if roll < 0.1 and mine:
                attempt(outcomes, order_cancel, agent=agent, order_id=rng.choice(mine))
                continue
            if roll < 0.13 and len(markets) > 1:
                attempt(outcomes, order_cancel_all, agent=agent)  # locks several markets in one transaction
                continue
            side, action, size = rng.choice(["YES", "NO"]), "BUY", rng.randint(1, 15)
            if roll < 0.35:
                pos = Position.objects.filter(agent=agent, market=market).first()
                if pos is not None:
                    free = {"YES": pos.yes_shares - pos.yes_reserved, "NO": pos.no_shares - pos.no_reserved}
                    side = max(free, key=free.get)
                    if free[side] > 0:
                        action, size = "SELL", rng.randint(1, free[side])
            result = attempt(
                outcomes,
                order_place,
                agent=agent,
                market_id=market.id,
                side=side,
                action=action,
                price=D(rng.randint(40, 60)) / 100,
                size=size,
                time_in_force=rng.choice(["GTC", "GTC", "GTC", "IOC", "FOK"]),
            )
            if result is not None:
                mine.append(result.order.id)

    return job


def assert_no_unexpected(results) -> Counter:
    errors = [exc for _, exc in results if exc is not None]
    assert not errors, f"unexpected exceptions: {errors!r}"
    return Counter(outcome for outcomes, _ in results for outcome in outcomes)


def test_many_agents_trading_one_market_at_once_keep_the_books_exact(audit_clean):
    market = new_market()
    agents = [new_agent("crowd") for _ in range(8)]
    expected = D("1000.00") * 9 - D("10.00")  # eight traders and the market's creator, less the fee

    outcomes = assert_no_unexpected(run_threads([trader(a, [market], seed=i, orders=20) for i, a in enumerate(agents)]))

    assert sum(outcomes.values()) == 160
    assert outcomes["ServiceBusy"] <= 8, outcomes  # retryable, and rare: waits are short
    assert outcomes["ok"] >= 100, outcomes
    assert Trade.objects.filter(market=market).count() > 0
    assert total_money() == external_money() == expected
    assert_book_not_crossed(market)
    audit_clean()


def test_many_agents_trading_several_markets_at_once_keep_the_books_exact(audit_clean):
    agents = [new_agent("spread") for _ in range(8)]
    markets = [new_market(agents[i]) for i in range(3)]  # three of the traders paid a fee each
    expected = D("1000.00") * 8 - D("30.00")

    outcomes = assert_no_unexpected(run_threads([trader(a, markets, seed=i, orders=20) for i, a in enumerate(agents)]))

    assert sum(outcomes.values()) == 160
    # A deadlock (cancel-all holds one market's agents while waiting for the next market) is retried; at worst it
    # surfaces as ServiceBusy, never as anything else.
    assert outcomes["ServiceBusy"] <= 8, outcomes
    assert outcomes["ok"] >= 100, outcomes
    assert all(Trade.objects.filter(market=m).exists() for m in markets)
    assert total_money() == external_money() == expected
    for market in markets:
        assert_book_not_crossed(market)
    audit_clean()


def race_buys(agent, markets) -> tuple[Counter, list[Exception]]:
    """Each thread places one BUY YES of 500 @ 0.60 (300.00 reserved) for ``agent`` in its market of ``markets``.
    Returns the outcomes and any exception that was not a MoltStreetError."""

    def buy(market):
        def job(outcomes):
            attempt(
                outcomes,
                order_place,
                agent=agent,
                market_id=market.id,
                side="YES",
                action="BUY",
                price="0.60",
                size=500,
            )

        return job

    results = run_threads([buy(m) for m in markets])
    outcomes = Counter(outcome for found, _ in results for outcome in found)
    return outcomes, [exc for _, exc in results if exc is not None]


def test_an_agent_racing_buys_from_several_threads_gets_exactly_what_it_can_afford(audit_clean):
    creator = new_agent("creator")
    markets = [new_market(creator) for _ in range(5)]  # one market per thread: only the agent row is shared
    agent = new_agent("racer")

    outcomes, errors = race_buys(agent, markets)

    assert errors == []
    # 1000.00 covers three reserves of 300.00: the other two must be refused, whatever the interleaving.
    assert outcomes == Counter({"ok": 3, "InsufficientBalance": 2})
    agent.refresh_from_db()
    assert (agent.balance, agent.locked_balance, agent.available_balance) == (D("1000.00"), D("900.00"), D("100.00"))
    assert Order.objects.filter(agent=agent, status="open").count() == 3
    audit_clean()


def test_an_agent_racing_buys_in_one_market_gets_exactly_what_it_can_afford(audit_clean):
    market = new_market()
    agent = new_agent("racer")

    outcomes, errors = race_buys(agent, [market] * 4)

    assert errors == []
    assert outcomes == Counter({"ok": 3, "InsufficientBalance": 1})
    agent.refresh_from_db()
    assert (agent.balance, agent.locked_balance) == (D("1000.00"), D("900.00"))
    audit_clean()


def test_concurrent_twins_of_one_client_order_id_create_one_order(audit_clean):
    """Retries of one request arriving together: one order, the others get it back; in another market, a conflict."""
    creator = new_agent("creator")
    market, other = new_market(creator), new_market(creator)
    agent = new_agent("twins")
    returned = []

    def twin(market_id):
        def job(outcomes):
            result = attempt(
                outcomes,
                order_place,
                agent=agent,
                market_id=market_id,
                side="NO",
                action="BUY",
                price="0.30",
                size=10,
                client_order_id="retry-me",
            )
            if result is not None:
                returned.append((result.order.id, result.created))

        return job

    outcomes = assert_no_unexpected(run_threads([twin(market.id)] * 4 + [twin(other.id)]))

    [order] = Order.objects.filter(agent=agent)
    if order.market_id == market.id:
        assert outcomes == Counter({"ok": 4, "ClientOrderIdConflict": 1})
        assert sorted(created for _, created in returned) == [False, False, False, True]
    else:  # the twin in the other market won the race
        assert outcomes == Counter({"ok": 1, "ClientOrderIdConflict": 4})
    assert {order_id for order_id, _ in returned} == {order.id}
    agent.refresh_from_db()
    assert agent.locked_balance == D("3.00")
    audit_clean()


def wait_for_lock_waiters(count: int) -> None:
    """Block until ``count`` sessions of the test database are waiting for a row lock (an event, not a sleep)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
    raise AssertionError(f"{count} lock waiters never showed up")


def test_cancel_all_across_markets_takes_every_market_lock_before_the_agent_lock(audit_clean, caplog):
    """DESIGN section 6's lock order (markets, then agents) with an agent resting in two markets: its cancel-all
    must not hold the agent row while it waits for the second market, or it deadlocks with a trade there.

    Staged without sleeps: a holder locks the second market; a trader queues for it (its trade will need the agent);
    then the cancel-all queues too; the holder lets go."""
    caplog.set_level(logging.INFO, logger="moltstreet.db")
    creator = new_agent("creator")
    first, second = sorted([new_market(creator), new_market(creator)], key=lambda m: m.id)
    agent, trader_agent = new_agent("resting"), new_agent("taker")
    for market in (first, second):
        order_place(agent=agent, market_id=market.id, side="YES", action="BUY", price="0.30", size=5)
    held, let_go = threading.Event(), threading.Event()

    def holder(outcomes):
        with transaction.atomic():
            lock_market(second.id)
            held.set()
            let_go.wait(timeout=20)
        outcomes.append("held")

    def taker(outcomes):
        held.wait(timeout=10)
        attempt(
            outcomes,
            order_place,
            agent=trader_agent,
            market_id=second.id,
            side="NO",
            action="BUY",
            price="0.70",
            size=5,
        )

    def canceller(outcomes):
        held.wait(timeout=10)
        wait_for_lock_waiters(1)  # the taker queues for the second market first
        attempt(outcomes, order_cancel_all, agent=agent)

    def conductor(outcomes):
        held.wait(timeout=10)
        try:
            wait_for_lock_waiters(2)  # and then the cancel-all
        finally:
            let_go.set()

    outcomes = assert_no_unexpected(run_threads([holder, taker, canceller, conductor]))

    assert outcomes == Counter({"held": 1, "ok": 2})
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []  # no deadlock
    assert Trade.objects.filter(market=second, maker_agent=agent).count() == 1
    assert not Order.objects.filter(agent=agent, status__in=Order.RESTING).exists()
    audit_clean()


def test_without_locks_the_same_race_breaks_the_books():
    """The negative control: the race above is real. Without row locks the threads read the same balance and each
    reserves from it; a reserve is lost (or the database refuses a write, or the audit finds a breach)."""
    creator = new_agent("creator")
    breaches: list[str] = []
    attempts = 0
    try:
        book_store.LOCKING_ENABLED = False
        while not breaches and attempts < 10:
            attempts += 1
            markets = [new_market(creator) for _ in range(5)]
            agent = new_agent("unlocked")
            outcomes, errors = race_buys(agent, markets)
            breaches += [f"the database refused a write: {exc!r}" for exc in errors if isinstance(exc, DatabaseError)]
            assert all(isinstance(exc, DatabaseError) for exc in errors), errors
            agent.refresh_from_db()
            reserved = D("300.00") * Order.objects.filter(agent=agent, status="open").count()
            if outcomes["ok"] > 3:
                breaches.append(f"{outcomes['ok']} orders reserving 300.00 each accepted against 1000.00")
            if agent.locked_balance != reserved:
                breaches.append(f"lost update: locked {agent.locked_balance} but resting orders reserve {reserved}")
            if not run_audit().ok:
                breaches.append("the audit found a breach")
    finally:
        book_store.LOCKING_ENABLED = True

    assert breaches, f"{attempts} unlocked races all came out right: the negative control shows nothing"


def test_a_lock_wait_beyond_the_timeout_is_a_retryable_error_not_a_hang(settings):
    """ServiceBusy, not a hang: one thread holds the market lock while another tries to trade in it."""
    settings.MOLTSTREET = {**settings.MOLTSTREET, "LOCK_TIMEOUT_MS": 200}
    market = new_market()
    agent = new_agent()
    holding = threading.Event()
    release = threading.Event()

    def holder(outcomes):
        with transaction.atomic():
            lock_market(market.id)
            holding.set()
            release.wait(timeout=10)
        outcomes.append("held")

    def waiter(outcomes):
        holding.wait(timeout=10)
        try:
            attempt(
                outcomes, order_place, agent=agent, market_id=market.id, side="YES", action="BUY", price="0.5", size=1
            )
        finally:
            release.set()

    outcomes = assert_no_unexpected(run_threads([holder, waiter]))

    assert outcomes == Counter({"held": 1, "ServiceBusy": 1})
    assert not Order.objects.exists()
