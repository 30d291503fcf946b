"""The order service: placing and cancelling orders (DESIGN section 3).

``order_place`` parses the order (``trading.order_input``), plans the match against the book under the market lock
(``trading.matching.plan_match``), then locks the agents involved, re-checks balances and limits, and applies the
plan to a ``trading.market_tx.MarketTx``, which writes everything out in one round trip. Every service here is one
transaction (``service_transaction``) taking locks in the one order of DESIGN section 6: the market row, then the
agent rows involved by ascending id.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from markets.models import Forecast, Market, MarketEvent
from markets.services import ensure_tradable
from moltstreet import metrics
from moltstreet.db import service_transaction
from moltstreet.errors import (
    AgentSuspended,
    ClientOrderIdConflict,
    HeartbeatExpired,
    InsufficientPosition,
    InvalidRequest,
    MoltStreetError,
    NotFound,
    OpenOrderLimit,
    OrderNotAmendable,
    OrderNotCancellable,
    PostOnlyWouldCross,
    RiskLimitExceeded,
    ServiceBusy,
)
from moltstreet.ids import parse_id
from moltstreet.logs import log_context
from moltstreet.money import complement, quantize
from trading import book_store, matching
from trading.market_tx import MarketTx
from trading.models import Action, Order, Position, Side, TimeInForce, Trade
from trading.order_input import OrderInput, parse_order, parse_price, parse_size

logger = logging.getLogger(__name__)

RESTING = Order.RESTING

# --------------------------------------------------------------------------------------------------------------------
# Placing orders.


@dataclass
class PlaceResult:
    """What :func:`order_place` did: the taker ``order`` (as stored), the ``trades`` it took as taker in execution
    order, and whether it was ``created`` now (``False``: a repeated ``client_order_id`` answered with the original)."""

    order: Order
    trades: list[Trade]
    created: bool


def _repeated(earlier: Order | None, market_id: uuid.UUID | str, order: OrderInput) -> PlaceResult | None:
    """The answer to a repeated request: the agent's ``earlier`` order with the same ``client_order_id`` and the
    trades it took (``created=False``), or ``None`` when there is none. Raises :class:`ClientOrderIdConflict` if it
    was placed with other parameters."""
    if earlier is None:
        return None
    same = (
        str(earlier.market_id) == str(market_id)
        and earlier.side == order.side
        and earlier.action == order.action
        and earlier.price == order.price
        and earlier.size == order.size
        and earlier.time_in_force == order.time_in_force
        and earlier.post_only == order.post_only
    )
    if not same:
        raise ClientOrderIdConflict(detail={"client_order_id": order.client_order_id, "order": str(earlier.id)})
    return PlaceResult(order=earlier, trades=book_store.taker_trades(earlier.id), created=False)


def observed_place(place: Callable[..., PlaceResult]) -> Callable[..., PlaceResult]:
    """``order_place`` with its metrics (``moltstreet.metrics``: duration, orders placed and refused, trades) and its
    log lines carrying ``agent_id``, ``market_id`` and, once known, ``order_id``."""

    @functools.wraps(place)
    def wrapper(*, agent: Agent, market_id: uuid.UUID | str, **kwargs: Any) -> PlaceResult:
        started = time.perf_counter()
        with log_context(agent_id=agent.id, market_id=market_id):
            try:
                result = place(agent=agent, market_id=market_id, **kwargs)
            except MoltStreetError as exc:
                metrics.ORDER_SECONDS.labels("refused").observe(time.perf_counter() - started)
                metrics.ORDERS_REFUSED.labels(exc.code).inc()
                logger.debug("order refused: %s", exc.code, extra={"code": exc.code})
                raise
            except Exception:
                metrics.ORDER_SECONDS.labels("error").observe(time.perf_counter() - started)
                raise
            order = result.order
            metrics.ORDER_SECONDS.labels("created" if result.created else "duplicate").observe(
                time.perf_counter() - started
            )
            if result.created:
                trades, contracts = len(result.trades), sum(t.size for t in result.trades)

                def count() -> None:
                    metrics.ORDERS_PLACED.labels(order.time_in_force, order.status).inc()
                    if trades:
                        metrics.TRADES.inc(trades)
                        metrics.CONTRACTS.inc(contracts)

                # Counters count committed orders; outside a transaction Django runs this at once.
                transaction.on_commit(count)
            logger.debug(
                "order %s %s %s %s x%s: %s, %d trade(s)%s",
                order.id,
                order.action,
                order.side,
                order.price,
                order.size,
                order.status,
                len(result.trades),
                "" if result.created else " (repeated client_order_id)",
                extra={"order_id": str(order.id)},
            )
        return result

    return wrapper


@observed_place
@service_transaction
def order_place(
    *,
    agent: Agent,
    market_id: uuid.UUID | str,
    side: str,
    action: str,
    price: Any,
    size: Any,
    time_in_force: str = TimeInForce.GTC,
    expires_at: datetime | None = None,
    post_only: bool = False,
    client_order_id: str | None = None,
    forecast: Any = None,
    reasoning: str = "",
) -> PlaceResult:
    """Place a limit order and match it against the book (DESIGN section 3).

    ``side`` YES or NO, ``action`` BUY or SELL, ``price`` the limit on the order's own side (credits per contract,
    0.01-0.99 on the 0.01 tick), ``size`` whole contracts. A BUY reserves ``price * size`` credits; a SELL reserves
    ``size`` held, unreserved contracts. Trades execute at the maker's price. ``time_in_force``: GTC, GTD (needs a
    future ``expires_at``), IOC, FOK. ``post_only`` rejects an order that would cross. A repeated
    ``client_order_id`` returns the original order (``created=False``) and creates nothing. ``forecast`` (0-1)
    records the agent's stated probability of YES.

    Returns :class:`PlaceResult` with the order and the trades it took as taker.
    Raises :class:`InvalidRequest`, :class:`NotFound` (market), :class:`MarketClosed`, :class:`AgentSuspended`,
    :class:`HeartbeatExpired` (its dead-man's switch passed its deadline), :class:`InsufficientBalance`,
    :class:`InsufficientPosition`, :class:`PostOnlyWouldCross`, :class:`ClientOrderIdConflict`,
    :class:`OpenOrderLimit`, :class:`RiskLimitExceeded` (``position_limit``, ``reserved_limit``),
    :class:`ServiceBusy` (lock timeout).
    """
    # 1. Parse: every field against its rule (trading.order_input), before anything is read.
    order = parse_order(
        side=side,
        action=action,
        price=price,
        size=size,
        time_in_force=time_in_force,
        expires_at=expires_at,
        post_only=post_only,
        client_order_id=client_order_id,
        forecast=forecast,
        reasoning=reasoning,
    )
    result, tx = place_parsed(agent, market_id, order)
    if tx is not None:
        tx.flush()
    return result


def place_parsed(
    agent: Agent, market_id: uuid.UUID | str, order: OrderInput, *, replacing: Order | None = None
) -> tuple[PlaceResult, MarketTx | None]:
    """Plan and apply a parsed order in the caller's transaction, up to writing it out: the caller flushes the
    returned :class:`MarketTx` (``None`` when a repeated ``client_order_id`` answers with the original order), or
    does not, for a preview (:func:`order_preview`). Nothing is written before the flush, so an error leaves the
    transaction as it found it.

    ``replacing``: the agent's resting order an amend cancels in the same transaction (reason ``amended``) before
    this order, which takes over its ``client_order_id``, reserves in its place and does not count as another
    resting order. Raises what :func:`order_place` raises."""
    now = timezone.now()
    book_side, book_price = order.book_position
    page = min(order.size, 20) + 1

    # 2. Plan. One round trip: lock the market row (the first lock, DESIGN section 6), read the first page of the
    # orders this one crosses (the book cannot change until commit) and an earlier order with this client id.
    context = book_store.lock_for_order(
        market_id=market_id,
        agent_id=agent.id,
        book_side=book_side,
        book_price=book_price,
        page=page,
        client_order_id=order.client_order_id if replacing is None else None,
    )
    if (repeated := _repeated(context.earlier, market_id, order)) is not None:
        return repeated, None
    # After the idempotency check: a retry of a GTD order whose expiry has passed since returns the original.
    if order.time_in_force == TimeInForce.GTD and order.expires_at is not None and order.expires_at <= now:
        raise InvalidRequest(
            "A GTD order needs expires_at in the future.", detail={"expires_at": str(order.expires_at)}
        )
    ensure_tradable(context.market, now)
    tx = MarketTx(context.market)
    plan = matching.plan_match(
        agent_id=agent.id,
        book_side=book_side,
        book_price=book_price,
        size=order.size,
        resting=tx.crossing(book_side, book_price, context.crossing, page),
        now=now,
    )
    if order.post_only and (plan.fills or plan.self_trade_cancels):
        raise PostOnlyWouldCross(detail={"price": str(order.price)})
    fok_killed = order.time_in_force == TimeInForce.FOK and plan.filled < order.size
    if fok_killed:  # fill or kill: nothing trades, nothing else changes
        plan = matching.MatchPlan()

    # In one more round trip: lock every agent involved (ascending), read their positions and the book, count the
    # taker's resting orders (the open-order limit) and look for a twin of this request that committed first.
    parties = tx.prepare(
        {agent.id} | {o.agent_id for o in plan.touched},
        count_resting_of=agent.id if order.may_rest and replacing is None else None,
        client_order=(agent.id, order.client_order_id) if order.client_order_id and replacing is None else None,
    )
    taker_agent = tx.agents[agent.id]
    if taker_agent.is_suspended:
        raise AgentSuspended()
    if taker_agent.heartbeat_deadline is not None and taker_agent.heartbeat_deadline <= now:
        raise HeartbeatExpired(detail={"deadline": taker_agent.heartbeat_deadline.isoformat()})
    if (twin := _repeated(parties.earlier, market_id, order)) is not None:
        return twin, None  # a concurrent twin of this request committed first
    if replacing is not None:
        # The amended order leaves the book first: its reserve is free for the replacement (to the cent).
        tx.end_order(replacing, Order.Status.CANCELLED, Order.CancelReason.AMENDED, "cancelled")
    _check_limits(tx, taker_agent, order, resting=parties.resting_count, replacing=replacing)

    # 3. Apply the plan to the working set; the caller writes it out in one round trip.
    taker = _apply(tx, taker_agent, order, plan, fok_killed)
    if replacing is not None:
        replacing.replaced_by = taker
    return PlaceResult(order=taker, trades=tx.trades, created=True), tx


def _apply(tx: MarketTx, agent: Agent, order: OrderInput, plan: matching.MatchPlan, fok_killed: bool) -> Order:
    """Apply a match plan to ``tx``: take expired and self-trade orders out of the book, reserve the taker's
    collateral (credits for a BUY, contracts for a SELL), execute each fill at the maker's price, then rest, fill or
    cancel the taker's remainder as its time in force says, and net every party's YES/NO pairs. Returns the taker's
    order. Raises :class:`InsufficientBalance` or :class:`InsufficientPosition` when the collateral is not there."""
    for resting in plan.expired:
        tx.end_order(resting, Order.Status.EXPIRED, Order.CancelReason.EXPIRED, "expired")
    for resting in plan.self_trade_cancels:
        tx.end_order(resting, Order.Status.CANCELLED, Order.CancelReason.SELF_TRADE, "cancelled")
    for agent_id in {o.agent_id for o in plan.touched}:
        # A selling taker reserves its contracts first (below): netting now could merge away what it offers.
        if agent_id != agent.id or order.action == Action.BUY:
            tx.net(agent_id)
    _reserve(tx, agent, order)

    taker = Order(id=uuid.uuid4(), market=tx.market, agent=agent, seq=0, updated_seq=0, **order.stored_fields())
    taker_seq = tx.log.add(MarketEvent.Kind.ORDER, {})  # reserved now: the taker's time priority
    taker.seq = taker.updated_seq = taker_seq
    tx.new_orders.append(taker)

    for fill in plan.fills:
        _execute(tx, taker, fill)

    left = taker.size - taker.filled
    if taker.filled == taker.size:
        taker.status = Order.Status.FILLED
        tx.order_event(taker, "filled", seq=taker_seq)
    elif fok_killed or order.time_in_force == TimeInForce.IOC:
        tx.release(taker)
        taker.status = Order.Status.CANCELLED
        taker.cancel_reason = Order.CancelReason.FOK_UNFILLED if fok_killed else Order.CancelReason.IOC_REMAINDER
        tx.order_event(taker, "cancelled", seq=taker_seq)
    else:
        taker.status = Order.Status.PARTIAL if taker.filled else Order.Status.OPEN
        tx.order_event(taker, "placed", level_delta=left, seq=taker_seq)

    for agent_id in {taker.agent_id} | {f.maker.agent_id for f in plan.fills}:
        tx.net(agent_id)
    if order.forecast is not None:
        tx.forecasts.append(
            Forecast(
                agent=agent,
                market=tx.market,
                probability=order.forecast,
                reasoning=order.reasoning,
                reference_price=tx.market.reference_price,  # the source's price beside it (brier_vs_market)
            )
        )
    return taker


def _reserve(tx: MarketTx, agent: Agent, order: OrderInput) -> None:
    """Set aside the whole order's collateral: ``price * size`` credits for a BUY, ``size`` held contracts of its
    side for a SELL. Raises :class:`InsufficientBalance` / :class:`InsufficientPosition`."""
    if order.action == Action.BUY:
        tx.cash.reserve(agent, order.price * order.size)
        return
    pos = tx.position(agent.id)
    held, reserved = (pos.yes_shares, pos.yes_reserved) if order.side == Side.YES else (pos.no_shares, pos.no_reserved)
    if held - reserved < order.size:
        raise InsufficientPosition(
            f"Selling {order.size} {order.side} needs {order.size} unreserved contracts; {held - reserved} are available.",
            detail={"side": order.side, "required": order.size, "available": held - reserved},
        )
    if order.side == Side.YES:
        pos.yes_reserved += order.size
    else:
        pos.no_reserved += order.size


def _check_limits(
    tx: MarketTx, agent: Agent, order: OrderInput, *, resting: int | None, replacing: Order | None = None
) -> None:
    """Refuse an order, before anything is matched, that would break a limit (issue 4; docs/decisions.md):

    * ``MAX_OPEN_ORDERS`` resting orders per agent across all markets, for an order that may rest (GTC, GTD):
      :class:`OpenOrderLimit` (409 ``open_order_limit``);
    * the agent's ``max_reserved`` credits reserved by resting BUY orders, this order's ``price * size`` included:
      :class:`RiskLimitExceeded` (409 ``reserved_limit``);
    * the agent's ``max_position`` contracts of ``side`` in this market, counting contracts held, the rest of its
      resting BUY orders on that side and this order's ``size`` (the most it could come to hold):
      :class:`RiskLimitExceeded` (409 ``position_limit``).

    SELL orders only reduce exposure and are never refused by the risk limits. The caller holds the agent's row
    lock, so the counts cannot change under us (every order an agent places locks its row). ``replacing``, an order
    an amend cancels in this transaction, no longer counts among the resting BUY orders (it is not written yet).
    """
    if resting is not None:
        limit = settings.MOLTSTREET["MAX_OPEN_ORDERS"]
        if resting >= limit:
            raise OpenOrderLimit(
                f"An agent may have at most {limit} resting orders; cancel some first.",
                detail={"max_open_orders": limit},
            )
    if order.action != Action.BUY:
        return
    side, price, size = order.side, order.price, order.size
    if agent.max_reserved is not None and agent.locked_balance + price * size > agent.max_reserved:
        raise RiskLimitExceeded(
            f"This order would reserve {quantize(agent.locked_balance + price * size)} credits; this agent's limit "
            f"is {agent.max_reserved}.",
            code="reserved_limit",
            detail={
                "max_reserved": str(agent.max_reserved),
                "reserved": str(agent.locked_balance),
                "required": str(quantize(price * size)),
            },
        )
    if agent.max_position is not None:
        pos = tx.position(agent.id)
        held = pos.yes_shares if side == Side.YES else pos.no_shares
        resting = book_store.resting_buy_contracts(agent.id, tx.market.id, side)
        if replacing is not None and replacing.action == Action.BUY and replacing.side == side:
            resting -= replacing.size - replacing.filled
        if held + resting + size > agent.max_position:
            raise RiskLimitExceeded(
                f"This order could bring the position to {held + resting + size} {side} contracts in this market; "
                f"this agent's limit is {agent.max_position}.",
                code="position_limit",
                detail={
                    "side": side,
                    "max_position": agent.max_position,
                    "held": held,
                    "resting_buys": resting,
                    "size": size,
                },
            )


def _execute(tx: MarketTx, taker: Order, fill: matching.Fill) -> None:
    """Apply one fill: move cash and contracts for both parties per DESIGN section 3's table, record the trade."""
    maker, qty, x = fill.maker, fill.size, fill.yes_price
    yes_party, no_party = (taker, maker) if taker.book_side == Side.YES else (maker, taker)
    trade = Trade(
        id=uuid.uuid4(),
        market=tx.market,
        price=x,
        size=qty,
        taker_side=taker.book_side,
        kind=matching.trade_kind(yes_party.action, no_party.action),
        maker_order=maker,
        taker_order=taker,
        maker_agent_id=maker.agent_id,
        taker_agent_id=taker.agent_id,
        seq=0,
    )
    ref = str(trade.id)
    # The YES-bid party buys YES at x or sells NO at 1 - x; the NO-bid party buys NO at 1 - x or sells YES at x.
    if yes_party.action == Action.BUY:
        tx.buy(yes_party, qty, x, ref)
    else:
        tx.sell(yes_party, qty, complement(x), ref)
    if no_party.action == Action.BUY:
        tx.buy(no_party, qty, complement(x), ref)
    else:
        tx.sell(no_party, qty, x, ref)
    maker.filled += qty
    taker.filled += qty
    maker.status = Order.Status.FILLED if maker.filled == maker.size else Order.Status.PARTIAL
    trade.seq = tx.log.add(
        MarketEvent.Kind.TRADE,
        {
            "trade": {
                "id": ref,
                "price": str(x),
                "size": qty,
                "taker_side": taker.book_side,
                "kind": trade.kind,
                "maker_order": str(maker.id),
                "taker_order": str(taker.id),
                # Private: the live feed strips these from public messages and routes fills to each agent's channel.
                "maker_agent": str(maker.agent_id),
                "taker_agent": str(taker.agent_id),
                "maker_side": maker.side,
                "maker_action": maker.action,
                "taker_side_intent": taker.side,
                "taker_action": taker.action,
            }
        },
    )
    if tx.agents[maker.agent_id].is_linked_to(tx.agents[taker.agent_id]):
        # Between linked agents (one address, one owner): flagged, and earning neither of them rank (DESIGN 4a).
        trade.linked = True
        for party in (yes_party, no_party):
            tx.linked_fill(party, qty, x if party.side == Side.YES else complement(x))
    tx.trades.append(trade)
    tx.order_event(maker, maker.status, level_delta=-qty)
    tx.market.last_price = x
    tx.market.volume += qty
    tx.market.trade_count += 1
    tx.market_fields.update({"last_price", "volume", "trade_count"})


# --------------------------------------------------------------------------------------------------------------------
# Cancelling.


def cancel_resting_in_market(
    market_id: uuid.UUID, reason: str, *, agent_id: uuid.UUID | None = None, order_id: uuid.UUID | None = None
) -> list[Order]:
    """Cancel the resting orders of one market, the agent's or the one order, releasing their reserves; locks the
    market, then their agents. Returns the cancelled orders (none if nothing is resting any more)."""
    market = book_store.lock_market(market_id)
    # Re-read under the market lock: only what is still resting now is cancelled.
    orders = book_store.resting_orders(market.id, agent_id=agent_id, order_id=order_id)
    if not orders:
        return []
    tx = MarketTx(market)
    tx.prepare({o.agent_id for o in orders})
    for order in orders:
        tx.end_order(order, Order.Status.CANCELLED, reason, "cancelled")
    for agent_id in tx.agents:
        tx.net(agent_id)
    tx.flush()
    return orders


def order_cancel(*, agent: Agent, order_id: uuid.UUID | str) -> Order:
    """Cancel one of the agent's resting orders and release its reserve.

    Raises :class:`NotFound` for an unknown order or another agent's order, :class:`OrderNotCancellable` when it is
    already filled, cancelled or expired.
    """
    with log_context(agent_id=agent.id, order_id=order_id):
        order = _order_cancel(agent=agent, order_id=order_id)
        logger.debug("order %s cancelled", order.id, extra={"market_id": str(order.market_id)})
    return order


@service_transaction
def _order_cancel(*, agent: Agent, order_id: uuid.UUID | str) -> Order:
    order = book_store.own_order(agent.id, order_id)
    if order is None:
        raise NotFound.of("order", order_id)
    cancelled = cancel_resting_in_market(order.market_id, Order.CancelReason.USER, order_id=order.id)
    if not cancelled:
        current = book_store.own_order(agent.id, order.id) or order  # filled, cancelled or expired meanwhile
        raise OrderNotCancellable(detail={"order": str(order.id), "status": current.status})
    return cancelled[0]


@service_transaction
def order_cancel_all(
    *, agent: Agent, market_id: uuid.UUID | str | None = None, reason: str = Order.CancelReason.USER
) -> list[Order]:
    """Cancel every resting order of the agent, optionally only in one market; returns the cancelled orders.

    All its markets are locked first, in ascending id order, then the agent (DESIGN section 6). Raises
    :class:`NotFound` for a malformed ``market_id``.
    """
    only = parse_id(market_id, "market") if market_id is not None else None
    market_ids = book_store.resting_markets(agent.id, only)
    # Every market row first, then the agent: holding the agent while waiting for the next market deadlocks with a
    # trade in that market, which holds the market and waits for the agent (DESIGN section 6).
    for mid in market_ids:
        book_store.lock_market(mid)
    cancelled: list[Order] = []
    for mid in market_ids:
        cancelled += cancel_resting_in_market(mid, reason, agent_id=agent.id)
    return cancelled


# --------------------------------------------------------------------------------------------------------------------
# Amending.


@dataclass
class AmendResult:
    """What :func:`order_amend` did: ``order`` is the order as it now stands (the same order, smaller, or its
    replacement), ``replaced`` the order an amend cancelled and replaced (``None`` when the order was amended in
    place, or not changed at all), ``trades`` what the replacement took as taker on arrival."""

    order: Order
    replaced: Order | None
    trades: list[Trade]


@service_transaction
def order_amend(*, agent: Agent, order_id: uuid.UUID | str, price: Any = None, size: Any = None) -> AmendResult:
    """Change a resting order's limit ``price`` (on its own side, 0.01-0.99 on the tick) and/or ``size`` (the new
    total in contracts, filled ones included, as the order's ``size`` field counts them: Kalshi's amend ``count``).

    * Only a smaller ``size`` at the same price: amended in place. The order keeps its place in the queue; the reserve
      shrinks by the contracts taken off (``price`` x contracts for a BUY, the contracts for a SELL). Event
      ``amended``.
    * A new price, or a larger size: cancel and replace, atomically in one transaction. The order is cancelled
      (reason ``amended``, ``replaced_by`` the new order) and a new order with the same side, action, time in force,
      ``expires_at``, ``post_only`` and ``client_order_id`` is placed for ``size - filled`` contracts at the new
      price, behind every order already at that price. It is matched like any order (it may trade at once, or be
      refused as ``post_only_would_cross``), and its reserve replaces the old one to the cent.
    * Same price and size: nothing changes.

    Raises :class:`InvalidRequest` (neither field, or a malformed one: ``invalid_price``, ``invalid_size``; a
    ``size`` not above the contracts already filled), :class:`NotFound` (unknown or another agent's order),
    :class:`OrderNotAmendable` (no longer resting; ``detail.replaced_by`` when an earlier amend replaced it), and
    for a replacement what :func:`order_place` raises.
    """
    with log_context(agent_id=agent.id, order_id=order_id):
        if price is None and size is None:
            raise InvalidRequest(
                "Send price, size or both.", detail={"non_field_errors": ["Send price, size or both."]}
            )
        new_price = parse_price(price) if price is not None else None
        new_size = parse_size(size) if size is not None else None
        found = book_store.own_order(agent.id, order_id)
        if found is None:
            raise NotFound.of("order", order_id)
        # The market first (DESIGN section 6), then the order again: only what still rests now can be amended.
        market = book_store.lock_market(found.market_id)
        current = book_store.resting_orders(market.id, order_id=found.id)
        if not current:
            found = book_store.own_order(agent.id, found.id) or found
            detail: dict[str, Any] = {"order": str(found.id), "status": found.status}
            if found.replaced_by_id is not None:
                detail["replaced_by"] = str(found.replaced_by_id)
            raise OrderNotAmendable(detail=detail)
        order = current[0]
        new_price = order.price if new_price is None else new_price
        new_size = order.size if new_size is None else new_size
        if new_size <= order.filled:
            raise InvalidRequest(
                f"size must be more than the {order.filled} contracts already filled; cancel the order instead.",
                code="invalid_size",
                detail={"size": new_size, "filled": order.filled},
            )
        if new_price == order.price and new_size == order.size:
            return AmendResult(order=order, replaced=None, trades=[])
        if new_price == order.price and new_size < order.size:
            _amend_in_place(market, order, new_size)
            logger.debug("order %s amended to %s contracts", order.id, new_size)
            return AmendResult(order=order, replaced=None, trades=[])
        replacement = OrderInput(
            side=order.side,
            action=order.action,
            price=new_price,
            size=new_size - order.filled,
            time_in_force=order.time_in_force,
            expires_at=order.expires_at,
            post_only=order.post_only,
            client_order_id=order.client_order_id,
            forecast=None,
            reasoning="",
        )
        result, tx = place_parsed(agent, market.id, replacement, replacing=order)
        assert tx is not None  # a replacement never answers as a repeated client_order_id
        tx.flush()
        logger.debug("order %s replaced by %s at %s", order.id, result.order.id, new_price)
        return AmendResult(order=result.order, replaced=order, trades=result.trades)


def _amend_in_place(market: Market, order: Order, size: int) -> None:
    """Take ``order.size - size`` contracts off a resting order, keeping its ``seq`` (its time priority), and give
    their reserve back; the agent's pairs are netted again (a SELL's contracts may be free to merge now)."""
    tx = MarketTx(market)
    tx.prepare({order.agent_id})
    taken_off = order.size - size
    tx.release(order, taken_off)
    order.size = size
    tx.order_event(order, "amended", level_delta=-taken_off)
    tx.net(order.agent_id)
    tx.flush()


# --------------------------------------------------------------------------------------------------------------------
# Previewing.


@dataclass
class Preview:
    """What :func:`order_preview` found an order would do now, had it been sent instead.

    ``error`` is the error it would get (nothing else is set then). Otherwise ``order`` is the order as it would
    stand after matching (unsaved; ``created`` False when a repeated ``client_order_id`` would answer with the
    stored original), ``trades`` the trades it would take in execution order, ``self_trade_cancels`` the agent's
    own resting orders it would cancel, ``reserve_credits``/``reserve_contracts`` what its resting remainder would
    keep reserved, ``agent`` the agent's balance and ``position`` its position in the market as they would be."""

    error: MoltStreetError | None = None
    order: Order | None = None
    created: bool = True
    trades: list[Trade] = field(default_factory=list)
    self_trade_cancels: list[Order] = field(default_factory=list)
    reserve_credits: Decimal = Decimal("0.00")
    reserve_contracts: int = 0
    agent: Agent | None = None
    position: Position | None = None


def order_preview(*, agent: Agent, market_id: uuid.UUID | str, **fields: Any) -> Preview:
    """What :func:`order_place` would do with these arguments now (``fields`` as it takes them), without doing it:
    the same parsing, locks, matching plan, limit and collateral checks, up to the write, which never happens. No
    order, trade, event, sequence number or feed message is stored; the locks are held as briefly as an order's.

    A preview followed at once by the same order, with nothing else happening between, predicts its fills exactly.
    Returns a :class:`Preview`, with ``error`` set to the :class:`MoltStreetError` the order would get. Raises only
    :class:`ServiceBusy` (a lock wait timed out: retry).
    """
    try:
        return _preview(agent=agent, market_id=market_id, fields=fields)
    except ServiceBusy:
        raise
    except MoltStreetError as exc:
        return Preview(error=exc)


@service_transaction
def _preview(*, agent: Agent, market_id: uuid.UUID | str, fields: dict[str, Any]) -> Preview:
    order = parse_order(**fields)
    result, tx = place_parsed(agent, market_id, order)
    # Nothing is written (no flush), and should anything have been, it goes: a preview changes nothing.
    transaction.set_rollback(True)
    if tx is None:  # a repeated client_order_id: the stored original, as it stands
        return Preview(order=result.order, created=False, trades=result.trades)
    taker = result.order
    left = taker.size - taker.filled if taker.is_resting else 0
    return Preview(
        order=taker,
        trades=result.trades,
        self_trade_cancels=[o for o in tx.orders.values() if o.cancel_reason == Order.CancelReason.SELF_TRADE],
        reserve_credits=quantize(taker.price * left) if order.action == Action.BUY else Decimal("0.00"),
        reserve_contracts=left if order.action == Action.SELL else 0,
        agent=tx.agents[agent.id],
        position=tx.position(agent.id),
    )
