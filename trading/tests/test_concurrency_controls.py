"""Cancels and resolution under real concurrency, with negative controls (DESIGN section 6).

Each race is staged, not hoped for: a thread stops at a chosen point (:class:`Stop`, at the start of
``MarketTx.prepare``, where cancels, fills and payouts lock and read their agents) until another thread has got where
the race needs it; a waiting lock is seen in ``pg_stat_activity`` (``wait_for_lock_waiters``), never by sleeping.

With the locks, the outcome is exact: one cancel wins and the reserve is released once, to the cent; one resolution
pays out. The controls turn the row locks off (``trading.book_store.LOCKING_ENABLED``, as the buying race's control in
``test_concurrency.py`` does) and show that the same tests then see the race: the loser passes the "still resting?" or
"not resolved yet?" re-check and releases the reserve (or pays out) a second time, from a balance the winner already
changed. What stops that second release from being committed, once the locks are gone, is only the database: a book
level's ``size >= 0`` check and the unique ``(market, seq)`` index of market events (cancels, fills), or the
one-final-resolution index (resolution) refuse the loser's writes, so it fails with an ``IntegrityError`` (a 500 for
a client) where it should fail with a domain error.
"""

from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import pytest
from django.db import IntegrityError

from agents.models import Agent, LedgerEntry
from agents.services import CashBook
from markets.models import Market, Resolution, Resolver
from trading import book_store
from trading.market_tx import MarketTx
from trading.models import Order, Trade
from trading.orders import order_cancel
from trading.resolution import market_resolve
from trading.tests.factories import external_money, mint, new_agent, new_market, place, total_money
from trading.tests.test_concurrency import attempt, run_threads, wait_for_lock_waiters

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

D = Decimal
WAIT = 20  # seconds: only ever reached when a staged step never happens (the test then fails)


class Stop:
    """Where a thread stops: at the start of ``MarketTx.prepare`` (it has read the market and the orders it will
    change, and has not yet locked or read their agents and positions) or, ``after``, once ``prepare`` has read them;
    it waits there until ``go`` is set. ``reached`` is set when it gets there."""

    def __init__(self, go: threading.Event | None = None, *, after: bool = False):
        self.reached = threading.Event()
        self.go = go or threading.Event()
        self.after = after

    def wait(self) -> None:
        self.reached.set()
        assert self.go.wait(WAIT), "a staged thread was never let go"

    def conductor(self, outcomes) -> None:
        """A thread of :func:`run_threads` that lets the stopped thread go once the other waits on a row lock (the
        market row) behind it: the interleaving forced, not hoped for."""
        assert self.reached.wait(WAIT)
        try:
            wait_for_lock_waiters(1)
        finally:
            self.go.set()


class Stops:
    """Installs the stopping ``MarketTx.prepare``; a thread stops only if it registered a :class:`Stop` for itself,
    and only the first time it prepares."""

    def __init__(self, monkeypatch):
        self.by_thread: dict[int, Stop] = {}
        original = MarketTx.prepare

        def prepare(tx, *args, **kwargs):
            stop = self.by_thread.pop(threading.get_ident(), None)
            if stop is not None and not stop.after:
                stop.wait()
            result = original(tx, *args, **kwargs)
            if stop is not None and stop.after:
                stop.wait()
            return result

        monkeypatch.setattr(MarketTx, "prepare", prepare)

    def here(self, stop: Stop) -> None:
        """The calling thread will stop at ``stop``."""
        self.by_thread[threading.get_ident()] = stop


@pytest.fixture
def stops(monkeypatch) -> Stops:
    return Stops(monkeypatch)


@pytest.fixture
def cash_log(monkeypatch) -> list[tuple[str, object, Decimal, Decimal, Decimal]]:
    """Every release (``CashBook.release``) and payout (``move`` of kind payout) the cash book computes, committed or not, as
    (what, agent id, amount, balance or locked balance before, after)."""
    log: list = []
    release, move = CashBook.release, CashBook.move

    def logged_release(book, agent, amount):
        before = agent.locked_balance
        release(book, agent, amount)
        log.append(("release", agent.id, Decimal(amount), before, agent.locked_balance))

    def logged_move(book, agent, amount, kind, **kwargs):
        before = agent.balance
        move(book, agent, amount, kind, **kwargs)
        if kind == LedgerEntry.Kind.PAYOUT and agent.balance != before:
            log.append(("payout", agent.id, agent.balance - before, before, agent.balance))

    monkeypatch.setattr(CashBook, "release", logged_release)
    monkeypatch.setattr(CashBook, "move", logged_move)
    return log


@pytest.fixture
def unlocked(monkeypatch):
    """No row locks for the test (the negative control's switch); restored afterwards by monkeypatch."""
    monkeypatch.setattr(book_store, "LOCKING_ENABLED", False)


def outcomes_and_errors(results) -> tuple[Counter, list[Exception]]:
    return (
        Counter(outcome for found, _ in results for outcome in found),
        [exc for _, exc in results if exc is not None],
    )


def refused_by_the_book_or_the_sequence(error: Exception) -> bool:
    """The database refused a second writer in one market: its book level went below zero (checked first, in the
    order the writes are sent) or its event took a sequence number already used."""
    return isinstance(error, IntegrityError) and any(
        name in str(error) for name in ("trading_booklevel_size_check", "markets_event_unique_seq")
    )


def stored(agent: Agent) -> tuple[Decimal, Decimal]:
    agent.refresh_from_db()
    return agent.balance, agent.locked_balance


def assert_books_exact(audit_clean, expected_money: Decimal) -> None:
    assert total_money() == external_money() == expected_money
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# Cancels.


@pytest.fixture
def resting():
    """A maker with a resting BUY YES 10 @ 0.60 (6.00 reserved) in ``market`` and another 6.00 reserved in a second
    market (so a double release of the first takes its locked balance to 0.00, not below, and nothing in the cash
    book itself objects)."""
    creator = new_agent("creator")
    market, elsewhere = new_market(creator), new_market(creator)
    maker = new_agent("maker")
    order = place(maker, market, "YES", "BUY", "0.60", 10).order
    place(maker, elsewhere, "YES", "BUY", "0.60", 10)
    assert stored(maker) == (D("1000.00"), D("12.00"))
    return market, maker, order


# Money in the system: the creator's grant less two fees, the maker's grant, and the taker's when there is one.
CANCEL_MONEY = D("1000.00") - D("20.00") + D("1000.00")


def releases_of(cash_log, agent) -> list[tuple[Decimal, Decimal, Decimal]]:
    return [
        (amount, before, after)
        for what, who, amount, before, after in cash_log
        if what == "release" and who == agent.id
    ]


def test_two_cancels_of_one_resting_order_release_its_reserve_once(resting, stops, cash_log, audit_clean):
    """The first cancel stops holding the market lock; the second queues behind it, then finds the order gone."""
    _market, maker, order = resting
    first = Stop()

    def winner(outcomes):
        stops.here(first)
        attempt(outcomes, order_cancel, agent=maker, order_id=order.id)

    def loser(outcomes):
        assert first.reached.wait(WAIT)
        attempt(outcomes, order_cancel, agent=maker, order_id=order.id)

    outcomes, errors = outcomes_and_errors(run_threads([winner, loser, first.conductor]))

    assert errors == []
    assert outcomes == Counter({"ok": 1, "OrderNotCancellable": 1})
    assert releases_of(cash_log, maker) == [(D("6.00"), D("12.00"), D("6.00"))]
    assert stored(maker) == (D("1000.00"), D("6.00"))  # the other market's reserve is untouched
    order.refresh_from_db()
    assert (order.status, order.cancel_reason) == (Order.Status.CANCELLED, Order.CancelReason.USER)
    assert_books_exact(audit_clean, CANCEL_MONEY)


@pytest.mark.parametrize("first_in", ["cancel", "fill"])
def test_a_cancel_racing_a_fill_of_the_same_order_either_cancels_it_or_fills_it_never_both(
    first_in, resting, stops, cash_log, audit_clean
):
    """Whichever takes the market lock first wins; the other queues, then sees what the winner committed."""
    market, maker, order = resting
    taker = new_agent("taker")
    first = Stop()

    def canceller(outcomes):
        if first_in == "cancel":
            stops.here(first)
        else:
            assert first.reached.wait(WAIT)
        attempt(outcomes, order_cancel, agent=maker, order_id=order.id)

    def filler(outcomes):
        if first_in == "fill":
            stops.here(first)
        else:
            assert first.reached.wait(WAIT)
        attempt(outcomes, place, agent=taker, market=market, side="NO", action="BUY", price="0.40", size=10)

    outcomes, errors = outcomes_and_errors(run_threads([canceller, filler, first.conductor]))

    assert errors == []
    order.refresh_from_db()
    # The maker's 6.00 reserve for the order is released exactly once: by the cancel, or by the fill as it pays.
    assert releases_of(cash_log, maker) == [(D("6.00"), D("12.00"), D("6.00"))]
    if first_in == "cancel":
        assert outcomes == Counter({"ok": 2})  # the cancel, and the taker's order, which now rests uncrossed
        assert order.status == Order.Status.CANCELLED and order.filled == 0
        assert not Trade.objects.filter(market=market).exists()
        assert stored(maker) == (D("1000.00"), D("6.00"))
        assert stored(taker) == (D("1000.00"), D("4.00"))
    else:
        assert outcomes == Counter({"ok": 1, "OrderNotCancellable": 1})
        assert order.status == Order.Status.FILLED and order.filled == 10
        [trade] = Trade.objects.filter(market=market)
        assert (trade.price, trade.size, trade.maker_order_id) == (D("0.60"), 10, order.id)
        assert stored(maker) == (D("994.00"), D("6.00"))
        assert stored(taker) == (D("996.00"), D("0.00"))
    assert_books_exact(audit_clean, CANCEL_MONEY + D("1000.00"))


def test_control_without_locks_two_cancels_both_release_the_reserve(resting, stops, cash_log, unlocked, audit_clean):
    """The negative control of the double cancel: the second cancel reads the order as resting before the first
    commits, and the maker's locked balance after it; it releases the same 6.00 again (12.00 -> 6.00 -> 0.00)."""
    _market, maker, order = resting
    first_done = threading.Event()
    second = Stop(go=first_done)
    first = Stop(go=second.reached)  # the first goes on once the second has read the order as resting

    def one(outcomes):
        stops.here(first)
        try:
            attempt(outcomes, order_cancel, agent=maker, order_id=order.id)
        finally:
            first_done.set()

    def two(outcomes):
        stops.here(second)
        attempt(outcomes, order_cancel, agent=maker, order_id=order.id)

    results = run_threads([one, two])
    outcomes, errors = outcomes_and_errors(results)

    # The race happened: both cancels passed the re-check, and the second released the reserve a second time.
    assert releases_of(cash_log, maker) == [
        (D("6.00"), D("12.00"), D("6.00")),
        (D("6.00"), D("6.00"), D("0.00")),  # the double release: the other market's 6.00 is still reserved
    ]
    # With locks the loser gets OrderNotCancellable; here nothing but the database stops its writes.
    assert results[0] == (["ok"], None)
    assert outcomes == Counter({"ok": 1}) and len(errors) == 1
    assert refused_by_the_book_or_the_sequence(errors[0]), errors
    # The books survive only because the database refused the second writer's book level (or event) rows.
    assert stored(maker) == (D("1000.00"), D("6.00"))
    assert_books_exact(audit_clean, CANCEL_MONEY)


def test_control_without_locks_a_cancel_and_a_fill_both_release_the_reserve(
    resting, stops, cash_log, unlocked, audit_clean
):
    """The negative control of cancel against fill: the taker plans its fill on the book it read, the cancel
    commits, then the fill locks nothing, reads the maker's already released balance and releases the 6.00 again as
    it pays, trading against a cancelled order."""
    market, maker, order = resting
    taker = new_agent("taker")
    cancelled = threading.Event()
    fill_stop = Stop(go=cancelled)

    def filler(outcomes):
        stops.here(fill_stop)
        attempt(outcomes, place, agent=taker, market=market, side="NO", action="BUY", price="0.40", size=10)

    def canceller(outcomes):
        assert fill_stop.reached.wait(WAIT)  # the fill has read the book with the order resting
        try:
            attempt(outcomes, order_cancel, agent=maker, order_id=order.id)
        finally:
            cancelled.set()

    results = run_threads([filler, canceller])
    outcomes, errors = outcomes_and_errors(results)

    assert releases_of(cash_log, maker) == [
        (D("6.00"), D("12.00"), D("6.00")),  # the cancel
        (D("6.00"), D("6.00"), D("0.00")),  # the fill, of an order cancelled already: a double release
    ]
    assert results[1] == (["ok"], None)
    assert outcomes == Counter({"ok": 1}) and len(errors) == 1
    assert refused_by_the_book_or_the_sequence(errors[0]), errors
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED and order.filled == 0
    assert not Trade.objects.filter(market=market).exists()
    assert stored(maker) == (D("1000.00"), D("6.00"))
    assert_books_exact(audit_clean, CANCEL_MONEY + D("1000.00"))


# --------------------------------------------------------------------------------------------------------------------
# Resolution.


@pytest.fixture
def held():
    """A market where ``yes`` holds 10 YES (paid 6.00) and ``no`` 10 NO (paid 4.00): YES pays ``yes`` 10.00."""
    market = new_market()
    yes, no = new_agent("yes"), new_agent("no")
    mint(yes, no, market, 10, yes_price="0.60")
    assert stored(yes) == (D("994.00"), D("0.00")) and stored(no) == (D("996.00"), D("0.00"))
    return market, yes, no


RESOLVE_MONEY = D("1000.00") * 3 - D("10.00")  # three grants, one fee


def resolve(outcomes, market):
    attempt(outcomes, market_resolve, market_id=market.id, outcome="YES", resolver=Resolver.operator(None, "ops"))


def payouts_of(cash_log, agent) -> list[tuple[Decimal, Decimal, Decimal]]:
    return [
        (amount, before, after) for what, who, amount, before, after in cash_log if what == "payout" and who == agent.id
    ]


def test_two_resolutions_of_one_market_pay_out_once(held, stops, cash_log, audit_clean):
    market, yes, no = held
    first = Stop()

    def winner(outcomes):
        stops.here(first)
        resolve(outcomes, market)

    def loser(outcomes):
        assert first.reached.wait(WAIT)
        resolve(outcomes, market)

    outcomes, errors = outcomes_and_errors(run_threads([winner, loser, first.conductor]))

    assert errors == []
    assert outcomes == Counter({"ok": 1, "MarketAlreadyResolved": 1})
    assert payouts_of(cash_log, yes) == [(D("10.00"), D("994.00"), D("1004.00"))]
    assert payouts_of(cash_log, no) == []  # NO pays nothing: no payout row at all
    assert list(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PAYOUT).values_list("agent_id", "amount")) == [
        (yes.id, D("10.00"))
    ]
    assert stored(yes) == (D("1004.00"), D("0.00")) and stored(no) == (D("996.00"), D("0.00"))
    assert Resolution.objects.filter(market=market).count() == 1
    market.refresh_from_db()
    assert (market.status, market.outcome) == (Market.Status.RESOLVED, "YES")
    yes.refresh_from_db()
    assert yes.reputation == D("4.00")  # 10.00 paid out on 6.00 spent, counted once
    assert_books_exact(audit_clean, RESOLVE_MONEY)


def test_control_without_locks_two_resolutions_both_pay_out(held, stops, cash_log, unlocked, audit_clean):
    """The negative control: both resolutions read the market as unresolved, and the holders' positions and balances,
    before either writes; both pay the YES holder its 10.00. Committed, that is two payout rows for one balance
    (the ledger would replay to 1014.00 against a balance of 1004.00)."""
    market, yes, no = held
    first, second = Stop(after=True), Stop(after=True)
    first.go, second.go = second.reached, first.reached  # each goes on once both have read everything

    def job(stop):
        def run(outcomes):
            stops.here(stop)
            resolve(outcomes, market)

        return run

    outcomes, errors = outcomes_and_errors(run_threads([job(first), job(second)]))

    # The race happened: both resolutions passed the "resolved already?" check and paid out.
    assert payouts_of(cash_log, yes) == [(D("10.00"), D("994.00"), D("1004.00"))] * 2
    # With locks the loser gets MarketAlreadyResolved; here only the one-final-resolution index refuses it.
    assert outcomes == Counter({"ok": 1}) and len(errors) == 1
    assert isinstance(errors[0], IntegrityError) and "markets_resolution_one_final" in str(errors[0]), errors
    # The books survive only because the database refused the second resolution.
    assert list(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PAYOUT).values_list("agent_id", "amount")) == [
        (yes.id, D("10.00"))
    ]
    assert stored(yes) == (D("1004.00"), D("0.00")) and stored(no) == (D("996.00"), D("0.00"))
    assert Resolution.objects.filter(market=market).count() == 1
    assert_books_exact(audit_clean, RESOLVE_MONEY)
