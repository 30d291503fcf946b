"""Group commit of single orders per market (issue 17, "batch matching per market").

With ``MOLTSTREET_ORDER_COMBINING`` on, ``POST /orders/`` hands its order to :func:`place`. The orders of one market
that arrive while that market's previous batch is running queue up; the first order for an idle market, and then the
first one still queued when a batch ends, becomes the *leader*: it takes up to :data:`MAX_COMBINED` queued orders, in
arrival order, and places them as one batch (:func:`trading.order_batch.place_in_market`: one transaction, one
market lock, the orders one after the other, each seeing the book as the ones before it left it). Every request then
gets its own :class:`~trading.orders.PlaceResult` or its own error, exactly what :func:`~trading.orders.order_place`
would have given it at that place in the sequence. No request waits on purpose: a batch is what queued meanwhile
(classic group commit), so at low load every batch is one order.

DESIGN sections 3 and 6 hold per order: priority by arrival (the queue is first come, first placed), each order's
own result, idempotency by ``client_order_id`` (a repeat later in the same batch finds the first one written), exact
money (each order is placed exactly as alone). An answer is handed out only after the batch's transaction has
committed, so a crash before that loses only orders nobody was told about. An order's error changes nothing and
does not touch the others; should the batch's transaction fail with an unexpected error (not an order's own error,
a lock timeout or an unknown market, which would fail each of them alone as well), each order is placed again on its
own, so that only the culprit fails.

The queues live in the process: each web process combines its own requests (the database's locks still order
processes). The request threads are those of the ASGI server's thread pool (one per request,
``moltstreet.asgi.SyncChainASGIHandler``); a leader runs the batch on its own thread's database connection.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection

from agents.models import Agent
from moltstreet.errors import MoltStreetError, NotFound, ServiceBusy
from moltstreet.ids import parse_id
from trading import order_batch, orders
from trading.order_input import OrderInput, parse_order

# The most orders one combined batch takes (as an explicit batch: trading.order_batch.MAX_BATCH).
MAX_COMBINED = order_batch.MAX_BATCH


def enabled() -> bool:
    """Whether single orders are combined (``MOLTSTREET_ORDER_COMBINING``; read per request, so tests can switch)."""
    return bool(settings.MOLTSTREET.get("ORDER_COMBINING", False))


@dataclass
class _Waiter:
    """One queued order and, once its batch has committed, its outcome (a PlaceResult or the exception it got)."""

    agent: Agent
    order: OrderInput
    done: threading.Event = field(default_factory=threading.Event)  # the outcome is set, or ``lead`` is
    lead: bool = False  # set (with ``done``) when this order's thread is to run the next batch
    outcome: Any = None


@dataclass
class _Queue:
    """One market's queue: ``busy`` while a leader runs a batch of it (the queue's lock guards both)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: deque[_Waiter] = field(default_factory=deque)
    busy: bool = False


@dataclass
class Stats:
    """Counts since the process started (or :func:`reset_stats`): ``batches`` run and ``orders`` placed in them."""

    batches: int = 0
    orders: int = 0
    largest: int = 0


_queues: dict[str, _Queue] = {}
_queues_lock = threading.Lock()
_stats = Stats()
_stats_lock = threading.Lock()


def stats() -> Stats:
    """A copy of the counts of combined batches and the orders in them (tests and benchmarks read it)."""
    with _stats_lock:
        return Stats(_stats.batches, _stats.orders, _stats.largest)


def reset_stats() -> None:
    """Start the counts of :func:`stats` again from zero."""
    with _stats_lock:
        _stats.batches = _stats.orders = _stats.largest = 0


def place(*, agent: Agent, market_id: uuid.UUID | str, **fields: Any) -> orders.PlaceResult:
    """Place an order as :func:`trading.orders.order_place` does (same arguments, result and errors), combined with
    the other orders for the same market queued in this process meanwhile into one transaction.

    Falls back to :func:`~trading.orders.order_place` itself when the fields or the market id do not parse (it
    raises the same error, counted as today) or when the caller is inside a transaction (the order must be the
    caller's to commit). Blocks until the order's batch has committed or failed."""
    try:
        order = parse_order(**fields)
        key = str(parse_id(market_id, "market"))
    except MoltStreetError:
        return orders.order_place(agent=agent, market_id=market_id, **fields)
    if connection.in_atomic_block:
        return orders.order_place(agent=agent, market_id=market_id, **fields)
    with _queues_lock:
        queue = _queues.setdefault(key, _Queue())
    me = _Waiter(agent=agent, order=order)
    with queue.lock:
        queue.waiting.append(me)
        lead = not queue.busy
        queue.busy = True
    if not lead:
        me.done.wait()
        lead = me.lead
        if lead:
            me.done.clear()  # set again with its outcome: ``done`` set means the outcome is final
    if lead:
        _lead(key, queue)
    if isinstance(me.outcome, BaseException):
        raise me.outcome
    return me.outcome


def _lead(key: str, queue: _Queue) -> None:
    """Run one batch of ``queue`` (what is queued, up to :data:`MAX_COMBINED`, the leader's own order first). Right
    after its commit (before the orders' feed publishes, which the leader then runs) or its failure, each order gets
    its outcome, the lead passes to the first order still queued (or the market goes idle) and the orders wake."""
    with queue.lock:
        batch = [queue.waiting.popleft() for _ in range(min(MAX_COMBINED, len(queue.waiting)))]
    finished = False

    def finish(outcomes: list[Any]) -> None:
        nonlocal finished
        if finished:  # already, right after the commit; whatever failed after it was the leader's own work
            return
        finished = True
        for waiter, outcome in zip(batch, outcomes, strict=True):
            waiter.outcome = outcome
        with queue.lock:
            if queue.waiting:
                successor = queue.waiting[0]
                successor.lead = True
                successor.done.set()
            else:
                queue.busy = False
        for waiter in batch:
            waiter.done.set()

    try:
        outcomes = _run(key, batch, finish)
    except BaseException as exc:  # not one order's error (a database failure): every order of the batch gets it
        outcomes = [exc] * len(batch)
    finish(outcomes)


def _run(key: str, batch: list[_Waiter], committed: Callable[[list[Any]], None]) -> list[Any]:
    """Place ``batch`` in one transaction; returns each order's outcome (a PlaceResult or the exception it got).
    ``committed`` is called with them right after the commit."""
    with _stats_lock:
        _stats.batches += 1
        _stats.orders += len(batch)
        _stats.largest = max(_stats.largest, len(batch))
    entries = [(waiter.agent, waiter.order) for waiter in batch]
    try:
        return order_batch.place_in_market(market_id=key, entries=entries, committed=committed)
    except (NotFound, ServiceBusy) as exc:  # nothing was stored; each order alone would have got it as well
        return [exc] * len(batch)
    except Exception:
        if len(batch) == 1 or any(waiter.done.is_set() for waiter in batch):
            raise  # one order's own failure, or one after the commit (the orders have their outcomes)
    # Nothing of the batch was stored: place each order on its own, so that only the culprit fails.
    outcomes: list[Any] = []
    for entry in entries:
        try:
            outcomes.append(order_batch.place_in_market(market_id=key, entries=[entry])[0])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes
