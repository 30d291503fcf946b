"""Issue 16's order tools under real concurrency on PostgreSQL (DESIGN section 6): an amend racing the fill of the
order it amends, and the dead-man's switch firing while a batch of the agent's orders is being placed.

As in test_concurrency.py: real threads, each with its own connection, released together by a barrier
(``run_threads``, which closes their connections in ``finally``), many rounds, and after each round the exact
outcome of whichever interleaving happened, the reserves to the cent, the money conserved and a clean audit. Which
interleaving happened is read from what the threads got back and from the agent's private feed sequence, which
numbers every transaction that touches the agent's orders (each of them holds the agent's row lock).

The negative controls turn the row locks off (``trading.book_store.LOCKING_ENABLED``) and show that the same races
then break the books.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError
from django.db.models import F
from django.utils import timezone

from agents.models import Agent, AgentEvent
from markets.models import Market
from moltstreet.errors import HeartbeatExpired, InvalidRequest, MoltStreetError
from moltstreet.money import ZERO, quantize
from trading import book_store, order_batch
from trading.audit import run_audit
from trading.heartbeat import heartbeat_arm, heartbeat_expire
from trading.models import Order, Position, Trade
from trading.order_batch import OrderRequest, order_place_batch
from trading.orders import PlaceResult, order_amend, order_place
from trading.tests.factories import external_money, mint, new_agent, new_market, place, total_money
from trading.tests.test_concurrency import run_threads

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

D = Decimal
RESTING = Order.RESTING


# --------------------------------------------------------------------------------------------------------------------
# What every round checks, whatever raced.


def books_problems(agents: list[Agent]) -> list[str]:
    """Breaches of the books: reserves that differ by a cent from what the agents' resting orders need, an order
    filled beyond its size, money not conserved (DESIGN invariant 3), anything the audit finds. Empty when exact."""
    problems = []
    for agent in agents:
        agent.refresh_from_db()
        resting = list(Order.objects.filter(agent=agent, status__in=RESTING))
        credits = sum((quantize(o.price * (o.size - o.filled)) for o in resting if o.action == "BUY"), ZERO)
        if agent.locked_balance != credits:
            problems.append(f"{agent.name}: locked {agent.locked_balance}, its resting BUYs need {credits}")
        for pos in Position.objects.filter(agent=agent):
            for side, reserved in (("YES", pos.yes_reserved), ("NO", pos.no_reserved)):
                needed = sum(
                    o.size - o.filled
                    for o in resting
                    if o.market_id == pos.market_id and o.action == "SELL" and o.side == side
                )
                if reserved != needed:
                    problems.append(f"{agent.name}: {side} reserved {reserved}, its resting SELLs need {needed}")
    overfilled = Order.objects.filter(filled__gt=F("size")).count()
    if overfilled:
        problems.append(f"{overfilled} order(s) filled beyond their size")
    grants = D("1000.00") * Agent.objects.count() - D("10.00") * Market.objects.count()
    if not (total_money() == external_money() == grants):
        problems.append(f"money: held {total_money()}, ledgered {external_money()}, granted less fees {grants}")
    report = run_audit()
    if not report.ok:
        problems.append(report.render())
    return problems


def thread_failures(results) -> list[str]:
    return [f"a thread failed: {exc!r}" for _, exc in results if exc is not None]


# --------------------------------------------------------------------------------------------------------------------
# An amend racing a fill.

SIZE = 10  # the resting order's size
SHRUNK = 6  # its size after the in-place amend


@dataclass(frozen=True)
class Quote:
    """Agent A's resting order on YES (``action`` at ``price``), B's IOC order crossing it (``taker``: side,
    action, limit), and the new prices of an amend: one B's order still crosses, one it does not. The trade price
    (YES) is the maker's own price, as A quotes YES."""

    action: str
    price: Decimal
    taker: tuple[str, str, Decimal]
    crossing: Decimal
    away: Decimal


QUOTES = (
    # A bids 0.40 for YES; B bids 0.60 for NO (0.40 + 0.60 crosses; 0.45 still does, 0.35 no longer).
    Quote("BUY", D("0.40"), ("NO", "BUY", D("0.60")), crossing=D("0.45"), away=D("0.35")),
    # A offers YES it holds at 0.60; B bids 0.65 for YES (0.62 still crosses, 0.70 no longer).
    Quote("SELL", D("0.60"), ("YES", "BUY", D("0.65")), crossing=D("0.62"), away=D("0.70")),
)
TAKER_SIZES = (4, 8, 10, 12)  # a partial fill below SHRUNK, one above it, all of the order, more than the order


def status_of(size: int, filled: int) -> str:
    return "filled" if filled == size else "partial" if filled else "open"


def expected_amend_race(kind: str, quote: Quote, taker_size: int, first: str) -> dict[str, Any]:
    """The exact outcome of the race when ``first`` ("fill" or "amend") took the market's lock first: the amend's
    answer ("ok" or an error code), B's trades [(YES price, size, "old"|"new" maker)], the old order (status, size,
    filled, cancel_reason) and its replacement (status, price, size, filled) or ``None``."""
    new_price = {"crossing": quote.crossing, "away": quote.away}.get(kind)
    if first == "fill":
        fill = min(taker_size, SIZE)
        trades = [(quote.price, fill, "old")]
        if fill == SIZE:  # nothing left to amend
            return {"amend": "order_not_amendable", "trades": trades, "old": ("filled", SIZE, SIZE, ""), "new": None}
        if kind == "shrink":
            if fill >= SHRUNK:  # the new total is not above what is already filled
                return {"amend": "invalid_size", "trades": trades, "old": ("partial", SIZE, fill, ""), "new": None}
            return {"amend": "ok", "trades": trades, "old": ("partial", SHRUNK, fill, ""), "new": None}
        # The remainder is replaced at the new price; B's IOC is gone by then, so nothing crosses it.
        old = ("cancelled", SIZE, fill, "amended")
        return {"amend": "ok", "trades": trades, "old": old, "new": ("open", new_price, SIZE - fill, 0)}
    if kind == "shrink":  # B meets the smaller order
        fill = min(taker_size, SHRUNK)
        old = (status_of(SHRUNK, fill), SHRUNK, fill, "")
        return {"amend": "ok", "trades": [(quote.price, fill, "old")], "old": old, "new": None}
    fill = min(taker_size, SIZE) if kind == "crossing" else 0  # B trades with the replacement only if it crosses
    trades = [(new_price, fill, "new")] if fill else []
    new = (status_of(SIZE, fill), new_price, SIZE, fill)
    return {"amend": "ok", "trades": trades, "old": ("cancelled", SIZE, 0, "amended"), "new": new}


@dataclass
class AmendRace:
    """The agents of the amend races: A rests and amends, B takes, C mints A's contracts (for the SELL quote),
    ``creator`` pays for the markets."""

    a: Agent
    b: Agent
    c: Agent
    creator: Agent

    @classmethod
    def make(cls) -> AmendRace:
        return cls(new_agent("amender"), new_agent("taker"), new_agent("minter"), new_agent("creator"))

    def round(self, kind: str, quote: Quote, taker_size: int) -> tuple[str | None, list[str]]:
        """One race in a fresh market: thread 1 amends A's resting order (``kind``: to the ``crossing`` or the
        ``away`` price, or ``shrink`` to SHRUNK contracts), thread 2 sends B's IOC of ``taker_size``. Returns which
        took the market first ("fill", "amend", or ``None`` if that cannot be told) and every problem found."""
        market = new_market(self.creator)
        if quote.action == "SELL":
            mint(self.a, self.c, market, SIZE)
        resting = place(self.a, market, "YES", quote.action, quote.price, SIZE).order
        new_price = {"crossing": quote.crossing, "away": quote.away}.get(kind)
        new_size = SHRUNK if kind == "shrink" else None
        side, action, limit = quote.taker

        def amend(outcomes):
            try:
                outcomes.append(order_amend(agent=self.a, order_id=resting.id, price=new_price, size=new_size))
            except MoltStreetError as exc:
                outcomes.append(exc)

        def take(outcomes):
            outcomes.append(
                order_place(
                    agent=self.b,
                    market_id=market.id,
                    side=side,
                    action=action,
                    price=limit,
                    size=taker_size,
                    time_in_force="IOC",
                )
            )

        results = run_threads([amend, take])
        problems = thread_failures(results)
        if problems:
            return None, problems + books_problems([self.a, self.b, self.c])
        (amended,), (taken,) = (outcomes for outcomes, _ in results)

        # Which took the market's lock first: the amend saw the order unfilled, or saw B's fill (or was refused).
        if isinstance(amended, MoltStreetError):
            first = "fill" if amended.code in ("order_not_amendable", "invalid_size") else None
            answer = amended.code
        else:
            seen = amended.replaced if amended.replaced is not None else amended.order
            first = "fill" if seen.filled else "amend"
            answer = "ok"
        if first is None:
            return None, [f"the amend was refused with {answer}", *books_problems([self.a, self.b, self.c])]

        old = Order.objects.get(id=resting.id)
        new = Order.objects.filter(id=old.replaced_by_id).first() if old.replaced_by_id else None
        names = {old.id: "old", **({new.id: "new"} if new else {})}
        observed = {
            "amend": answer,
            "trades": [
                (t.price, t.size, names.get(t.maker_order_id, "another order"))
                for t in Trade.objects.filter(taker_order_id=taken.order.id).order_by("seq")
            ],
            "old": (old.status, old.size, old.filled, old.cancel_reason),
            "new": (new.status, new.price, new.size, new.filled) if new else None,
        }
        expected = expected_amend_race(kind, quote, taker_size, first)
        if observed != expected:
            problems.append(f"{kind} x{taker_size} {quote.action}, {first} first: {observed} != {expected}")
        # Never both the old and the new order resting, never neither when something is left: exactly what the
        # expected outcome leaves resting.
        still = Order.objects.filter(agent=self.a, market=market, status__in=RESTING).count()
        should = sum(1 for o in (expected["old"], expected["new"]) if o is not None and o[0] in RESTING)
        if still != should:
            problems.append(f"{still} of A's orders rest, {should} should")
        if answer == "ok" and amended.order.id != (new.id if new else old.id):
            problems.append("the amend answered with another order than the one that now stands")
        if Order.objects.filter(agent=self.b, status__in=RESTING).exists():
            problems.append("B's IOC rests")
        return first, problems + books_problems([self.a, self.b, self.c])


@pytest.mark.parametrize("kind", ["reprice", "shrink"])
def test_an_amend_racing_a_fill_ends_in_exactly_one_of_the_two_orders(kind, audit_clean):
    """Thread 1 amends A's resting order (a new price: cancel and replace; or a smaller size: in place), thread 2
    sends B's order that fills it, in every combination of quote, new price and taker size, several times.
    Whoever takes the market first, the other acts on what it left: never the old and the new order both resting,
    never neither. (Both interleavings come up in a run, the fill first more often.)"""
    race = AmendRace.make()
    kinds = ["crossing", "away"] if kind == "reprice" else ["shrink"]
    rounds = [(k, q, n) for k in kinds for q in QUOTES for n in TAKER_SIZES] * (3 if kind == "reprice" else 5)
    for amend_kind, quote, taker_size in rounds:
        first, problems = race.round(amend_kind, quote, taker_size)
        assert problems == [], problems
        assert first in ("fill", "amend")

    audit_clean()


def test_without_locks_an_amend_racing_a_fill_breaks_the_books(monkeypatch):
    """The negative control: without the row locks the amend and the fill both act on the order as they read it
    (the amend replaces all of it while B fills part of it), and the books break: a reserve released twice, both
    orders resting, or a write the database refuses (the market's event sequence taken twice)."""
    race = AmendRace.make()
    monkeypatch.setattr(book_store, "LOCKING_ENABLED", False)
    breaches: list[str] = []
    rounds = 0
    while not breaches and rounds < 20:
        rounds += 1
        try:
            _first, breaches = race.round("crossing", QUOTES[rounds % 2], 4)
        except DatabaseError as exc:  # a setup or read-back step refused by the broken books
            breaches = [f"the database refused a write: {exc!r}"]

    assert breaches, f"{rounds} unlocked races all came out right: the negative control shows nothing"


# --------------------------------------------------------------------------------------------------------------------
# A heartbeat expiry racing a batch.

# Per market, the batch's orders as A sends them and what each does on arrival, whenever it arrives (A's orders do
# not cross each other; only C's resting NO bid in the second market is there to be met): (side, action, price, size,
# time in force, status on arrival, filled on arrival), or the error class of an invalid one.
BATCH = (
    [("YES", "BUY", "0.30", 3, "GTC", "open", 0), ("NO", "BUY", "0.10", 2, "GTC", "open", 0)],
    [("YES", "BUY", "0.60", 4, "GTC", "filled", 4), ("YES", "BUY", "0.60", 6, "GTC", "partial", 1)],
    [("NO", "BUY", "0.40", 2, "GTC", "open", 0), ("YES", "BUY", "0.50", 2, "IOC", "cancelled", 0), InvalidRequest],
)


@dataclass
class BatchRace:
    """The agents of the batch races: C rests a NO bid the batch meets, ``creator`` pays for the markets.
    ``market_done`` is set each time a batch's market transaction has committed (:meth:`make` installs it)."""

    c: Agent
    creator: Agent
    market_done: threading.Event

    @classmethod
    def make(cls, monkeypatch) -> BatchRace:
        race = cls(new_agent("counterparty"), new_agent("creator"), threading.Event())
        place_in_market = order_batch._place_in_market

        def signalling(**kwargs):
            try:
                return place_in_market(**kwargs)
            finally:
                race.market_done.set()

        monkeypatch.setattr(order_batch, "_place_in_market", signalling)
        return race

    def round(self, rng: random.Random, *, deadline_passed: bool, staggered: bool = False) -> list[str]:
        """One race: a fresh agent A with a resting order in the first of three fresh markets, armed (a deadline a
        minute away, or, ``deadline_passed``, a second ago); thread 1 places a batch in 2 or 3 of the markets in a
        random order, thread 2 fires A's switch with ``now`` past the deadline (``staggered``: once the batch's
        first market is done, so that the switch fires between its markets). Returns every problem found."""
        self.market_done.clear()
        markets = [new_market(self.creator) for _ in BATCH]
        a = new_agent("armed")
        earlier = place(a, markets[0], "YES", "BUY", "0.20", 5).order
        place(self.c, markets[1], "NO", "BUY", "0.45", 5)  # met by the batch at YES 0.55
        if deadline_passed:
            deadline = timezone.now() - timedelta(seconds=1)
            Agent.objects.filter(id=a.id).update(heartbeat_timeout=5, heartbeat_deadline=deadline)
        else:
            deadline = heartbeat_arm(agent=a, timeout_seconds=60).deadline
        chosen = rng.sample(range(len(BATCH)), k=rng.choice([2, 3]))
        entries = [(m, spec) for m in chosen for spec in BATCH[m]]
        requests = [
            OrderRequest(markets[m].id, {"side": "YES", "action": "BUY", "price": "1.50", "size": 1})
            if spec is InvalidRequest
            else OrderRequest(
                markets[m].id,
                {"side": spec[0], "action": spec[1], "price": spec[2], "size": spec[3], "time_in_force": spec[4]},
            )
            for m, spec in entries
        ]

        def batch(outcomes):
            outcomes.append(order_place_batch(agent=a, requests=requests))

        def expire(outcomes):
            if staggered:
                assert self.market_done.wait(timeout=20), "the batch's first market never committed"
            outcomes.append(heartbeat_expire(agent_id=a.id, now=deadline + timedelta(seconds=1)))

        results = run_threads([batch, expire])
        problems = thread_failures(results)
        if problems:
            return problems + books_problems([a, self.c])
        (placed,), (cancelled,) = (outcomes for outcomes, _ in results)

        a.refresh_from_db()
        if (a.heartbeat_deadline, a.heartbeat_timeout) != (None, None):
            problems.append(f"the switch is still armed: {a.heartbeat_deadline}")
        beats = list(AgentEvent.objects.filter(agent=a, kind=AgentEvent.Kind.HEARTBEAT))
        if cancelled is None or len(beats) != 1:
            return [*problems, f"the switch fired {len(beats)} time(s); the expiry got {cancelled}"]
        beat = beats[0]
        first_seen: dict[str, int] = {}
        for seq, data in AgentEvent.objects.filter(agent=a, kind=AgentEvent.Kind.ORDER).values_list("seq", "data"):
            first_seen[data["order"]["id"]] = min(seq, first_seen.get(data["order"]["id"], seq))

        # Each market's transaction came before the switch fired (its orders were there to be cancelled, or, past
        # the deadline, were refused) or after (the switch was disarmed: its orders stand as they arrived).
        fates: dict[int, set[str]] = {m: set() for m in chosen}
        should_cancel = {earlier.id}
        for (m, spec), outcome in zip(entries, placed, strict=True):
            if spec is InvalidRequest:
                if not isinstance(outcome, InvalidRequest):
                    problems.append(f"an invalid order got {outcome!r}")
                continue
            if isinstance(outcome, HeartbeatExpired) and deadline_passed:
                fates[m].add("before")
                continue
            if not isinstance(outcome, PlaceResult) or not outcome.created:
                problems.append(f"{spec} got {outcome!r}")
                continue
            arrived = outcome.order
            if (arrived.status, arrived.filled) != spec[5:]:
                problems.append(f"{spec} arrived as {arrived.status} with {arrived.filled} filled")
            fate = "before" if first_seen[str(arrived.id)] < beat.seq else "after"
            fates[m].add(fate)
            stored = Order.objects.get(id=arrived.id)
            if fate == "before" and deadline_passed:
                problems.append(f"{spec} was accepted past its deadline, before the switch fired")
            elif fate == "before" and arrived.status in RESTING:
                should_cancel.add(arrived.id)
                if (stored.status, stored.cancel_reason, stored.filled) != (
                    "cancelled",
                    "heartbeat_expired",
                    arrived.filled,
                ):
                    problems.append(f"{spec} rested before the switch fired and is {stored.status}")
            elif (stored.status, stored.filled) != (arrived.status, arrived.filled):
                problems.append(f"{spec} arrived as {arrived.status} and is now {stored.status}")
        if any(len(f) != 1 for f in fates.values()):
            problems.append(f"a market's orders came both before and after the switch: {fates}")
        order_of_fates = [next(iter(fates[m])) for m in chosen if len(fates[m]) == 1]
        if order_of_fates != sorted(order_of_fates, key=["before", "after"].index):
            problems.append(f"a later market's transaction came before an earlier one's: {order_of_fates}")

        by_reason = set(Order.objects.filter(agent=a, cancel_reason="heartbeat_expired").values_list("id", flat=True))
        if not (should_cancel == by_reason == {o.id for o in cancelled} == set(map(uuid.UUID, beat.data["cancelled"]))):
            problems.append(f"cancelled {by_reason}, should be {should_cancel}; the message says {beat.data}")
        # Fills stand: every trade the batch took is there, and no other.
        took = {t.id for outcome in placed if isinstance(outcome, PlaceResult) for t in outcome.trades}
        if set(Trade.objects.filter(taker_agent=a).values_list("id", flat=True)) != took:
            problems.append("the batch's trades and the stored ones differ")
        if Order.objects.filter(agent=a, status__in=RESTING, id__in=should_cancel).exists():
            problems.append("an order placed before the switch fired still rests")
        return problems + books_problems([a, self.c])


@pytest.mark.parametrize("deadline_passed", [False, True], ids=["deadline-ahead", "deadline-passed"])
def test_a_heartbeat_expiry_racing_a_batch_leaves_no_order_of_the_batch_resting_from_before_it(
    deadline_passed, audit_clean, monkeypatch
):
    """Thread 1 places a batch in 2-3 markets (accepted: the real clock is before the deadline; or refused
    heartbeat_expired: past it), thread 2 fires the switch (``now`` past the deadline), at once or, every other
    round, once the batch's first market is done. Whatever the interleaving, the switch fires once and is disarmed;
    every batch order that rested before it fired is cancelled (heartbeat_expired), fills stand; a market's orders
    that came after it (the switch disarmed) stand as they arrived."""
    rng = random.Random(16)
    race = BatchRace.make(monkeypatch)
    for staggered in [False, True] * 12:
        problems = race.round(rng, deadline_passed=deadline_passed, staggered=staggered)
        assert problems == [], problems

    audit_clean()


def test_without_locks_a_heartbeat_expiry_racing_a_batch_breaks_the_books(monkeypatch):
    """The negative control of the batch race: without the market and agent row locks the expiry reads the
    agent's resting orders while the batch adds to them, so an order placed before the switch fired survives it,
    or two transactions number the same sequence (market events, the agent's feed) and the database refuses one."""
    rng = random.Random(16)
    race = BatchRace.make(monkeypatch)
    monkeypatch.setattr(book_store, "LOCKING_ENABLED", False)
    breaches: list[str] = []
    rounds = 0
    while not breaches and rounds < 20:
        rounds += 1
        try:
            breaches = race.round(rng, deadline_passed=False)
        except DatabaseError as exc:
            breaches = [f"the database refused a write: {exc!r}"]

    assert breaches, f"{rounds} unlocked races all came out right: the negative control shows nothing"
