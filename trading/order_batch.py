"""Batches of orders: up to ``MAX_BATCH`` orders placed, or resting orders cancelled, in one request
(``POST /orders/batch/``, ``DELETE /orders/batch/``), each succeeding or failing on its own.

Placing: the orders of one market are matched in one transaction, one after the other in the order given, each
exactly as :func:`trading.orders.order_place` matches a single order (an order sees the book as the orders before
it left it). The markets of a batch are taken in the order of their first order, one transaction each. The lock
order of DESIGN section 6 holds across a market's orders: the market row first, then at once, ascending, every agent
any of them could trade with (:func:`_lock_counterparties`), so no order of the batch locks an agent after one with a
higher id. Cancelling: one transaction per market, the market row, then the agent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from agents.models import Agent
from markets.models import Market
from moltstreet.db import service_transaction
from moltstreet.errors import MoltStreetError, NotFound, OrderNotCancellable, ServiceBusy
from moltstreet.ids import parse_id
from trading import book_store, orders
from trading.market_tx import MarketTx
from trading.models import Order
from trading.order_input import OrderInput, parse_order

# The most orders (or order ids) one batch request may carry (Kalshi's batch limit is 20 as well).
MAX_BATCH = 20


@dataclass(frozen=True)
class OrderRequest:
    """One order of a batch as the client sent it: the market id and the order's fields as
    :func:`~trading.orders.order_place` takes them (parsed here, per order)."""

    market_id: uuid.UUID | str
    fields: dict[str, Any]


# What each entry of a batch came to: a result, or the error that entry got.
Outcome = Any  # orders.PlaceResult | Order | MoltStreetError


def order_place_batch(*, agent: Agent, requests: list[OrderRequest]) -> list[Outcome]:
    """Place ``requests`` (at most :data:`MAX_BATCH`) for ``agent``; returns, in the order given, each one's
    :class:`~trading.orders.PlaceResult` or the :class:`MoltStreetError` it got (what :func:`order_place` raises).

    An order's error changes nothing and does not stop the others. Each order is idempotent by its
    ``client_order_id`` as a single order is (a repeat answers with the original, ``created`` False), within a batch
    too. Orders of one market share one transaction: a :class:`ServiceBusy` (lock wait timed out) or another
    database failure there is every one of that market's orders' error, since none of them was stored.
    """
    if len(requests) > MAX_BATCH:
        raise AssertionError(f"at most {MAX_BATCH} orders a batch")  # the API refuses longer batches first
    outcomes: list[Outcome] = [None] * len(requests)
    parsed: dict[str, list[tuple[int, OrderInput]]] = {}
    for index, request in enumerate(requests):
        try:
            order = parse_order(**request.fields)
            market_id = str(parse_id(request.market_id, "market"))
        except MoltStreetError as exc:
            outcomes[index] = exc
            continue
        parsed.setdefault(market_id, []).append((index, order))
    for market_id, entries in parsed.items():  # in the order of each market's first order
        try:
            results = place_in_market(market_id=market_id, entries=[(agent, order) for _index, order in entries])
        except MoltStreetError as exc:  # the market's transaction failed as a whole (unknown market, lock timeout)
            results = [exc] * len(entries)
        for (index, _order), outcome in zip(entries, results, strict=True):
            outcomes[index] = outcome
    return outcomes


def place_in_market(
    *,
    market_id: str,
    entries: list[tuple[Agent, OrderInput]],
    committed: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    """Place parsed orders of one market, each ``(agent, order)``, one after the other in the order given, in one
    transaction under one market lock (the agents may differ: ``trading.combiner`` combines concurrent single
    orders this way). Returns each one's :class:`~trading.orders.PlaceResult` or the :class:`MoltStreetError` it got
    (its error changes nothing). ``committed``, if given, is called with those outcomes right after the commit,
    before the orders' own after-commit work (feed publishes, metrics). Raises :class:`NotFound` (unknown market) or
    :class:`ServiceBusy` (lock wait timed out, deadlocks persisted) for them all: then nothing was stored."""
    return _place_in_market(market_id=market_id, entries=entries, committed=committed)


@service_transaction
def _place_in_market(
    *,
    market_id: str,
    entries: list[tuple[Agent, OrderInput]],
    committed: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    results: list[Outcome] = []
    if committed is not None:  # registered first, so run first after the commit: with the list filled below
        transaction.on_commit(lambda: committed(results))
    market = book_store.lock_market(market_id)  # the first lock (DESIGN section 6); NotFound for an unknown market
    _lock_counterparties({agent.id for agent, _order in entries}, market, [order for _agent, order in entries])
    for agent, order in entries:
        try:
            results.append(_place_one(agent=agent, market_id=market.id, order=order))
        except ServiceBusy:
            raise  # the transaction is lost: every order of this market fails with it
        except MoltStreetError as exc:
            results.append(exc)
    return results


@orders.observed_place
def _place_one(*, agent: Agent, market_id: uuid.UUID, order: OrderInput) -> orders.PlaceResult:
    """One order of a batch in its market's transaction, written out at once: the next order reads the book as it
    left it. An error is raised before anything is written."""
    result, tx = orders.place_parsed(agent, market_id, order)
    if tx is not None:
        tx.flush()
    return result


def _lock_counterparties(batch_agents: set[uuid.UUID], market: Market, batch: list[OrderInput]) -> None:
    """Lock, ascending and at once, the batch's agents and every agent the batch's orders could touch in the market
    (as makers, or as owners of GTD orders found expired on the way), with the market locked: the book changes only
    by the batch itself from here, and its own orders are its agents'.

    Per queue the batch's orders cross, the orders they can reach are a prefix of the opposite queue in priority
    order: everything crossing the batch's best price on that side, until the other agents' contracts that never
    expire cover the batch's total size on that side (an order's failure or a FOK kill only leaves more of the same
    prefix untouched). GTD orders do not count towards the size, since one may expire before it is reached, nor do
    the batch's agents' own orders, which one of them may cancel as a self-trade instead of filling."""
    wanted = set(batch_agents)
    for book_side in {order.book_position[0] for order in batch}:
        on_side = [order for order in batch if order.book_position[0] == book_side]
        best = max(order.book_position[1] for order in on_side)
        needed = sum(order.size for order in on_side)
        after: Order | None = None
        while needed > 0:
            page = book_store.crossing_page(market.id, book_side, best, after=after, limit=200)
            for resting in page:
                wanted.add(resting.agent_id)
                if resting.agent_id not in batch_agents and resting.expires_at is None:
                    needed -= resting.size - resting.filled
                if needed <= 0:
                    break
            if len(page) < 200:
                break
            after = page[-1]
    MarketTx(market).prepare(wanted)


def order_cancel_batch(*, agent: Agent, order_ids: Iterable[Any]) -> list[Outcome]:
    """Cancel the agent's resting orders ``order_ids`` (at most :data:`MAX_BATCH`), releasing their reserves;
    returns, in the order given, each one's cancelled :class:`Order` or the error it got: :class:`NotFound` (unknown,
    malformed or another agent's id) or :class:`OrderNotCancellable` (no longer resting, or named twice: the second
    time it is already cancelled). One transaction per market, in the order of each market's first id.
    """
    ids = list(order_ids)
    if len(ids) > MAX_BATCH:
        raise AssertionError(f"at most {MAX_BATCH} ids a batch")
    outcomes: list[Outcome] = [None] * len(ids)
    keys: dict[int, uuid.UUID] = {}
    for index, raw in enumerate(ids):
        try:
            keys[index] = parse_id(raw, "order")
        except MoltStreetError as exc:
            outcomes[index] = exc
    found = book_store.own_orders(agent.id, keys.values())
    by_market: dict[uuid.UUID, list[int]] = {}
    for index, key in keys.items():
        if key not in found:
            outcomes[index] = NotFound.of("order", ids[index])
        else:
            by_market.setdefault(found[key].market_id, []).append(index)
    for market_id, indexes in by_market.items():
        failure: MoltStreetError | None = None
        try:
            cancelled = _cancel_in_market(agent, market_id, {keys[i] for i in indexes})
        except MoltStreetError as exc:
            cancelled, failure = {}, exc
        for index in indexes:
            key = keys[index]
            if failure is not None:
                outcomes[index] = failure
            elif key in cancelled:
                outcomes[index] = cancelled.pop(key)  # a second mention of the id finds it cancelled already
            else:
                current = book_store.own_order(agent.id, key) or found[key]
                outcomes[index] = OrderNotCancellable(detail={"order": str(key), "status": current.status})
    return outcomes


@service_transaction
def _cancel_in_market(agent: Agent, market_id: uuid.UUID, order_ids: set[uuid.UUID]) -> dict[uuid.UUID, Order]:
    market = book_store.lock_market(market_id)
    # Re-read under the market's lock: only what still rests now is cancelled.
    resting = book_store.resting_orders(market.id, agent_id=agent.id, order_ids=order_ids)
    if not resting:
        return {}
    tx = MarketTx(market)
    tx.prepare({agent.id})
    for order in resting:
        tx.end_order(order, Order.Status.CANCELLED, Order.CancelReason.USER, "cancelled")
    tx.net(agent.id)
    tx.flush()
    return {order.id: order for order in resting}
