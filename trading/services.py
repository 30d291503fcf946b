"""Write services of the exchange: placing and cancelling orders, closing markets, suspending agents (resolving them
is ``trading.resolution``).

Every service here is one transaction (``service_transaction``) taking locks in the one order of DESIGN section 6:
the market row, then the agent rows involved by ascending id. Fills are computed under the market lock first
(``trading.matching.plan_match``), then the agents are locked and balances re-checked before anything is applied.
Orders and positions of a market change only under its market lock, so they need no locks of their own.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from agents.models import Agent, LedgerEntry
from agents.services import CashBook, lock_agents
from markets.models import Forecast, Market, MarketEvent
from markets.services import (
    EventLog,
    ensure_tradable,
    lock_market,
    market_payload,
    parse_probability,
)
from moltstreet import metrics
from moltstreet.db import (
    Scalar,
    Select,
    fetch_rows,
    fetch_together,
    insert_rows,
    pipelined,
    placeholders,
    service_transaction,
    update_rows,
    upsert_rows,
)
from moltstreet.errors import (
    AgentSuspended,
    ClientOrderIdConflict,
    InsufficientPosition,
    InvalidRequest,
    MarketAlreadyResolved,
    MoltStreetError,
    NotFound,
    OpenOrderLimit,
    OrderNotCancellable,
    PostOnlyWouldCross,
    RiskLimitExceeded,
)
from moltstreet.ids import parse_id
from moltstreet.logs import log_context
from moltstreet.money import CENT, MAX_PRICE, MIN_PRICE, ONE, complement, quantize
from trading import matching
from trading.models import Action, BookLevel, Order, Position, Side, TimeInForce, Trade

logger = logging.getLogger(__name__)

RESTING = Order.RESTING
# Priority within a queue: best price first, then earliest arrival (DESIGN section 3).
CROSSING_ORDER = "book_price DESC, seq"
# Test-only switch for the concurrency suite's negative control: with it off, no row is locked (never in production).
LOCKING_ENABLED = True


# --------------------------------------------------------------------------------------------------------------------
# Input parsing shared by the API, the management commands and the tests.


def parse_price(value: Any) -> Decimal:
    """A YES or NO limit price: decimal string or number in [0.01, 0.99] on the 0.01 tick.

    Raises :class:`InvalidRequest` (code ``invalid_price``) otherwise.
    """
    try:
        price = Decimal(str(value).strip()) if not isinstance(value, bool) else None
    except (InvalidOperation, ValueError, TypeError):
        price = None
    if price is None or not price.is_finite():
        raise InvalidRequest(
            "price must be a decimal between 0.01 and 0.99.", code="invalid_price", detail={"price": str(value)}
        )
    if price < MIN_PRICE or price > MAX_PRICE:
        raise InvalidRequest("price must be between 0.01 and 0.99.", code="invalid_price", detail={"price": str(value)})
    if price != price.quantize(CENT):
        raise InvalidRequest(
            "price must be on the 0.01 tick.", code="invalid_price", detail={"price": str(value), "tick": "0.01"}
        )
    return price.quantize(CENT)


def parse_size(value: Any) -> int:
    """Whole contracts from 1 to ``MAX_ORDER_SIZE``; raises :class:`InvalidRequest` (code ``invalid_size``)."""
    limit = settings.MOLTSTREET["MAX_ORDER_SIZE"]
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 20:
            value = int(value.strip())
        else:
            raise InvalidRequest(
                "size must be a whole number of contracts.", code="invalid_size", detail={"size": str(value)}
            )
    if value < 1 or value > limit:
        raise InvalidRequest(
            f"size must be between 1 and {limit} contracts.", code="invalid_size", detail={"size": value, "max": limit}
        )
    return value


# --------------------------------------------------------------------------------------------------------------------
# The working set of one transaction on one locked market.


def _order_snapshot(order: Order) -> dict[str, Any]:
    return {
        "id": str(order.id),
        "agent": str(order.agent_id),
        "side": order.side,
        "action": order.action,
        "price": str(order.price),
        "size": order.size,
        "filled": order.filled,
        "status": order.status,
        "book_side": order.book_side,
        "book_price": str(order.book_price),
    }


@dataclass
class MarketTx:
    """Everything one transaction changes in one locked market, written out once by :meth:`flush`.

    ``levels`` tracks the absolute resting size of every book level the transaction touches, so each order event
    carries its level's new size (what the live feed's ``book`` messages publish).
    """

    market: Market
    agents: dict[uuid.UUID, Agent] = field(default_factory=dict)
    cash: CashBook = field(default_factory=CashBook)
    positions: dict[uuid.UUID, Position] = field(default_factory=dict)
    new_positions: set[uuid.UUID] = field(default_factory=set)
    orders: dict[uuid.UUID, Order] = field(default_factory=dict)
    new_orders: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    levels: dict[tuple[str, Decimal], int] = field(default_factory=dict)
    levels_loaded: dict[tuple[str, Decimal], int] | None = None
    market_fields: set[str] = field(default_factory=set)
    linked_agents: set[uuid.UUID] = field(default_factory=set)  # whose linked_pnl a trade with a linked agent moved

    def __post_init__(self) -> None:
        self.log = EventLog(self.market)

    # -- locks and rows ------------------------------------------------------------------------------------------
    def position(self, agent_id: uuid.UUID) -> Position:
        if agent_id not in self.positions:
            self.load_positions([agent_id])
        return self.positions[agent_id]

    def load_positions(self, agent_ids) -> None:
        missing = set(agent_ids) - set(self.positions)
        if not missing:
            return
        ids = sorted(missing)
        for pos in fetch_rows(
            Position, f"market_id = %s AND agent_id IN ({placeholders(ids)})", [self.market.id, *ids]
        ):
            self.positions[pos.agent_id] = pos
        for agent_id in missing - set(self.positions):
            self.positions[agent_id] = Position(agent_id=agent_id, market=self.market)
            self.new_positions.add(agent_id)

    def prepare(self, agent_ids, *extra: Select | Scalar) -> list[Any]:
        """Lock the agents (ascending, after the market: DESIGN section 6), read their positions in this market and
        the book levels, and run the ``extra`` reads, all in one round trip; returns the ``extra`` results."""
        wanted = sorted(set(agent_ids) - set(self.agents))
        if self.agents and wanted and wanted[0] < max(self.agents):
            raise AssertionError("agents must be locked in one ascending batch")
        positions = sorted(set(agent_ids) - set(self.positions))
        reads: list[Select | Scalar] = []
        if wanted:
            reads.append(
                Select(Agent, f"id IN ({placeholders(wanted)})", wanted, order_by="id", for_update=LOCKING_ENABLED)
            )
        if positions:
            where = f"market_id = %s AND agent_id IN ({placeholders(positions)})"
            reads.append(Select(Position, where, [self.market.id, *positions]))
        book = self.levels_loaded is None
        if book:
            reads.append(Select(BookLevel, "market_id = %s", [self.market.id]))
        results = fetch_together(*reads, *extra)
        if wanted:
            self.agents.update({a.id: a for a in results.pop(0)})
        if positions:
            found = {pos.agent_id: pos for pos in results.pop(0)}
            for agent_id in positions:
                if agent_id in found:
                    self.positions[agent_id] = found[agent_id]
                else:
                    self.positions[agent_id] = Position(agent_id=agent_id, market=self.market)
                    self.new_positions.add(agent_id)
        if book:
            for level in results.pop(0):
                self.levels[(level.book_side, level.price)] = level.size
            self.levels_loaded = dict(self.levels)
        return results

    def crossing(
        self, book_side: str, book_price: Decimal, page: int = 20, first: list[Order] | None = None
    ) -> Iterator[Order]:
        """The resting orders of the queue opposite ``book_side`` that cross ``book_price``, in priority order (best
        price, then earliest), read a page at a time (keyset) as the matching walks them. ``first`` is the first
        page when it was read already (:func:`crossing_read`)."""
        after: list[Any] = []
        while True:
            if first is not None:
                rows, first = first, None
            else:
                where, params = _crossing_where(self.market.id, book_side, book_price, after)
                rows = fetch_rows(Order, where, params, order_by=CROSSING_ORDER, limit=page)
            yield from rows
            if len(rows) < page:
                return
            last = rows[-1]
            after = [last.book_price, last.book_price, last.seq]
            page = 200

    # -- events --------------------------------------------------------------------------------------------------
    def order_event(self, order: Order, event: str, level_delta: int = 0, seq: int | None = None) -> int:
        """Record an order change; ``level_delta`` is the change of resting contracts at the order's book level."""
        key = (order.book_side, order.book_price)
        data: dict[str, Any] = {"event": event, "order": _order_snapshot(order)}
        if level_delta:
            if self.levels_loaded is None:
                raise AssertionError("prepare() before changing resting orders")
            self.levels[key] = self.levels.get(key, 0) + level_delta
            data["level"] = {"side": key[0], "price": str(key[1]), "size": self.levels[key]}
        if seq is None:
            seq = self.log.add(MarketEvent.Kind.ORDER, data)
        else:  # fill in an event whose sequence number was reserved earlier
            next(e for e in self.log.events if e.seq == seq).data = data
        order.updated_seq = seq
        if order.id not in {o.id for o in self.new_orders}:
            self.orders[order.id] = order
        return seq

    # -- money and contracts -------------------------------------------------------------------------------------
    def buy(self, order: Order, qty: int, paid: Decimal, reference: str) -> None:
        """The order's agent pays ``paid`` per contract for ``qty`` contracts of ``order.side``; its reserve shrinks
        by the limit price, so any price improvement returns to its available balance."""
        agent = self.agents[order.agent_id]
        pos = self.position(order.agent_id)
        cost = quantize(paid * qty)
        self.cash.release(agent, order.price * qty)
        self.cash.move(
            agent,
            -cost,
            LedgerEntry.Kind.TRADE,
            market_id=self.market.id,
            reference=reference,
            memo=f"buy {qty} {order.side} @ {paid}",
        )
        if order.side == Side.YES:
            pos.yes_shares += qty
            pos.yes_cost += cost
        else:
            pos.no_shares += qty
            pos.no_cost += cost

    def sell(self, order: Order, qty: int, received: Decimal, reference: str) -> None:
        """The order's agent delivers ``qty`` reserved contracts of ``order.side`` for ``received`` each."""
        agent = self.agents[order.agent_id]
        pos = self.position(order.agent_id)
        proceeds = quantize(received * qty)
        self.cash.move(
            agent,
            proceeds,
            LedgerEntry.Kind.TRADE,
            market_id=self.market.id,
            reference=reference,
            memo=f"sell {qty} {order.side} @ {received}",
        )
        basis = self._remove(pos, order.side, qty, reserved=True)
        pos.realized_pnl += proceeds - basis

    @staticmethod
    def _remove(pos: Position, side: str, qty: int, *, reserved: bool) -> Decimal:
        """Take ``qty`` contracts out of a position at their average cost; returns the cost basis removed."""
        shares = pos.yes_shares if side == Side.YES else pos.no_shares
        cost = pos.yes_cost if side == Side.YES else pos.no_cost
        basis = cost if qty == shares else quantize(cost * qty / shares)
        if side == Side.YES:
            pos.yes_shares -= qty
            pos.yes_cost -= basis
            if reserved:
                pos.yes_reserved -= qty
        else:
            pos.no_shares -= qty
            pos.no_cost -= basis
            if reserved:
                pos.no_reserved -= qty
        return basis

    def net(self, agent_id: uuid.UUID) -> None:
        """Merge the agent's unreserved YES and NO contracts pairwise into 1.00 credit each (DESIGN section 3)."""
        pos = self.position(agent_id)
        pairs = min(pos.yes_shares - pos.yes_reserved, pos.no_shares - pos.no_reserved)
        if pairs <= 0:
            return
        basis = self._remove(pos, Side.YES, pairs, reserved=False) + self._remove(pos, Side.NO, pairs, reserved=False)
        credit = ONE * pairs
        pos.realized_pnl += credit - basis
        self.cash.move(
            self.agents[agent_id],
            credit,
            LedgerEntry.Kind.NETTING,
            market_id=self.market.id,
            reference=self.market.id,
            memo=f"netted {pairs} YES/NO pairs",
        )

    def linked_fill(self, order: Order, qty: int, price: Decimal) -> None:
        """Record what a trade with a linked agent moved for ``order``'s agent (``qty`` contracts of its side at
        ``price`` on that side), and what those trades may now be worth to it (``Agent.linked_pnl``, left out of its
        rank: DESIGN section 4a)."""
        pos = self.position(order.agent_id)
        before = pos.linked_worth()
        amount = quantize(price * qty)
        bought = order.action == Action.BUY
        pos.linked_cash += -amount if bought else amount
        if order.side == Side.YES:
            pos.linked_yes += qty if bought else -qty
        else:
            pos.linked_no += qty if bought else -qty
        self.agents[order.agent_id].linked_pnl += pos.linked_worth() - before
        self.linked_agents.add(order.agent_id)

    def release(self, order: Order) -> None:
        """Give back what a resting order still reserves (credits for a BUY, contracts for a SELL)."""
        left = order.size - order.filled
        if order.action == Action.BUY:
            self.cash.release(self.agents[order.agent_id], order.price * left)
        else:
            pos = self.position(order.agent_id)
            if order.side == Side.YES:
                pos.yes_reserved -= left
            else:
                pos.no_reserved -= left

    def end_order(self, order: Order, status: str, reason: str, event: str) -> None:
        """Take a resting order out of the book (cancelled or expired), releasing its reserve."""
        left = order.size - order.filled
        self.release(order)
        order.status = status
        order.cancel_reason = reason
        self.order_event(order, event, level_delta=-left)

    # -- write out -----------------------------------------------------------------------------------------------
    def refresh_top_of_book(self) -> None:
        """Set the market's best YES bid and ask from the book levels (all of them are loaded)."""
        best = {Side.YES: None, Side.NO: None}
        for (side, price), size in self.levels.items():
            if size > 0 and (best[side] is None or price > best[side]):
                best[side] = price
        self.market.best_bid = best[Side.YES]
        self.market.best_ask = complement(best[Side.NO]) if best[Side.NO] is not None else None
        self.market_fields.update({"best_bid", "best_ask"})

    def write_levels(self) -> bool:
        """Upsert the book levels whose size changed; ``True`` if any did."""
        before = self.levels_loaded or {}
        changed = [
            BookLevel(market_id=self.market.id, book_side=side, price=price, size=size)
            for (side, price), size in self.levels.items()
            if size != before.get((side, price), 0)
        ]
        upsert_rows(BookLevel, changed, unique=("market", "book_side", "price"), update=("size",))
        return bool(changed)

    def flush(self) -> list[MarketEvent]:
        """Write everything out: cash and ledger, positions, orders, trades, book levels, the market's events and
        fields, in one round trip to the database (:func:`~moltstreet.db.pipelined`)."""
        with pipelined():
            return self._write()

    def _write(self) -> list[MarketEvent]:
        self.cash.flush()
        new_positions = [self.positions[a] for a in self.new_positions]
        old_positions = [p for a, p in self.positions.items() if a not in self.new_positions]
        insert_rows(Position, [p for p in new_positions if _worth_keeping(p)])
        update_rows(Position, old_positions, POSITION_FIELDS)
        insert_rows(Order, self.new_orders)
        update_rows(Order, self.orders.values(), ORDER_FIELDS)
        insert_rows(Trade, self.trades)
        if self.linked_agents:
            update_rows(Agent, [self.agents[a] for a in sorted(self.linked_agents)], ("linked_pnl",))
        if self.write_levels():  # some book level changed: the top of book may have moved
            self.refresh_top_of_book()
        return self.log.flush(extra_fields=tuple(sorted(self.market_fields)), agents=self.agents.values())


def _worth_keeping(position: Position) -> bool:
    """A new position row is written only when it holds or records something (a market's passers-by leave none)."""
    return bool(
        position.yes_shares
        or position.no_shares
        or position.realized_pnl
        or position.linked_cash
        or position.linked_yes
        or position.linked_no
    )


# What a transaction may change in a position or an existing order (updated_at is set to now on write).
POSITION_FIELDS = ("yes_shares", "no_shares", "yes_reserved", "no_reserved", "yes_cost", "no_cost", "realized_pnl")
POSITION_FIELDS += ("linked_cash", "linked_yes", "linked_no", "updated_at")
ORDER_FIELDS = ("filled", "status", "cancel_reason", "updated_seq", "updated_at")


def crossing_read(market_id: uuid.UUID, book_side: str, book_price: Decimal, page: int) -> Select:
    """The read of the first page of :meth:`MarketTx.crossing`, to run together with others."""
    where, params = _crossing_where(market_id, book_side, book_price, [])
    return Select(Order, where, params, order_by=CROSSING_ORDER, limit=page)


def _crossing_where(market_id, book_side: str, book_price: Decimal, after: list[Any]) -> tuple[str, list[Any]]:
    """Resting orders of the queue opposite ``book_side`` crossing ``book_price``, after the keyset ``after``."""
    where = "market_id = %s AND book_side = %s AND status IN (%s, %s) AND book_price >= %s"
    params: list[Any] = [market_id, matching.opposite(book_side), *RESTING, complement(book_price)]
    if after:
        where += " AND (book_price < %s OR (book_price = %s AND seq > %s))"
    return where, params + after


def lock_market_row(market_id) -> Market:
    """Lock the market's row, the first lock of every write service (DESIGN section 6); raises :class:`NotFound`
    for an unknown or malformed id. The concurrency suite's negative control turns the lock off (LOCKING_ENABLED)."""
    parse_id(market_id, "market")  # a malformed id is an unknown market (Django would raise ValidationError)
    if LOCKING_ENABLED:
        return lock_market(market_id)
    try:
        return Market.objects.get(id=market_id)
    except (Market.DoesNotExist, ValueError) as exc:
        raise NotFound("No such market.", detail={"market": str(market_id)}) from exc


# --------------------------------------------------------------------------------------------------------------------
# Placing orders.


@dataclass
class PlaceResult:
    order: Order
    trades: list[Trade]
    created: bool


def _same_request(order: Order, **params) -> bool:
    return (
        str(order.market_id) == str(params["market_id"])
        and order.side == params["side"]
        and order.action == params["action"]
        and order.price == params["price"]
        and order.size == params["size"]
        and order.time_in_force == params["time_in_force"]
        and order.post_only == params["post_only"]
    )


def _existing_read(agent_id: uuid.UUID, client_order_id: str) -> Select:
    """The read of the agent's order with this ``client_order_id`` (at most one: unique per agent)."""
    return Select(Order, "agent_id = %s AND client_order_id = %s", [agent_id, client_order_id], limit=1)


def _existing(found: list[Order], client_order_id: str, **params) -> PlaceResult | None:
    """The earlier order of :func:`_existing_read` as the answer to a repeated request, or ``None`` if there is
    none. Raises :class:`ClientOrderIdConflict` if it was placed with other parameters."""
    if not found:
        return None
    order = found[0]
    if not _same_request(order, **params):
        raise ClientOrderIdConflict(detail={"client_order_id": client_order_id, "order": str(order.id)})
    return PlaceResult(order=order, trades=list(order.taker_trades.order_by("seq")), created=False)


def _observed_place(place: Callable[..., PlaceResult]) -> Callable[..., PlaceResult]:
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


def _resting_count_read(agent_id: uuid.UUID) -> Scalar:
    """How many open or partly filled orders the agent has, across all markets (an index-only count)."""
    sql = f"SELECT COUNT(*) FROM {Order._meta.db_table} WHERE agent_id = %s AND status IN (%s, %s)"  # noqa: S608
    return Scalar(sql, [agent_id, *RESTING])


@_observed_place
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
    :class:`InsufficientBalance`, :class:`InsufficientPosition`, :class:`PostOnlyWouldCross`,
    :class:`ClientOrderIdConflict`, :class:`OpenOrderLimit`, :class:`RiskLimitExceeded` (``position_limit``,
    ``reserved_limit``), :class:`ServiceBusy` (lock timeout).
    """
    side, action, tif = str(side).upper(), str(action).upper(), str(time_in_force or TimeInForce.GTC).upper()
    if side not in Side.values:
        raise InvalidRequest("side must be YES or NO.", detail={"side": side})
    if action not in Action.values:
        raise InvalidRequest("action must be BUY or SELL.", detail={"action": action})
    if tif not in TimeInForce.values:
        raise InvalidRequest("time_in_force must be GTC, GTD, IOC or FOK.", detail={"time_in_force": tif})
    price, size = parse_price(price), parse_size(size)
    now = timezone.now()
    if tif == TimeInForce.GTD and expires_at is None:
        raise InvalidRequest("A GTD order needs expires_at in the future.", detail={"expires_at": None})
    if tif != TimeInForce.GTD and expires_at is not None:
        raise InvalidRequest("expires_at is only allowed with time_in_force GTD.", detail={"time_in_force": tif})
    if post_only and tif in (TimeInForce.IOC, TimeInForce.FOK):
        raise InvalidRequest("post_only cannot be combined with IOC or FOK.", detail={"time_in_force": tif})
    if client_order_id is not None and (not str(client_order_id) or len(str(client_order_id)) > 64):
        raise InvalidRequest("client_order_id must be 1-64 characters.", detail={"client_order_id": client_order_id})
    stated = parse_probability(forecast) if forecast is not None else None
    params = {"market_id": market_id, "side": side, "action": action, "price": price, "size": size}
    params |= {"time_in_force": tif, "post_only": bool(post_only)}
    book_side, book_price = matching.book_position(side, action, price)
    page = min(size, 20) + 1

    # One round trip: lock the market row (the first lock, DESIGN section 6), read the first page of the crossing
    # orders under it (the book cannot change until commit), and look for an earlier order with this client id.
    market_key = parse_id(market_id, "market")
    reads: list[Select | Scalar] = [
        Select(Market, "id = %s", [market_key], for_update=LOCKING_ENABLED),
        crossing_read(market_key, book_side, book_price, page),
    ]
    if client_order_id:
        reads.append(_existing_read(agent.id, client_order_id))
    markets, first_page, *earlier = fetch_together(*reads)
    if not markets:
        raise NotFound("No such market.", detail={"market": str(market_id)})
    if earlier and (found := _existing(earlier[0], client_order_id, **params)) is not None:
        return found
    # After the idempotency check: a retry of a GTD order whose expiry has passed since returns the original.
    if tif == TimeInForce.GTD and expires_at <= now:
        raise InvalidRequest("A GTD order needs expires_at in the future.", detail={"expires_at": str(expires_at)})
    market = markets[0]
    ensure_tradable(market, now)
    tx = MarketTx(market)

    plan = matching.plan_match(
        agent_id=agent.id,
        book_side=book_side,
        book_price=book_price,
        size=size,
        resting=tx.crossing(book_side, book_price, page, first=first_page),
        now=now,
    )
    if post_only and (plan.fills or plan.self_trade_cancels):
        raise PostOnlyWouldCross(detail={"price": str(price)})
    fok_killed = tif == TimeInForce.FOK and plan.filled < size
    if fok_killed:  # fill or kill: nothing trades, nothing else changes
        plan = matching.MatchPlan()

    # Then, in one more round trip: lock every agent involved (ascending), read their positions and the book, count
    # the taker's resting orders (the open-order limit) and look for a twin of this request that committed first.
    touched = plan.expired + plan.self_trade_cancels + [f.maker for f in plan.fills]
    extra: list[Select | Scalar] = []
    if tif in (TimeInForce.GTC, TimeInForce.GTD):
        extra.append(_resting_count_read(agent.id))
    if client_order_id:
        extra.append(_existing_read(agent.id, client_order_id))
    results = tx.prepare({agent.id} | {o.agent_id for o in touched}, *extra)
    resting_count = results.pop(0) if tif in (TimeInForce.GTC, TimeInForce.GTD) else None
    taker_agent = tx.agents[agent.id]
    if taker_agent.is_suspended:
        raise AgentSuspended()
    if results and (found := _existing(results[0], client_order_id, **params)) is not None:
        return found  # a concurrent twin of this request committed first
    _check_limits(tx, taker_agent, side=side, action=action, price=price, size=size, resting=resting_count)

    for order in plan.expired:
        tx.end_order(order, Order.Status.EXPIRED, Order.CancelReason.EXPIRED, "expired")
    for order in plan.self_trade_cancels:
        tx.end_order(order, Order.Status.CANCELLED, Order.CancelReason.SELF_TRADE, "cancelled")
    for agent_id in {o.agent_id for o in touched}:
        # A selling taker reserves its contracts first (below): netting now could merge away what it offers.
        if agent_id != agent.id or action == Action.BUY:
            tx.net(agent_id)

    # Reserve collateral for the whole order.
    if action == Action.BUY:
        tx.cash.reserve(taker_agent, price * size)
    else:
        pos = tx.position(agent.id)
        held, reserved = (pos.yes_shares, pos.yes_reserved) if side == Side.YES else (pos.no_shares, pos.no_reserved)
        if held - reserved < size:
            raise InsufficientPosition(
                f"Selling {size} {side} needs {size} unreserved contracts; {held - reserved} are available.",
                detail={"side": side, "required": size, "available": held - reserved},
            )
        if side == Side.YES:
            pos.yes_reserved += size
        else:
            pos.no_reserved += size

    taker = Order(
        id=uuid.uuid4(),
        market=market,
        agent=taker_agent,
        side=side,
        action=action,
        price=price,
        size=size,
        time_in_force=tif,
        post_only=post_only,
        expires_at=expires_at,
        client_order_id=client_order_id or None,
        forecast=stated,
        book_side=book_side,
        book_price=book_price,
        seq=0,
        updated_seq=0,
    )
    taker_seq = tx.log.add(MarketEvent.Kind.ORDER, {})  # reserved now: the taker's time priority
    taker.seq = taker.updated_seq = taker_seq
    tx.new_orders.append(taker)

    for fill in plan.fills:
        _execute(tx, taker, fill)

    left = taker.size - taker.filled
    if taker.filled == taker.size:
        taker.status = Order.Status.FILLED
        tx.order_event(taker, "filled", seq=taker_seq)
    elif fok_killed or tif == TimeInForce.IOC:
        tx.release(taker)
        taker.status = Order.Status.CANCELLED
        taker.cancel_reason = Order.CancelReason.FOK_UNFILLED if fok_killed else Order.CancelReason.IOC_REMAINDER
        tx.order_event(taker, "cancelled", seq=taker_seq)
    else:
        taker.status = Order.Status.PARTIAL if taker.filled else Order.Status.OPEN
        tx.order_event(taker, "placed", level_delta=left, seq=taker_seq)

    for agent_id in {taker.agent_id} | {f.maker.agent_id for f in plan.fills}:
        tx.net(agent_id)
    if stated is not None:
        Forecast.objects.create(
            agent=taker_agent,
            market=market,
            probability=stated,
            reasoning=reasoning or "",
            reference_price=market.reference_price,  # the source's price beside it (brier_vs_market)
        )
    tx.flush()
    return PlaceResult(order=taker, trades=tx.trades, created=True)


def _check_limits(
    tx: MarketTx, agent: Agent, *, side: str, action: str, price: Decimal, size: int, resting: int | None
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
    lock, so the counts cannot change under us (every order an agent places locks its row).
    """
    if resting is not None:
        limit = settings.MOLTSTREET["MAX_OPEN_ORDERS"]
        if resting >= limit:
            raise OpenOrderLimit(
                f"An agent may have at most {limit} resting orders; cancel some first.",
                detail={"max_open_orders": limit},
            )
    if action != Action.BUY:
        return
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
        resting = (
            Order.objects.filter(
                agent_id=agent.id, market_id=tx.market.id, side=side, action=Action.BUY, status__in=RESTING
            ).aggregate(left=Sum(F("size") - F("filled")))["left"]
            or 0
        )
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


def _cancel_in_market(market_id, orders_filter: Q, reason: str) -> list[Order]:
    """Cancel the resting orders of one market that match ``orders_filter``; the caller's transaction holds nothing."""
    market = lock_market_row(market_id)
    # Re-read under the market lock: only what is still resting now is cancelled.
    orders = list(Order.objects.filter(orders_filter, market=market, status__in=RESTING).order_by("seq"))
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
    try:
        order = Order.objects.only("id", "market_id", "agent_id").get(id=order_id, agent=agent)
    except (Order.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise NotFound("No such order.", detail={"order": str(order_id)}) from exc
    cancelled = _cancel_in_market(order.market_id, Q(id=order.id), Order.CancelReason.USER)
    if not cancelled:
        order = Order.objects.get(id=order.id)
        raise OrderNotCancellable(detail={"order": str(order.id), "status": order.status})
    return cancelled[0]


@service_transaction
def order_cancel_all(
    *, agent: Agent, market_id: uuid.UUID | str | None = None, reason: str = Order.CancelReason.USER
) -> list[Order]:
    """Cancel every resting order of the agent, optionally only in one market; returns the cancelled orders.

    All its markets are locked first, in ascending id order, then the agent (DESIGN section 6).
    """
    resting = Order.objects.filter(agent=agent, status__in=RESTING)
    if market_id is not None:
        resting = resting.filter(market_id=parse_id(market_id, "market"))
    cancelled: list[Order] = []
    market_ids = sorted(set(resting.values_list("market_id", flat=True)))
    # Every market row first, then the agent: holding the agent while waiting for the next market deadlocks with a
    # trade in that market, which holds the market and waits for the agent (DESIGN section 6).
    for mid in market_ids:
        lock_market_row(mid)
    for mid in market_ids:
        cancelled += _cancel_in_market(mid, Q(agent=agent), reason)
    return cancelled


# --------------------------------------------------------------------------------------------------------------------
# Lifecycle: expiry, close, resolve.


def end_all_resting(tx: MarketTx, status: str, reason: str, extra_agents=()) -> None:
    """Take every resting order of the locked market out of the book (closing, resolving), locking their agents and
    ``extra_agents`` (ascending) and netting what the released reserves free up."""
    orders = list(Order.objects.filter(market=tx.market, status__in=RESTING).order_by("seq"))
    tx.prepare({o.agent_id for o in orders} | set(extra_agents))
    for order in orders:
        tx.end_order(order, status, reason, "cancelled")
    for agent_id in {o.agent_id for o in orders}:
        tx.net(agent_id)


@service_transaction
def orders_expire(*, market_id: uuid.UUID | str, now: datetime | None = None) -> int:
    """Expire the market's GTD orders whose ``expires_at`` has passed; returns how many."""
    now = now or timezone.now()
    market = lock_market_row(market_id)
    orders = list(Order.objects.filter(market=market, status__in=RESTING, expires_at__lte=now).order_by("seq"))
    if not orders:
        return 0
    tx = MarketTx(market)
    tx.prepare({o.agent_id for o in orders})
    for order in orders:
        tx.end_order(order, Order.Status.EXPIRED, Order.CancelReason.EXPIRED, "expired")
    for agent_id in tx.agents:
        tx.net(agent_id)
    tx.flush()
    return len(orders)


@service_transaction
def market_close(*, market_id: uuid.UUID | str) -> Market:
    """Close a market: no new orders; every resting order is cancelled and its reserve released.

    Closing a closed market changes nothing. Raises :class:`MarketAlreadyResolved` for a resolved market.
    """
    market = lock_market_row(market_id)
    if market.status == Market.Status.RESOLVED:
        raise MarketAlreadyResolved(detail={"market": str(market.id)})
    if market.status == Market.Status.CLOSED:
        return market
    tx = MarketTx(market)
    end_all_resting(tx, Order.Status.CANCELLED, Order.CancelReason.MARKET_CLOSED)
    market.status, market.closed_at = Market.Status.CLOSED, timezone.now()
    tx.market_fields.update({"status", "closed_at"})
    tx.log.add(MarketEvent.Kind.MARKET, {"event": "closed", "market": market_payload(market)})
    tx.flush()
    return market


# --------------------------------------------------------------------------------------------------------------------
# Agents.


@service_transaction
def _agent_set_suspended(agent_id: uuid.UUID, suspended: bool) -> Agent:
    agent = lock_agents([agent_id])[agent_id]
    agent.is_suspended = suspended
    agent.save(update_fields=["is_suspended"])
    return agent


def agent_suspend(*, agent_id: uuid.UUID) -> list[Order]:
    """Suspend an agent and cancel its resting orders; returns the cancelled orders.

    Two transactions: the flag first (under the agent lock, so no order placement can slip past it: ``order_place``
    checks the flag under the same lock), then the cancellations, market by market in the usual lock order.
    """
    agent = _agent_set_suspended(agent_id, True)
    return order_cancel_all(agent=agent, reason=Order.CancelReason.AGENT_SUSPENDED)


def agent_reinstate(*, agent_id: uuid.UUID) -> Agent:
    """Lift a suspension."""
    return _agent_set_suspended(agent_id, False)


def markets_close_due(now: datetime | None = None) -> list[Market]:
    """Close every open market whose deadline has passed (the scheduler calls this).

    One transaction per market; a market that fails (e.g. a lock timeout) is logged and left for the next pass, so it
    cannot hold up the others.
    """
    now = now or timezone.now()
    due = Market.objects.filter(status=Market.Status.OPEN, deadline__lte=now).values_list("id", flat=True)
    closed = []
    for mid in list(due):
        try:
            closed.append(market_close(market_id=mid))
        except (MoltStreetError, DatabaseError):
            logger.exception("closing market %s failed; retrying on the next pass", mid)
    return closed


def orders_expire_due(now: datetime | None = None) -> int:
    """Expire every GTD order past its ``expires_at``, one transaction per market (the scheduler calls this).

    A market that fails is logged and left for the next pass. Returns how many orders expired.
    """
    now = now or timezone.now()
    markets = Order.objects.filter(status__in=RESTING, expires_at__lte=now).values_list("market_id", flat=True)
    expired = 0
    for mid in list(markets.distinct()):
        try:
            expired += orders_expire(market_id=mid, now=now)
        except (MoltStreetError, DatabaseError):
            logger.exception("expiring orders in market %s failed; retrying on the next pass", mid)
    return expired


def position_totals(market: Market) -> dict[str, int]:
    """Total YES and NO contracts held in a market (equal by invariant 2: the pairs outstanding)."""
    totals = Position.objects.filter(market=market).aggregate(yes=Sum("yes_shares"), no=Sum("no_shares"))
    return {"yes": totals["yes"] or 0, "no": totals["no"] or 0}


__all__ = [
    "PlaceResult",
    "agent_reinstate",
    "agent_suspend",
    "market_close",
    "markets_close_due",
    "order_cancel",
    "order_cancel_all",
    "order_place",
    "orders_expire",
    "orders_expire_due",
    "parse_price",
    "parse_size",
]
