"""The book store: every SQL statement of the order path, and the only code that runs them.

The order service (``trading.orders``), the market lifecycle (``trading.lifecycle``) and resolution
(``trading.resolution``) read and write the rows of one locked market through these functions and get model
instances and named results back, never rows or SQL:

* :func:`lock_market`: the market row, locked (the first lock of every trading transaction, DESIGN section 6);
* :func:`lock_for_order`: the market locked, the first page of the orders a new order crosses and the agent's
  earlier order with the same ``client_order_id``, in one round trip (:class:`OrderContext`);
* :func:`crossing_page`: the next page of crossing orders, in priority order (DESIGN section 3);
* :func:`load_parties`: the agents involved locked (ascending id, after the market), their positions, the book
  levels, the open-order count and a concurrent twin of the order, in one round trip (:class:`Parties`);
* :func:`load_positions`, :func:`resting_orders`, :func:`resting_markets`, :func:`own_order`,
  :func:`resting_buy_contracts`, :func:`taker_trades`: the smaller reads;
* :func:`write`: everything a :class:`~trading.market_tx.MarketTx` changed, in one round trip.

How: statements are composed with :mod:`psycopg.sql` from the models' own table and column names (never from user
text), every value is a ``%s`` parameter, and each statement text is built once per backend. They run through
Django's connection (its cursor wrapper, its error translation, its query log), on PostgreSQL and on SQLite alike.
On PostgreSQL, reads that do not depend on each other and all the writes of a transaction go out together in psycopg's
pipeline mode: one round trip each. Rows are turned into model instances with the converters Django's compiler would
apply (:meth:`Model.from_db`), and written with each field's ``pre_save``/``get_db_prep_save`` as ``save()`` does.

Why not the ORM here: compiling a queryset per read, ``bulk_update``'s ``CASE WHEN`` trees and ``bulk_create``'s
per-value resolution were about half of an order's time (docs/performance.md, docs/decisions.md).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model
from django.db.models.fields import AutoFieldMixin, Field
from psycopg import sql

from agents.models import Agent, AgentEvent, LedgerEntry
from markets.models import Forecast, Market, MarketEvent
from moltstreet.errors import NotFound
from moltstreet.ids import parse_id
from moltstreet.money import complement
from trading import matching
from trading.models import Action, BookLevel, Order, Position, Side, Trade

if TYPE_CHECKING:
    from agents.services import AgentFeed, CashBook
    from trading.market_tx import MarketTx

RESTING = Order.RESTING
# Test-only switch for the concurrency suite's negative control: with it off, no row is locked (never in production).
LOCKING_ENABLED = True

# What a transaction may change in a position or an existing order (updated_at is set to now on write).
POSITION_FIELDS: tuple[str, ...] = (
    "yes_shares",
    "no_shares",
    "yes_reserved",
    "no_reserved",
    "yes_cost",
    "no_cost",
    "realized_pnl",
)
POSITION_FIELDS += ("linked_cash", "linked_yes", "linked_no", "updated_at")
_POSITION_STATE = POSITION_FIELDS[:-1]  # what a transaction may change in a position, its time aside
ORDER_FIELDS = ("size", "filled", "status", "cancel_reason", "replaced_by", "updated_seq", "updated_at")
Level = tuple[str, Decimal]  # (book side, price on that side)


# --------------------------------------------------------------------------------------------------------------------
# Named results.


@dataclass(frozen=True)
class OrderContext:
    """What a new order needs before it is matched, read under the market's row lock (:func:`lock_for_order`).

    ``crossing``: the first page of resting orders the order crosses, best price then earliest first; ``earlier``:
    the agent's order with the same ``client_order_id``, if there is one."""

    market: Market
    crossing: list[Order]
    earlier: Order | None


@dataclass(frozen=True)
class Parties:
    """The agents of a transaction, locked, with what it needs of them (:func:`load_parties`).

    ``positions`` holds the rows that exist (an agent without a position in the market is missing); ``levels`` is
    every book level's resting size (contracts) when asked for; ``resting_count`` the open-order count of the agent
    asked for; ``earlier`` an order with the ``client_order_id`` asked for that committed since the first read."""

    agents: dict[uuid.UUID, Agent]
    positions: dict[uuid.UUID, Position]
    levels: dict[Level, int] | None
    resting_count: int | None
    earlier: Order | None


# --------------------------------------------------------------------------------------------------------------------
# The order path's reads.


def lock_market(market_id: uuid.UUID | str) -> Market:
    """The market row, locked until commit: the first lock of every trading transaction (DESIGN section 6).

    Raises :class:`NotFound` for an unknown or malformed id."""
    key = parse_id(market_id, "market")
    (found,) = _fetch(_select(Market, "by_id", [key], for_update=LOCKING_ENABLED))
    if not found:
        raise NotFound.of("market", market_id)
    return found[0]


def lock_for_order(
    *,
    market_id: uuid.UUID | str,
    agent_id: uuid.UUID,
    book_side: str,
    book_price: Decimal,
    page: int,
    client_order_id: str | None,
) -> OrderContext:
    """Lock the market row, read the first ``page`` resting orders an order resting at ``(book_side, book_price)``
    would cross (the book cannot change under the lock) and the agent's order with ``client_order_id``, in one round
    trip. Raises :class:`NotFound` for an unknown or malformed market id."""
    key = parse_id(market_id, "market")
    reads = [
        _select(Market, "by_id", [key], for_update=LOCKING_ENABLED),
        _crossing(key, book_side, book_price, after=None, limit=page),
    ]
    if client_order_id:
        reads.append(_by_client_order_id(agent_id, client_order_id))
    markets, crossing, *earlier = _fetch(*reads)
    if not markets:
        raise NotFound.of("market", market_id)
    return OrderContext(market=markets[0], crossing=crossing, earlier=_first(earlier))


def crossing_page(
    market_id: uuid.UUID, book_side: str, book_price: Decimal, *, after: Order | None, limit: int
) -> list[Order]:
    """The next ``limit`` resting orders of the queue opposite ``book_side`` that cross ``book_price``, after
    ``after`` in priority order (best price, then earliest: DESIGN section 3), read by keyset; from the best when
    ``after`` is ``None``."""
    (rows,) = _fetch(_crossing(market_id, book_side, book_price, after=after, limit=limit))
    return rows


def load_parties(
    market_id: uuid.UUID,
    *,
    agent_ids: Iterable[uuid.UUID],
    position_ids: Iterable[uuid.UUID] = (),
    levels: bool = False,
    count_resting_of: uuid.UUID | None = None,
    client_order: tuple[uuid.UUID, str] | None = None,
) -> Parties:
    """Lock ``agent_ids`` in ascending order (after the market: DESIGN section 6) and read, in the same round trip,
    the positions in the market of ``position_ids``, every book level if ``levels``, the count of resting orders of
    ``count_resting_of`` across all markets, and the order of ``client_order`` (an agent id and its
    ``client_order_id``)."""
    wanted, positions = sorted(set(agent_ids)), sorted(set(position_ids))
    reads = []
    if wanted:
        reads.append(_select(Agent, "by_ids", wanted, for_update=LOCKING_ENABLED, count=len(wanted)))
    if positions:
        reads.append(_select(Position, "positions", [market_id, *positions], count=len(positions)))
    if levels:
        reads.append(_select(BookLevel, "levels", [market_id]))
    if count_resting_of is not None:
        reads.append(_Read(_text("resting_count"), [count_resting_of, *RESTING], _scalar))
    if client_order is not None:
        reads.append(_by_client_order_id(*client_order))
    results = iter(_fetch(*reads))
    return Parties(
        agents={a.id: a for a in next(results)} if wanted else {},
        positions={p.agent_id: p for p in next(results)} if positions else {},
        levels={(lv.book_side, lv.price): lv.size for lv in next(results)} if levels else None,
        resting_count=next(results) if count_resting_of is not None else None,
        earlier=_first([next(results)]) if client_order is not None else None,
    )


def load_positions(market_id: uuid.UUID, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Position]:
    """The positions in the market of ``agent_ids`` that exist, by agent id."""
    ids = sorted(set(agent_ids))
    if not ids:
        return {}
    (rows,) = _fetch(_select(Position, "positions", [market_id, *ids], count=len(ids)))
    return {p.agent_id: p for p in rows}


def resting_orders(
    market_id: uuid.UUID,
    *,
    agent_id: uuid.UUID | None = None,
    order_id: uuid.UUID | None = None,
    order_ids: Iterable[uuid.UUID] | None = None,
    expired_by: datetime | None = None,
) -> list[Order]:
    """The market's resting orders in arrival order (``seq``): all of them, or only the agent's (only those of
    ``order_ids`` among them, if given), only the one order, or only GTD orders whose ``expires_at`` is at or before
    ``expired_by``. Read under the market's lock, so exactly
    what is resting now."""
    if agent_id is not None and order_ids is not None:
        ids = sorted(set(order_ids))
        read = _select(Order, "resting_of_agent_in", [market_id, *RESTING, agent_id, *ids], count=len(ids))
    elif agent_id is not None:
        read = _select(Order, "resting_of_agent", [market_id, *RESTING, agent_id])
    elif order_id is not None:
        read = _select(Order, "resting_order", [market_id, *RESTING, order_id])
    elif expired_by is not None:
        read = _select(Order, "resting_expired", [market_id, *RESTING, expired_by])
    else:
        read = _select(Order, "resting", [market_id, *RESTING])
    (rows,) = _fetch(read)
    return rows


def resting_markets(agent_id: uuid.UUID, market_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    """The ids of the markets where the agent has resting orders (only ``market_id``, if given), ascending: the
    order in which they are locked (DESIGN section 6)."""
    if market_id is not None:
        read = _Read(_text("resting_market"), [agent_id, *RESTING, market_id], _first_column)
    else:
        read = _Read(_text("resting_markets"), [agent_id, *RESTING], _first_column)
    (ids,) = _fetch(read)
    return [_uuid(value) for value in ids]


def own_order(agent_id: uuid.UUID, order_id: uuid.UUID | str) -> Order | None:
    """The agent's order ``order_id`` (``None`` for an unknown, malformed or other agent's id), not locked: its
    market is, next (cancelling)."""
    try:
        key = uuid.UUID(str(order_id))
    except ValueError:
        return None
    (rows,) = _fetch(_select(Order, "own_order", [key, agent_id]))
    return _first([rows])


def own_orders(agent_id: uuid.UUID, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Order]:
    """The agent's orders among ``order_ids`` (another agent's are left out), by id, not locked."""
    ids = sorted(set(order_ids))
    if not ids:
        return {}
    (rows,) = _fetch(_select(Order, "own_orders", [agent_id, *ids], count=len(ids)))
    return {order.id: order for order in rows}


def resting_buy_contracts(agent_id: uuid.UUID, market_id: uuid.UUID, side: str) -> int:
    """Contracts of ``side`` the agent's resting BUY orders in the market may still buy (``size - filled``)."""
    (total,) = _fetch(_Read(_text("resting_buys"), [agent_id, market_id, side, Action.BUY, *RESTING], _scalar))
    return int(total or 0)


def taker_trades(order_id: uuid.UUID) -> list[Trade]:
    """The trades ``order_id`` took as taker, in execution order (a repeated ``client_order_id`` answers with them)."""
    (rows,) = _fetch(_select(Trade, "taker_trades", [order_id]))
    return rows


def _first(found: list[list[Any]]) -> Any:
    return found[0][0] if found and found[0] else None


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --------------------------------------------------------------------------------------------------------------------
# The order path's writes.


def write(tx: MarketTx) -> list[MarketEvent]:
    """Write out everything ``tx`` changed: positions (a new one only if it holds or records something, an existing
    one only if changed), orders, trades, linked agents' ``linked_pnl``, forecasts, the book levels whose size
    changed, the market's events and changed fields (its top of book refreshed when a level changed), the involved
    agents' private feed messages (:meth:`~trading.market_tx.MarketTx.agent_feed`) and the cash book (balances,
    reserves, feed sequences and ledger rows), in one round trip. Returns the stored market events, which go to the
    feed's subscribers after commit with the agents' messages."""
    with _pipelined():
        new = [tx.positions[a] for a in sorted(tx.new_positions)]
        _insert(Position, [p for p in new if _worth_keeping(p)])
        changed = tx.changed_positions()
        _update(Position, [tx.positions[a] for a in sorted(changed - tx.new_positions)], POSITION_FIELDS)
        # Changed orders first: an amended order gives its client_order_id up (replaced_by) before its replacement,
        # which carries the id on, is inserted under the unique index.
        _update(Order, tx.orders.values(), ORDER_FIELDS)
        _insert(Order, tx.new_orders)
        _insert(Trade, tx.trades)
        if tx.linked_agents:
            _update(Agent, [tx.agents[a] for a in sorted(tx.linked_agents)], ("linked_pnl",))
        _insert(Forecast, tx.forecasts)
        if _write_levels(tx):  # some book level changed: the top of book may have moved
            _refresh_top_of_book(tx)
        events = tx.log.events
        if events:
            _insert(MarketEvent, events)
            _update(Market, [tx.market], ("seq", *sorted(tx.market_fields)))
        # Last: the messages render the rows above as written (their created_at and updated_at are set by now).
        feed = tx.agent_feed()
        _write_cash(tx.cash, feed)
    return tx.log.published_on_commit(feed)


def position_state(position: Position) -> tuple[Any, ...]:
    """What a transaction may change in a position (contracts, reserves, cost, P&L, linked trades), to compare."""
    return tuple(getattr(position, name) for name in _POSITION_STATE)


def _write_cash(cash: CashBook, feed: AgentFeed) -> None:
    """The balances and reserves of the agents a :class:`~agents.services.CashBook` moved, and its ledger rows: the
    one balance write outside ``agents.services`` (moltstreet/tests/test_money_paths.py), writing what the cash book
    computed. With them the private feed messages of the transaction and each messaged agent's ``feed_seq``
    (every agent whose cash moved has a ``balance`` message), in one statement per agent as before."""
    if not cash.touched.keys() <= feed.agents.keys():
        raise AssertionError("an agent's cash moved without a balance message")
    _update(Agent, [feed.agents[a] for a in sorted(feed.agents)], ("balance", "locked_balance", "feed_seq"))
    _insert(LedgerEntry, cash.entries)
    _insert(AgentEvent, feed.events)
    cash.entries.clear()
    cash.touched.clear()


def _write_levels(tx: MarketTx) -> bool:
    """Upsert the book levels whose size changed; ``True`` if any did."""
    before = tx.levels_loaded or {}
    changed = [
        BookLevel(market_id=tx.market.id, book_side=side, price=price, size=size)
        for (side, price), size in tx.levels.items()
        if size != before.get((side, price), 0)
    ]
    if changed:
        _run(_text("upsert_level"), [_insert_params(BookLevel, row) for row in changed])
    return bool(changed)


def _refresh_top_of_book(tx: MarketTx) -> None:
    """Set the market's best YES bid and ask from the book levels (all of them are loaded)."""
    best: dict[str, Decimal | None] = {Side.YES: None, Side.NO: None}
    for (side, price), size in tx.levels.items():
        current = best[side]
        if size > 0 and (current is None or price > current):
            best[side] = price
    no_bid = best[Side.NO]
    tx.market.best_bid = best[Side.YES]
    tx.market.best_ask = complement(no_bid) if no_bid is not None else None
    tx.market_fields.update({"best_bid", "best_ask"})


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


# --------------------------------------------------------------------------------------------------------------------
# Statements: composed once per backend from the models' metadata.


def _table(model: type[Model]) -> sql.Identifier:
    return sql.Identifier(model._meta.db_table)


def _col(model: type[Model], name: str) -> sql.Identifier:
    return sql.Identifier(model._meta.db_table, _column(_field(model, name)))


def _field(model: type[Model], name: str) -> Field:
    field = model._meta.get_field(name)
    if not isinstance(field, Field):  # a reverse relation: no column of this table
        raise TypeError(f"{model.__name__}.{name} is not a column")
    return field


def _column(field: Field) -> str:
    if field.column is None:
        raise TypeError(f"{field} has no column")
    return field.column


def _placeholders(count: int) -> sql.Composed:
    return sql.SQL(", ").join([sql.Placeholder()] * count)


def _columns(model: type[Model]) -> sql.Composed:
    return sql.SQL(", ").join([sql.Identifier(model._meta.db_table, _column(f)) for f in model._meta.concrete_fields])


def _where(model: type[Model], key: str, count: int) -> tuple[sql.Composable, sql.Composable]:
    """The ``WHERE`` and ``ORDER BY`` of the named read of ``model`` (``count``: values of an ``IN`` list, or the
    page size of a crossing read)."""
    c = functools.partial(_col, model)
    empty = sql.SQL("")
    resting = "{} = %s AND {} IN (%s, %s)"  # market, status
    if key == "by_id":
        return sql.SQL("{} = %s").format(c("id")), empty
    if key == "by_ids":
        return sql.SQL("{} IN ({})").format(c("id"), _placeholders(count)), sql.SQL(" ORDER BY {}").format(c("id"))
    if key == "positions":
        return sql.SQL("{} = %s AND {} IN ({})").format(c("market"), c("agent"), _placeholders(count)), empty
    if key == "levels":
        return sql.SQL("{} = %s").format(c("market")), empty
    if key == "client_order_id":  # the newest order of an amend chain holds the id (Order.replaced_by)
        return (
            sql.SQL("{} = %s AND {} = %s AND {} IS NULL").format(c("agent"), c("client_order_id"), c("replaced_by")),
            sql.SQL(" LIMIT 1"),
        )
    by_seq = sql.SQL(" ORDER BY {}").format(c("seq"))
    if key == "resting":
        return sql.SQL(resting).format(c("market"), c("status")), by_seq
    if key == "resting_of_agent":
        return sql.SQL(resting + " AND {} = %s").format(c("market"), c("status"), c("agent")), by_seq
    if key == "resting_of_agent_in":
        return (
            sql.SQL(resting + " AND {} = %s AND {} IN ({})").format(
                c("market"), c("status"), c("agent"), c("id"), _placeholders(count)
            ),
            by_seq,
        )
    if key == "resting_order":
        return sql.SQL(resting + " AND {} = %s").format(c("market"), c("status"), c("id")), by_seq
    if key == "resting_expired":
        return sql.SQL(resting + " AND {} <= %s").format(c("market"), c("status"), c("expires_at")), by_seq
    if key == "own_orders":
        return sql.SQL("{} = %s AND {} IN ({})").format(c("agent"), c("id"), _placeholders(count)), empty
    if key == "own_order":
        return sql.SQL("{} = %s AND {} = %s").format(c("id"), c("agent")), sql.SQL(" LIMIT 1")
    if key == "taker_trades":
        return sql.SQL("{} = %s").format(c("taker_order")), by_seq
    if key in ("crossing", "crossing_after"):
        # The queue opposite the order's book side, at prices that cross it (DESIGN section 3), in priority order:
        # best price, then earliest arrival; ``crossing_after`` continues after an order (a keyset page).
        where = sql.SQL("{} = %s AND {} = %s AND {} IN (%s, %s) AND {} >= %s").format(
            c("market"), c("book_side"), c("status"), c("book_price")
        )
        if key == "crossing_after":
            where += sql.SQL(" AND ({price} < %s OR ({price} = %s AND {seq} > %s))").format(
                price=c("book_price"), seq=c("seq")
            )
        # The page size is part of the statement, not a parameter: with server-side binding, PostgreSQL plans a
        # prepared statement once for any LIMIT, and a plan for an unknown LIMIT reads the deep book differently.
        return where, sql.SQL(" ORDER BY {} DESC, {} LIMIT {}").format(c("book_price"), c("seq"), sql.Literal(count))
    raise KeyError(key)


@functools.cache
def _select_text(model: type[Model], key: str, count: int, for_update: bool) -> str:
    where, tail = _where(model, key, count)
    statement = sql.SQL("SELECT {} FROM {} WHERE {}{}{}").format(
        _columns(model), _table(model), where, tail, sql.SQL(" FOR UPDATE") if for_update else sql.SQL("")
    )
    return statement.as_string(None)


@functools.cache
def _text(key: str) -> str:
    """The statements that are not a plain read of one model's rows."""
    orders = functools.partial(_col, Order)
    if key == "resting_count":  # an index-only count, across all markets
        statement = sql.SQL("SELECT COUNT(*) FROM {} WHERE {} = %s AND {} IN (%s, %s)").format(
            _table(Order), orders("agent"), orders("status")
        )
    elif key in ("resting_markets", "resting_market"):
        statement = sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} = %s AND {} IN (%s, %s){} ORDER BY {}").format(
            orders("market"),
            _table(Order),
            orders("agent"),
            orders("status"),
            sql.SQL(" AND {} = %s").format(orders("market")) if key == "resting_market" else sql.SQL(""),
            orders("market"),
        )
    elif key == "resting_buys":
        statement = sql.SQL(
            "SELECT SUM({size} - {filled}) FROM {table} WHERE {agent} = %s AND {market} = %s AND {side} = %s "
            "AND {action} = %s AND {status} IN (%s, %s)"
        ).format(
            size=orders("size"),
            filled=orders("filled"),
            table=_table(Order),
            agent=orders("agent"),
            market=orders("market"),
            side=orders("side"),
            action=orders("action"),
            status=orders("status"),
        )
    elif key == "upsert_level":
        # INSERT … ON CONFLICT (market, book_side, price) DO UPDATE SET size (PostgreSQL, and SQLite 3.24+).
        fields = _insertable(BookLevel)
        size = sql.Identifier(_column(_field(BookLevel, "size")))
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} = EXCLUDED.{}").format(
            _table(BookLevel),
            sql.SQL(", ").join([sql.Identifier(_column(f)) for f in fields]),
            _placeholders(len(fields)),
            sql.SQL(", ").join(
                [sql.Identifier(_column(_field(BookLevel, n))) for n in ("market", "book_side", "price")]
            ),
            size,
            size,
        )
    else:
        raise KeyError(key)
    return statement.as_string(None)


@functools.cache
def _insert_text(model: type[Model], rows: int) -> str:
    """``INSERT INTO <table> (<columns>) VALUES (...), (...), ...``: ``rows`` rows in one statement."""
    fields = _insertable(model)
    row = sql.SQL("({})").format(_placeholders(len(fields)))
    return (
        sql.SQL("INSERT INTO {} ({}) VALUES {}")
        .format(
            _table(model),
            sql.SQL(", ").join([sql.Identifier(_column(f)) for f in fields]),
            sql.SQL(", ").join([row] * rows),
        )
        .as_string(None)
    )


@functools.cache
def _update_text(model: type[Model], names: tuple[str, ...]) -> str:
    meta = model._meta
    assignments = sql.SQL(", ").join(
        [sql.SQL("{} = %s").format(sql.Identifier(_column(_field(model, n)))) for n in names]
    )
    return (
        sql.SQL("UPDATE {} SET {} WHERE {} = %s")
        .format(_table(model), assignments, sql.Identifier(_column(meta.pk)))
        .as_string(None)
    )


@functools.cache
def _insertable(model: type[Model]) -> list[Field]:
    return [f for f in model._meta.concrete_fields if not (f.primary_key and isinstance(f, AutoFieldMixin))]


# --------------------------------------------------------------------------------------------------------------------
# Running statements.


@dataclass(frozen=True)
class _Read:
    """One statement and how its rows become a result (model instances, a value, a column)."""

    text: str
    params: list[Any]
    shape: Callable[[list[Sequence[Any]]], Any]


def _select(model: type[Model], key: str, params: list[Any], *, for_update: bool = False, count: int = 0) -> _Read:
    lock = for_update and _connection().features.has_select_for_update
    return _Read(_select_text(model, key, count, lock), params, functools.partial(_instances, model))


def _crossing(market_id: uuid.UUID, book_side: str, book_price: Decimal, *, after: Order | None, limit: int) -> _Read:
    params: list[Any] = [market_id, matching.opposite(book_side), *RESTING, complement(book_price)]
    if after is not None:
        params += [after.book_price, after.book_price, after.seq]
    return _select(Order, "crossing_after" if after is not None else "crossing", params, count=int(limit))


def _by_client_order_id(agent_id: uuid.UUID, client_order_id: str) -> _Read:
    """The agent's order with this ``client_order_id`` (at most one: unique per agent)."""
    return _select(Order, "client_order_id", [agent_id, client_order_id])


def _scalar(rows: list[Sequence[Any]]) -> Any:
    return rows[0][0] if rows else None


def _first_column(rows: list[Sequence[Any]]) -> list[Any]:
    return [row[0] for row in rows]


def _connection():
    return connections[DEFAULT_DB_ALIAS]  # the thread's connection


def _params(values: Sequence[Any]) -> list[Any]:
    """Values as the backend stores them: on SQLite a UUID is 32 hex characters and a datetime Django's text form
    (psycopg adapts both itself)."""
    conn = _connection()
    if conn.vendor == "postgresql":
        return list(values)
    return [
        value.hex
        if isinstance(value, uuid.UUID)
        else conn.ops.adapt_datetimefield_value(value)
        if isinstance(value, datetime)
        else value
        for value in values
    ]


def _fetch(*reads: _Read) -> list[Any]:
    """Run ``reads`` in order, each seeing what the ones before it locked, and return their shaped results. On
    PostgreSQL they go out together (pipeline mode: one round trip)."""
    conn = _connection()
    if conn.vendor != "postgresql" or len(reads) == 1:
        results = []
        for read in reads:
            with conn.cursor() as cursor:
                cursor.execute(read.text, _params(read.params))
                results.append(read.shape(cursor.fetchall()))
        return results
    cursors = []
    try:
        with _pipelined():
            for read in reads:
                cursor = conn.cursor()
                cursors.append(cursor)
                cursor.execute(read.text, _params(read.params))
        return [read.shape(cursor.fetchall()) for read, cursor in zip(reads, cursors, strict=True)]
    finally:
        for cursor in cursors:
            cursor.close()


@contextmanager
def _pipelined() -> Iterator[None]:
    """Send the statements run inside to PostgreSQL together, without waiting for each answer (psycopg pipeline
    mode). Errors (a constraint, a lock timeout) surface on the way out as Django's database exceptions. Nothing
    changes on other backends."""
    conn = _connection()
    if conn.vendor != "postgresql":
        yield
        return
    conn.ensure_connection()
    with conn.wrap_database_errors, conn.connection.pipeline():
        yield


def _run(text: str, params: list[list[Any]]) -> None:
    with _connection().cursor() as cursor:
        if len(params) == 1:
            cursor.execute(text, params[0])
        else:
            cursor.executemany(text, params)


def _insert_params(model: type[Model], row: Model) -> list[Any]:
    conn = _connection()
    return [field.get_db_prep_save(field.pre_save(row, True), conn) for field in _insertable(model)]


# Bound values of one INSERT at most: SQLite's oldest limit (999). PostgreSQL takes 65,535.
_MAX_VALUES = 999


def _insert(model: type[Model], rows: Iterable[Model]) -> None:
    """``INSERT`` ``rows`` (an auto-incremented key left to the database, in the rows' order, and not read back), in
    one multi-row statement (a chunk of them per statement beyond ``_MAX_VALUES`` values): a statement per row cost
    about 70 us more each on the order path, which writes 10-20 rows per crossing order (docs/performance.md)."""
    rows = list(rows)
    if not rows:
        return
    conn = _connection()
    params = [_insert_params(model, row) for row in rows]
    per_statement = max(1, _MAX_VALUES // len(params[0]))
    for start in range(0, len(params), per_statement):
        chunk = params[start : start + per_statement]
        _run(_insert_text(model, len(chunk)), [[value for row in chunk for value in row]])
    for row in rows:
        row._state.adding = False
        row._state.db = conn.alias


def _update(model: type[Model], rows: Iterable[Model], names: Sequence[str]) -> None:
    """``UPDATE … SET <names> WHERE pk = …`` for each of ``rows`` (``auto_now`` fields among ``names`` set to now)."""
    rows = list(rows)
    if not rows:
        return
    conn, meta = _connection(), model._meta
    fields = [_field(model, name) for name in names]
    params = [
        [f.get_db_prep_save(f.pre_save(row, False), conn) for f in fields] + [meta.pk.get_db_prep_value(row.pk, conn)]
        for row in rows
    ]
    _run(_update_text(model, tuple(names)), params)


class _Builder:
    """Turns a row of all of a model's concrete fields into an instance with the converters Django's compiler would
    apply on this backend (``ops.get_db_converters`` and each field's ``from_db_value``)."""

    def __init__(self, model: type[Model], conn) -> None:
        meta = model._meta
        self.model = model
        self.attnames = [field.attname for field in meta.concrete_fields]
        self.converters = []
        for index, field in enumerate(meta.concrete_fields):
            expression = field.get_col(meta.db_table)
            found = conn.ops.get_db_converters(expression) + expression.get_db_converters(conn)
            if found:
                self.converters.append((index, expression, found))

    def build(self, row: Sequence[Any], conn) -> Model:
        if self.converters:
            row = list(row)
            for index, expression, converters in self.converters:
                value = row[index]
                for converter in converters:
                    value = converter(value, expression, conn)
                row[index] = value
        return self.model.from_db(conn.alias, self.attnames, row)


_builders: dict[tuple[type[Model], str], _Builder] = {}


def _instances(model: type[Model], rows: list[Sequence[Any]]) -> list[Any]:
    conn = _connection()
    builder = _builders.get((model, conn.vendor))
    if builder is None:
        builder = _builders[(model, conn.vendor)] = _Builder(model, conn)
    return [builder.build(row, conn) for row in rows]


__all__ = [
    "LOCKING_ENABLED",
    "OrderContext",
    "Parties",
    "crossing_page",
    "load_parties",
    "load_positions",
    "lock_for_order",
    "lock_market",
    "own_order",
    "resting_buy_contracts",
    "resting_markets",
    "resting_orders",
    "taker_trades",
    "write",
]
