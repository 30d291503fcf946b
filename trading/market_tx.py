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
from agents.services import AgentFeed, CashBook
from markets.models import Forecast, Market, MarketEvent
from markets.services import EventLog
from moltstreet.money import ONE, quantize
from trading import agent_feed, book_store
from trading.book_store import Parties
from trading.models import Action, Order, Position, Side, Trade


def order_snapshot(order: Order) -> dict[str, Any]:
    """The ``order`` of an order event as stored (``MarketEvent.data``): ids and enums as strings, prices as decimal
    strings, ``size`` and ``filled`` in contracts, and where it rests in the YES-price book."""
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
    """Everything one transaction changes in one locked market, written out once by :meth:`flush`
    (:func:`trading.book_store.write`). It runs no SQL of its own: it reads through :mod:`trading.book_store`.

    ``levels`` tracks the absolute resting size of every book level the transaction touches, so each order event
    carries its level's new size (what the live feed's ``book`` messages publish).
    """

    market: Market
    agents: dict[uuid.UUID, Agent] = field(default_factory=dict)
    cash: CashBook = field(default_factory=CashBook)
    positions: dict[uuid.UUID, Position] = field(default_factory=dict)
    new_positions: set[uuid.UUID] = field(default_factory=set)
    # Each position's state as read (a new one's: all zero), to tell which ones the transaction changed.
    positions_read: dict[uuid.UUID, tuple[Any, ...]] = field(default_factory=dict)
    orders: dict[uuid.UUID, Order] = field(default_factory=dict)
    new_orders: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    forecasts: list[Forecast] = field(default_factory=list)
    levels: dict[tuple[str, Decimal], int] = field(default_factory=dict)
    levels_loaded: dict[tuple[str, Decimal], int] | None = None
    market_fields: set[str] = field(default_factory=set)
    linked_agents: set[uuid.UUID] = field(default_factory=set)  # whose linked_pnl a trade with a linked agent moved

    def __post_init__(self) -> None:
        self.log = EventLog(self.market)

    # -- locks and rows ------------------------------------------------------------------------------------------
    def position(self, agent_id: uuid.UUID) -> Position:
        """The agent's position in the market (a new, empty one if it has none), read once per transaction."""
        if agent_id not in self.positions:
            self._add_positions([agent_id], book_store.load_positions(self.market.id, [agent_id]))
        return self.positions[agent_id]

    def _add_positions(self, agent_ids, found: dict[uuid.UUID, Position]) -> None:
        for agent_id in agent_ids:
            if agent_id in found:
                self.positions[agent_id] = found[agent_id]
            else:
                self.positions[agent_id] = Position(agent_id=agent_id, market=self.market)
                self.new_positions.add(agent_id)
            self.positions_read[agent_id] = book_store.position_state(self.positions[agent_id])

    def changed_positions(self) -> set[uuid.UUID]:
        """The agents whose position in the market this transaction changed (contracts, reserves, cost, P&L)."""
        return {a for a, pos in self.positions.items() if book_store.position_state(pos) != self.positions_read[a]}

    def prepare(
        self,
        agent_ids,
        *,
        count_resting_of: uuid.UUID | None = None,
        client_order: tuple[uuid.UUID, str] | None = None,
    ) -> Parties:
        """Lock the agents (ascending, after the market: DESIGN section 6), read their positions in this market and
        the book levels, and what :func:`~trading.book_store.load_parties` is asked besides, in one round trip."""
        wanted = sorted(set(agent_ids) - set(self.agents))
        if self.agents and wanted and wanted[0] < max(self.agents):
            raise AssertionError("agents must be locked in one ascending batch")
        positions = sorted(set(agent_ids) - set(self.positions))
        parties = book_store.load_parties(
            self.market.id,
            agent_ids=wanted,
            position_ids=positions,
            levels=self.levels_loaded is None,
            count_resting_of=count_resting_of,
            client_order=client_order,
        )
        self.agents.update(parties.agents)
        self._add_positions(positions, parties.positions)
        if parties.levels is not None:
            self.levels.update(parties.levels)
            self.levels_loaded = dict(parties.levels)
        return parties

    def crossing(self, book_side: str, book_price: Decimal, first: list[Order], page: int) -> Iterator[Order]:
        """The resting orders of the queue opposite ``book_side`` that cross ``book_price``, in priority order (best
        price, then earliest), a page at a time as the matching walks them: ``first`` (read with the market's lock,
        ``page`` orders at most), then pages of 200 (:func:`~trading.book_store.crossing_page`)."""
        rows = first
        while True:
            yield from rows
            if len(rows) < page:
                return
            page = 200
            rows = book_store.crossing_page(self.market.id, book_side, book_price, after=rows[-1], limit=page)

    # -- events --------------------------------------------------------------------------------------------------
    def order_event(self, order: Order, event: str, level_delta: int = 0, seq: int | None = None) -> int:
        """Record an order change; ``level_delta`` is the change of resting contracts at the order's book level."""
        key = (order.book_side, order.book_price)
        data: dict[str, Any] = {"event": event, "order": order_snapshot(order)}
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
            reference=str(self.market.id),
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

    def release(self, order: Order, contracts: int | None = None) -> None:
        """Give back what a resting order reserves for ``contracts`` of its unfilled contracts (all of them by
        default): ``price`` credits each for a BUY, the contracts themselves for a SELL."""
        left = order.size - order.filled if contracts is None else contracts
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
    def agent_feed(self) -> AgentFeed:
        """The private feed messages of what this transaction did, numbered in each agent's sequence
        (:func:`trading.agent_feed.transaction_feed`); :func:`trading.book_store.write` asks for them once the rows
        have their times, and writes them with everything else."""
        return agent_feed.transaction_feed(self)

    def flush(self) -> list[MarketEvent]:
        """Write everything out in one round trip (:func:`trading.book_store.write`); returns the stored events."""
        return book_store.write(self)
