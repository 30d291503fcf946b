"""The working set of one transaction on one locked market (``MarketTx``): the agents, positions, orders, trades,
book levels and market events it changes, the cash and contract moves of DESIGN section 3 applied to them in memory,
and everything written out once at the end.

Used by the order service (``trading.orders``), the market lifecycle (``trading.lifecycle``) and resolution
(``trading.resolution``). Locks follow DESIGN section 6: the market row, then the agents by ascending id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agents.models import Agent, LedgerEntry
from agents.services import CashBook
from markets.models import Market, MarketEvent
from markets.services import (
    EventLog,
    lock_market,
)
from moltstreet.db import (
    Scalar,
    Select,
    fetch_rows,
    fetch_together,
    insert_rows,
    pipelined,
    placeholders,
    update_rows,
    upsert_rows,
)
from moltstreet.errors import (
    NotFound,
)
from moltstreet.ids import parse_id
from moltstreet.money import ONE, complement, quantize
from trading import matching
from trading.models import Action, BookLevel, Order, Position, Side, Trade

RESTING = Order.RESTING
# Priority within a queue: best price first, then earliest arrival (DESIGN section 3).
CROSSING_ORDER = "book_price DESC, seq"
# Test-only switch for the concurrency suite's negative control: with it off, no row is locked (never in production).
LOCKING_ENABLED = True

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
