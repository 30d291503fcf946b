"""Bulk seeding for the benchmarks: resting orders and mint trades written in bulk, row for row what the trading
services would have written, so that ``manage.py audit`` stays clean (bench/README.md).

Import this module after :func:`harness.setup` (it imports the models). The rows follow the trading services:

* a resting order is what ``order_place`` writes for a BUY that crosses nothing: an ``open`` ``Order`` with the
  market's next ``seq`` (``seq == updated_seq``), one ``order`` ``MarketEvent`` at that seq carrying
  ``{"event": "placed", "order": <snapshot>, "level": <the level's new resting size>}``, and ``price x size``
  credits added to the maker's ``locked_balance``;
* a mint trade is a resting BUY YES at x (the maker, placed first) taken by a BUY NO at 1 - x (the taker): four
  sequence numbers (maker placed; taker, reserved before the fill; the trade; maker filled), both orders ``filled``,
  one ``Trade`` (kind ``mint``, taker side NO), the YES buyer paying x and the NO buyer 1 - x per contract with
  their ``trade`` ledger rows, their positions and the market's ``volume``, ``trade_count`` and ``last_price``.

Money goes through ``agents.services.CashBook``, after ``agent_grant_credits`` has granted each agent what its
orders need (:func:`grant`): CashBook reserves, releases and moves the credits and computes each ledger row with its
``balance_after``; the ledger rows are then written with ``COPY`` and the balances by ``CashBook.flush`` itself.
Orders, trades, positions and events are written with PostgreSQL ``COPY`` too. Every seeding runs in one
transaction under the market's row lock and the agents' row locks (DESIGN section 6), then sets the market's
``seq``, ``best_bid`` and ``best_ask`` and, where the application keeps them, the ``BookLevel`` rows of the levels
it touched (a level that empties keeps its row with size 0, as the services leave it). YES buyers and NO buyers of
the trades must be different agents: netting (DESIGN section 3) never applies then, and nothing else would have
changed.

Timestamps: a trade and its two orders carry the trade's time (``TradeSpec.at``, so a history can span days); the
ledger rows that CashBook writes carry the time of seeding.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, models, transaction
from django.db.models import F, Sum
from django.utils import timezone
from harness import BenchAgent
from psycopg import sql

from agents.models import LedgerEntry
from agents.services import CashBook, agent_grant_credits, agent_register, lock_agents
from markets.models import Market, MarketEvent
from markets.services import lock_market
from moltstreet.money import CENT, ONE, ZERO, complement, quantize
from trading import models as trading_models
from trading.market_tx import order_snapshot
from trading.models import Action, Order, Position, Side, Trade

CHUNK = 5000  # rows per COPY and per CashBook flush (bounded memory)


def cents(n: int) -> Decimal:
    """``n`` hundredths as a two-place price (``str`` gives ``"0.10"``, as the services' quantized prices do)."""
    return (Decimal(n) / 100).quantize(CENT)


# --------------------------------------------------------------------------------------------------------------------
# Agents and credits


def register_agents(n: int, prefix: str) -> list[BenchAgent]:
    """``n`` agents registered through ``agent_register`` (1000.00 credits each, nothing more)."""
    agents = []
    for i in range(n):
        agent, key = agent_register(name=f"{prefix}-{i}")
        agents.append(BenchAgent(agent.id, agent.name, key))
    return agents


def grant(needs: dict[uuid.UUID, Decimal], memo: str = "benchmark seeding") -> None:
    """Grant each agent the credits its seeded orders need (one ledgered operator adjustment per agent)."""
    for agent_id in sorted(needs):
        if needs[agent_id] > ZERO:
            agent_grant_credits(agent_id=agent_id, amount=needs[agent_id], memo=memo)


# --------------------------------------------------------------------------------------------------------------------
# COPY


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """One value in COPY's text format (``\\N`` for NULL; backslash, tab and newlines escaped)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return text.translate(_COPY_ESCAPES) if ("\\" in text or "\t" in text or "\n" in text or "\r" in text) else text


def copy_rows(model: type[models.Model], rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` (dicts by field ``attname``) into ``model``'s table with one ``COPY``; returns the count.

    A missing field takes the model default (an auto-increment primary key is left to the database, so ids follow
    the order of ``rows``); a field without a default must be given. JSON fields are serialised here. Values are
    written in COPY's text format (``str()`` of UUIDs, decimals, integers and enum members; ISO 8601 times).
    """
    fields = [
        f
        for f in model._meta.concrete_fields
        if not (f.primary_key and f.get_internal_type() in ("AutoField", "BigAutoField", "SmallAutoField"))
    ]
    defaults = {f.attname: f.get_default() for f in fields if f.has_default() or f.null}
    json_fields = {f.attname for f in fields if isinstance(f, models.JSONField)}
    names = [f.attname for f in fields]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(model._meta.db_table), sql.SQL(", ").join(sql.Identifier(f.column) for f in fields)
    )
    count, lines = 0, []
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for row in rows:
            values = []
            for name in names:
                value = row[name] if name in row else defaults[name]
                if name in json_fields:
                    value = json.dumps(value)
                values.append(_copy_text(value))
            lines.append("\t".join(values))
            count += 1
            if len(lines) == 1000:
                copy.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            copy.write("\n".join(lines) + "\n")
    return count


def _chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _levels(market: Market) -> dict[tuple[str, Decimal], int]:
    """Resting contracts per book level of the market (what ``MarketTx.load_levels`` reads)."""
    rows = (
        Order.objects.filter(market=market, status__in=Order.RESTING)
        .values("book_side", "book_price")
        .annotate(size=Sum(F("size") - F("filled")))
    )
    return defaultdict(int, {(r["book_side"], r["book_price"]): r["size"] for r in rows})


def _flush(book: CashBook) -> None:
    """Write what ``book`` recorded: its ledger rows (each movement with its ``balance_after``, as CashBook computed
    them) with COPY, then the touched agents' balances and reserves through ``CashBook.flush`` itself."""
    now = timezone.now()
    copy_rows(
        LedgerEntry,
        (
            {
                "agent_id": e.agent_id,
                "kind": e.kind,
                "amount": e.amount,
                "balance_after": e.balance_after,
                "market_id": e.market_id,
                "reference": e.reference,
                "memo": e.memo,
                "created_at": now,
            }
            for e in book.entries
        ),
    )
    book.entries.clear()
    book.flush()


def _write_levels(market: Market, levels: dict[tuple[str, Decimal], int], touched: set) -> None:
    """Keep ``trading.models.BookLevel`` (resting contracts per level) as the services would: one row per level the
    seeding touched, with its new size (0 stays as a row). Looked up by name, so the benchmarks also seed a checkout
    from before the table existed, to measure the "before" figures of docs/performance.md."""
    book_level = getattr(trading_models, "BookLevel", None)
    if book_level is None or not touched:
        return
    book_level.objects.bulk_create(
        [
            book_level(market_id=market.id, book_side=side, price=price, size=levels[(side, price)])
            for side, price in touched
        ],
        update_conflicts=True,
        unique_fields=["market", "book_side", "price"],
        update_fields=["size"],
        batch_size=1000,
    )


def _finish(market: Market, levels: dict[tuple[str, Decimal], int], tx_fields: Sequence[str] = ()) -> None:
    """The market row as ``MarketTx.flush`` leaves it: the new ``seq``, the top of book (``best_bid`` the best YES
    bid, ``best_ask`` 1 - the best NO bid, from ``levels``: every level of the market), and ``tx_fields``."""
    best = {side: max((p for (s, p), n in levels.items() if s == side and n > 0), default=None) for side in Side}
    market.best_bid = best[Side.YES]
    market.best_ask = complement(best[Side.NO]) if best[Side.NO] is not None else None
    fields = {"seq", "best_bid", "best_ask", *tx_fields}
    Market.objects.filter(id=market.id).update(**{name: getattr(market, name) for name in fields})


def _event(market_id, seq: int, kind: str, data: dict, at: datetime) -> dict[str, Any]:
    return {"market_id": market_id, "seq": seq, "kind": kind, "data": data, "created_at": at}


@dataclass(slots=True)
class _Order:
    """The fields of an ``Order`` that the seeding sets (``order_snapshot`` reads them); a model instance per
    order would cost more than writing the row."""

    id: uuid.UUID
    market_id: uuid.UUID
    agent_id: uuid.UUID
    side: str
    price: Decimal
    size: int
    action: str = Action.BUY
    filled: int = 0
    status: str = Order.Status.OPEN
    seq: int = 0
    updated_seq: int = 0

    @property
    def book_side(self) -> str:  # a BUY bids in its own side's queue at its own price
        return self.side

    @property
    def book_price(self) -> Decimal:
        return self.price


def _order_row(order: _Order, at: datetime) -> dict[str, Any]:
    return {
        "id": order.id,
        "market_id": order.market_id,
        "agent_id": order.agent_id,
        "side": order.side,
        "action": order.action,
        "price": order.price,
        "size": order.size,
        "filled": order.filled,
        "status": order.status,
        "book_side": order.book_side,
        "book_price": order.book_price,
        "seq": order.seq,
        "updated_seq": order.updated_seq,
        "created_at": at,
        "updated_at": at,
    }


# --------------------------------------------------------------------------------------------------------------------
# Resting orders


@dataclass(frozen=True)
class RestingSpec:
    """A resting BUY: ``side`` YES bids at ``price`` in the YES queue, NO at ``price`` in the NO queue."""

    agent_id: uuid.UUID
    side: str
    price: Decimal
    size: int


def resting_plan(
    n: int, makers: Sequence[uuid.UUID], *, start: int = 0, top: int = 49, sizes: tuple[int, int] = (500, 1000)
) -> list[RestingSpec]:
    """``n`` BUY orders alternating YES bids and NO bids over every price level 0.01-``top``/100 on both sides (a NO
    bid at q shows as a YES ask at 1 - q; with ``top`` <= 49 the book never crosses), round-robin over ``makers``.
    ``start`` continues the pattern of an earlier plan; sizes cycle deterministically through ``sizes``."""
    lo, hi = sizes
    plan = []
    for i in range(start, start + n):
        plan.append(
            RestingSpec(
                agent_id=makers[(i // 2) % len(makers)],
                side=Side.YES if i % 2 == 0 else Side.NO,
                price=cents(top - (i // 2) % top),
                size=lo + (i * 37) % (hi - lo + 1),
            )
        )
    return plan


def resting_needs(plan: Iterable[RestingSpec]) -> dict[uuid.UUID, Decimal]:
    """Credits each maker's BUY orders reserve (``price x size``, as ``order_place`` reserves them)."""
    needs: dict[uuid.UUID, Decimal] = defaultdict(lambda: ZERO)
    for spec in plan:
        needs[spec.agent_id] += quantize(spec.price * spec.size)
    return needs


@transaction.atomic
def seed_resting(market_id, plan: Sequence[RestingSpec], *, at: datetime | None = None) -> int:
    """Place ``plan`` as resting orders in the market (in plan order, each with the next sequence number).

    The makers must hold enough credits (:func:`grant`) and no order may cross the book (a YES bid at p and a NO bid
    at q cross when p + q >= 1; checked here, since no matching runs). Returns the market's new ``seq``.
    """
    if not plan:
        return Market.objects.get(id=market_id).seq
    at = at or timezone.now()
    market = lock_market(market_id)  # first the market, then its agents by ascending id (DESIGN section 6)
    agents = lock_agents({s.agent_id for s in plan})
    levels = _levels(market)
    tops = {side: max((p for (s, p), n in levels.items() if s == side and n > 0), default=ZERO) for side in Side}
    for spec in plan:
        tops[spec.side] = max(tops[spec.side], spec.price)
    if tops[Side.YES] + tops[Side.NO] >= ONE:
        raise ValueError(f"the plan would cross the book (best YES bid {tops[Side.YES]}, best NO bid {tops[Side.NO]})")
    for chunk in _chunks(plan):
        book = CashBook()
        orders, events = [], []
        for spec in chunk:
            market.seq += 1
            order = _Order(uuid.uuid4(), market.id, spec.agent_id, spec.side, spec.price, spec.size)
            order.seq = order.updated_seq = market.seq
            book.reserve(agents[spec.agent_id], spec.price * spec.size)
            key = (order.book_side, order.book_price)
            levels[key] += order.size
            level = {"side": key[0], "price": str(key[1]), "size": levels[key]}
            orders.append(_order_row(order, at))
            events.append(
                _event(
                    market.id,
                    market.seq,
                    MarketEvent.Kind.ORDER,
                    {"event": "placed", "order": order_snapshot(order), "level": level},
                    at,
                )
            )
        copy_rows(Order, orders)
        copy_rows(MarketEvent, events)
        _flush(book)  # the reserves: each maker's locked_balance; no cash moved, so no ledger rows
    _write_levels(market, levels, touched={(s.side, s.price) for s in plan})
    _finish(market, levels)
    return market.seq


# --------------------------------------------------------------------------------------------------------------------
# Mint trades


@dataclass(frozen=True)
class TradeSpec:
    """A mint trade of ``size`` contracts at YES price ``price``: ``yes_agent`` rested BUY YES at ``price``,
    ``no_agent`` took it with BUY NO at 1 - ``price``, at time ``at``."""

    yes_agent: uuid.UUID
    no_agent: uuid.UUID
    price: Decimal
    size: int
    at: datetime


def trade_plan(
    n: int,
    yes_agents: Sequence[uuid.UUID],
    no_agents: Sequence[uuid.UUID],
    *,
    start: datetime,
    end: datetime,
    rng: random.Random,
    first_price: int = 50,
    bounds: tuple[int, int] = (20, 80),
    sizes: tuple[int, int] = (1, 10),
) -> list[TradeSpec]:
    """``n`` trades evenly spread from ``start`` to ``end``, the YES price a bounded random walk in cents, each
    between a random YES buyer and a random NO buyer (two disjoint sets, so netting never applies)."""
    if set(yes_agents) & set(no_agents):
        raise ValueError("YES buyers and NO buyers must be different agents (netting would apply)")
    step = (end - start) / max(n, 1)
    price, plan = first_price, []
    for i in range(n):
        price = min(bounds[1], max(bounds[0], price + rng.choice((-1, 0, 0, 1))))
        plan.append(
            TradeSpec(
                yes_agent=rng.choice(yes_agents),
                no_agent=rng.choice(no_agents),
                price=cents(price),
                size=rng.randint(*sizes),
                at=start + step * i,
            )
        )
    return plan


def trade_needs(plan: Iterable[TradeSpec]) -> dict[uuid.UUID, Decimal]:
    """Credits each buyer reserves (and then pays): x per contract for YES, 1 - x for NO."""
    needs: dict[uuid.UUID, Decimal] = defaultdict(lambda: ZERO)
    for spec in plan:
        needs[spec.yes_agent] += quantize(spec.price * spec.size)
        needs[spec.no_agent] += quantize(complement(spec.price) * spec.size)
    return needs


def _fill_snapshot(order: _Order) -> dict[str, Any]:
    order.filled, order.status = order.size, Order.Status.FILLED
    return order_snapshot(order)


@transaction.atomic
def seed_trades(market_id, plan: Sequence[TradeSpec]) -> int:
    """Write ``plan`` as mint trades in the market, oldest first, as ``order_place`` would have for each maker's
    BUY YES and the taker's BUY NO that filled it whole. The buyers must hold the credits (:func:`grant`).
    Returns the market's new ``seq``."""
    if not plan:
        return Market.objects.get(id=market_id).seq
    market = lock_market(market_id)  # the market, then the agents by ascending id (DESIGN section 6)
    agent_ids = {s.yes_agent for s in plan} | {s.no_agent for s in plan}
    agents = lock_agents(agent_ids)
    levels = _levels(market)
    positions = {p.agent_id: p for p in Position.objects.filter(market=market, agent_id__in=agent_ids)}
    new_positions = {a for a in agent_ids if a not in positions}
    for agent_id in new_positions:
        positions[agent_id] = Position(agent_id=agent_id, market_id=market.id)
    for chunk in _chunks(plan):
        book = CashBook()
        orders, trades, events = [], [], []
        for spec in chunk:
            x, no_price, qty = spec.price, complement(spec.price), spec.size
            maker = _Order(uuid.uuid4(), market.id, spec.yes_agent, Side.YES, x, qty)
            taker = _Order(uuid.uuid4(), market.id, spec.no_agent, Side.NO, no_price, qty)
            yes_agent, no_agent = agents[spec.yes_agent], agents[spec.no_agent]
            key = (Side.YES, x)
            # 1. The maker's order rests (its own transaction): the reserve and the level grow.
            maker.seq = market.seq + 1
            book.reserve(yes_agent, x * qty)
            levels[key] += qty
            events.append(
                _event(
                    market.id,
                    maker.seq,
                    MarketEvent.Kind.ORDER,
                    {
                        "event": "placed",
                        "order": order_snapshot(maker),
                        "level": {"side": Side.YES, "price": str(x), "size": levels[key]},
                    },
                    spec.at,
                )
            )
            # 2. The taker: its reserve, its seq (reserved before the fill), the trade, the maker's fill.
            book.reserve(no_agent, no_price * qty)
            taker.seq = maker.seq + 1
            trade_id = uuid.uuid4()
            ref = str(trade_id)
            book.release(yes_agent, x * qty)
            book.move(
                yes_agent,
                -quantize(x * qty),
                LedgerEntry.Kind.TRADE,
                market_id=market.id,
                reference=ref,
                memo=f"buy {qty} YES @ {x}",
            )
            book.release(no_agent, no_price * qty)
            book.move(
                no_agent,
                -quantize(no_price * qty),
                LedgerEntry.Kind.TRADE,
                market_id=market.id,
                reference=ref,
                memo=f"buy {qty} NO @ {no_price}",
            )
            trade_seq = taker.seq + 1
            events.append(
                _event(
                    market.id,
                    trade_seq,
                    MarketEvent.Kind.TRADE,
                    {
                        "trade": {
                            "id": ref,
                            "price": str(x),
                            "size": qty,
                            "taker_side": Side.NO,
                            "kind": Trade.Kind.MINT,
                            "maker_order": str(maker.id),
                            "taker_order": str(taker.id),
                            "maker_agent": str(maker.agent_id),
                            "taker_agent": str(taker.agent_id),
                            "maker_side": Side.YES,
                            "maker_action": Action.BUY,
                            "taker_side_intent": Side.NO,
                            "taker_action": Action.BUY,
                        }
                    },
                    spec.at,
                )
            )
            levels[key] -= qty
            maker.updated_seq = trade_seq + 1
            events.append(
                _event(
                    market.id,
                    maker.updated_seq,
                    MarketEvent.Kind.ORDER,
                    {
                        "event": "filled",
                        "order": _fill_snapshot(maker),
                        "level": {"side": Side.YES, "price": str(x), "size": levels[key]},
                    },
                    spec.at,
                )
            )
            taker.updated_seq = taker.seq
            events.append(
                _event(
                    market.id,
                    taker.seq,
                    MarketEvent.Kind.ORDER,
                    {"event": "filled", "order": _fill_snapshot(taker)},
                    spec.at,
                )
            )
            market.seq = maker.updated_seq
            orders += [_order_row(maker, spec.at), _order_row(taker, spec.at)]
            trades.append(
                {
                    "id": trade_id,
                    "market_id": market.id,
                    "seq": trade_seq,
                    "price": x,
                    "size": qty,
                    "taker_side": Side.NO,
                    "kind": Trade.Kind.MINT,
                    "maker_order_id": maker.id,
                    "taker_order_id": taker.id,
                    "maker_agent_id": maker.agent_id,
                    "taker_agent_id": taker.agent_id,
                    "created_at": spec.at,
                }
            )
            yes_pos, no_pos = positions[spec.yes_agent], positions[spec.no_agent]
            yes_pos.yes_shares += qty
            yes_pos.yes_cost += quantize(x * qty)
            no_pos.no_shares += qty
            no_pos.no_cost += quantize(no_price * qty)
            market.volume += qty
            market.trade_count = getattr(market, "trade_count", 0) + 1
            market.last_price = x
        events.sort(key=lambda e: e["seq"])  # ids in sequence order, as one transaction per trade would give
        copy_rows(Order, orders)
        copy_rows(Trade, trades)
        copy_rows(MarketEvent, events)
        _flush(book)
    now = timezone.now()
    copy_rows(
        Position,
        (
            {
                "agent_id": p.agent_id,
                "market_id": market.id,
                "yes_shares": p.yes_shares,
                "no_shares": p.no_shares,
                "yes_cost": p.yes_cost,
                "no_cost": p.no_cost,
                "updated_at": now,
            }
            for a, p in positions.items()
            if a in new_positions
        ),
    )
    old = [p for a, p in positions.items() if a not in new_positions]
    for p in old:
        p.updated_at = now
    if old:
        Position.objects.bulk_update(old, ["yes_shares", "no_shares", "yes_cost", "no_cost", "updated_at"])
    _write_levels(market, levels, touched={(Side.YES, s.price) for s in plan})
    _finish(market, levels, ("volume", "last_price", *(("trade_count",) if hasattr(market, "trade_count") else ())))
    return market.seq


# --------------------------------------------------------------------------------------------------------------------
# Housekeeping


def vacuum_analyze() -> float:
    """``VACUUM (ANALYZE)`` the tables seeded in bulk, as autovacuum would soon do in a live exchange (fresh
    statistics for the planner, a set visibility map for index-only scans); returns the seconds it took."""
    started = time.perf_counter()
    tables = [m._meta.db_table for m in (Order, Trade, Position, MarketEvent, LedgerEntry, Market)]
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    return time.perf_counter() - started


def resting_count(market_id) -> int:
    return Order.objects.filter(market_id=market_id, status__in=Order.RESTING).count()


def history_window(days: float) -> tuple[datetime, datetime]:
    """``(now - days, now)``: a span for :func:`trade_plan`."""
    now = timezone.now()
    return now - timedelta(days=days), now


# --------------------------------------------------------------------------------------------------------------------
# Source snapshots (DESIGN section 10)


@dataclass(frozen=True)
class SnapshotSpec:
    """``count`` snapshots of one market from ``source``, evenly spread from ``start`` to ``end``."""

    market_id: uuid.UUID
    source: str
    count: int
    start: datetime
    end: datetime


def snapshot_stream(spec: SnapshotSpec, rng: random.Random) -> Iterable[dict[str, Any]]:
    """The rows of ``spec`` in time order, ``seq`` 1, 2, ... as the poller numbers them: the YES price a bounded
    random walk in cents (four places, as the sources' prices are kept), the bid and ask a cent either side, the
    volume growing, status ``open``."""
    step = (spec.end - spec.start) / max(spec.count, 1)
    price, volume = 50, Decimal("1000.0000")
    for seq in range(1, spec.count + 1):
        price = min(98, max(2, price + rng.choice((-1, 0, 1))))
        volume += rng.randint(0, 50)
        yield {
            "market_id": spec.market_id,
            "source": spec.source,
            "seq": seq,
            "taken_at": spec.start + step * (seq - 1),
            "yes_price": cents(price),
            "yes_bid": cents(price - 1),
            "yes_ask": cents(price + 1),
            "volume": volume,
            "status": "open",
        }


def seed_snapshots(specs: Sequence[SnapshotSpec], rng: random.Random) -> int:
    """Write the snapshots of ``specs`` with one ``COPY``, the markets' rows interleaved in time order as a poller
    writes them (each pass one snapshot of each market that changed), and set each market's ``reference_price`` and
    ``reference_updated_at`` to its newest snapshot's, as ``snapshot_record`` leaves them. Returns the count.

    No ``reference`` events are written and the markets' ``seq`` is left alone: ``manage.py audit`` checks that a
    market's events number 1..``seq`` without gaps, and does not read snapshots, so it stays clean. A market seeded
    this way has fewer events than snapshots, unlike one the poller fed; nothing measured here reads them."""
    import heapq

    from markets.models import MarketSnapshot

    newest: dict[uuid.UUID, dict[str, Any]] = {}

    def remember(rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for row in rows:
            newest[row["market_id"]] = row
            yield row

    streams = [snapshot_stream(spec, random.Random(rng.random())) for spec in specs]
    count = copy_rows(MarketSnapshot, remember(heapq.merge(*streams, key=lambda row: row["taken_at"])))
    for market_id, row in newest.items():
        Market.objects.filter(id=market_id).update(
            reference_price=row["yes_price"], reference_updated_at=row["taken_at"]
        )
    return count


def vacuum_analyze_models(*models_: type[models.Model]) -> float:
    """``VACUUM (ANALYZE)`` the tables of ``models_`` (as :func:`vacuum_analyze` does its own); the seconds it took."""
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for model in models_:
            cursor.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(model._meta.db_table)))
    return time.perf_counter() - started
