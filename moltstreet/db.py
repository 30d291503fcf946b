"""Transactions for write services: bounded lock waits and bounded deadlock retries (DESIGN section 6).

Every write service runs in :func:`service_transaction`. On PostgreSQL it sets ``SET LOCAL lock_timeout`` so a lock
wait never hangs; a timeout becomes :class:`ServiceBusy` (HTTP 503 + ``Retry-After``). A deadlock detected by
PostgreSQL rolls the whole transaction back, and the service is run again from the start, a bounded number of times.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connection, connections, transaction
from django.db.models import Model
from django.db.models.fields import AutoFieldMixin, Field

from moltstreet.errors import ServiceBusy

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# PostgreSQL SQLSTATEs: 40P01 deadlock_detected, 40001 serialization_failure, 55P03 lock_not_available.
_RETRYABLE = {"40P01", "40001"}
_LOCK_TIMEOUT = "55P03"


def _sqlstate(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(getattr(cause, "diag", None), "sqlstate", None)


def set_lock_timeout() -> None:
    """Bound every row-lock wait of the current transaction (PostgreSQL only; SQLite serializes writers).

    Connections start with ``lock_timeout`` set to ``LOCK_TIMEOUT_MS`` (the ``options`` of the database settings),
    so this costs a statement only when the setting has changed since (tests do)."""
    if connection.vendor == "postgresql" and settings.MOLTSTREET["LOCK_TIMEOUT_MS"] != _session_lock_timeout():
        with connection.cursor() as cursor:
            # SET takes no bound parameters; the value is an int of our own settings.
            cursor.execute(f"SET LOCAL lock_timeout = '{int(settings.MOLTSTREET['LOCK_TIMEOUT_MS'])}ms'")


def lock_name(name: str) -> None:
    """Take a lock on ``name`` until the current transaction ends: serializes transactions about the same thing that
    has no row of its own to lock yet (registrations from one address). A PostgreSQL advisory lock, bounded by
    ``lock_timeout`` like any other; on SQLite nothing, since its IMMEDIATE transactions never run side by side."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [name])


def _session_lock_timeout() -> int | None:
    """The ``lock_timeout`` (ms) every connection is opened with, from the ``-c lock_timeout=`` database option."""
    options = settings.DATABASES["default"].get("OPTIONS", {}).get("options", "")
    for part in options.split():
        if part.startswith("lock_timeout="):
            return int(part.removeprefix("lock_timeout=").removesuffix("ms"))
    return None


def service_transaction(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` in one ``transaction.atomic`` with a bounded lock wait, retrying on deadlock.

    Raises :class:`ServiceBusy` when a lock wait times out or deadlocks persist. Retries only happen at the outermost
    level: inside a caller's transaction the error propagates, since only the caller can restart its transaction.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        outermost = not connection.in_atomic_block
        attempts = settings.MOLTSTREET["DEADLOCK_RETRIES"] + 1 if outermost else 1
        for attempt in range(1, attempts + 1):
            try:
                with transaction.atomic():
                    set_lock_timeout()
                    return func(*args, **kwargs)
            except OperationalError as exc:
                state = _sqlstate(exc)
                if state == _LOCK_TIMEOUT:
                    raise ServiceBusy(
                        "A lock wait timed out; retry shortly.", detail={"reason": "lock_timeout"}
                    ) from exc
                if state in _RETRYABLE and attempt < attempts:
                    logger.info("retrying %s after %s (attempt %d)", func.__name__, state, attempt)
                    time.sleep(random.uniform(0.001, 0.01) * attempt)
                    continue
                if state in _RETRYABLE:
                    raise ServiceBusy(
                        "Concurrent updates collided; retry shortly.", detail={"reason": "deadlock"}
                    ) from exc
                raise
            except DatabaseError as exc:
                if _sqlstate(exc) in _RETRYABLE and attempt < attempts:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


# --------------------------------------------------------------------------------------------------------------------
# Lean row writers for the order path (docs/performance.md).
#
# ``QuerySet.bulk_update`` builds a ``CASE WHEN pk = ... THEN ...`` expression tree per field and row, and
# ``bulk_create`` resolves every value through the query compiler: on this project's order path that was about half of
# the time an order took. These write the same rows with one plain statement per row, sent together
# (``executemany``, which psycopg 3 pipelines into a single round trip), and apply the same ``pre_save`` (auto_now,
# auto_now_add) and ``get_db_prep_save`` conversions as the ORM, so every backend gets exactly what ``save()`` sends.


def _quoted(name: str) -> str:
    return connection.ops.quote_name(name)


def _run(sql: str, params: list[list[Any]]) -> None:
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    with conn.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)


# The statement text and its fields, per (kind, model, field names, backend): built once, not for every row set.
_statements: dict[tuple, tuple[str, list[Field]]] = {}


def _insertable(meta) -> list[Field]:
    return [f for f in meta.concrete_fields if not (f.primary_key and isinstance(f, AutoFieldMixin))]


def _statement(kind: str, model: type[Model], *names: tuple[str, ...]) -> tuple[str, list[Field]]:
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    key = (kind, model, names, conn.vendor)
    found = _statements.get(key)
    if found is not None:
        return found
    meta = model._meta
    table = _quoted(meta.db_table)
    if kind == "update":
        fields = [meta.get_field(name) for name in names[0]]
        assignments = ", ".join(f"{_quoted(field.column)} = %s" for field in fields)
        sql = f"UPDATE {table} SET {assignments} WHERE {_quoted(meta.pk.column)} = %s"  # noqa: S608  (model names)
    else:
        fields = _insertable(meta)
        sql = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608  (names from the model's own metadata)
            table, ", ".join(_quoted(f.column) for f in fields), ", ".join(["%s"] * len(fields))
        )
        if kind == "upsert":
            unique, update = names
            conflict = ", ".join(_quoted(meta.get_field(name).column) for name in unique)
            updates = ", ".join(
                f"{_quoted(meta.get_field(n).column)} = EXCLUDED.{_quoted(meta.get_field(n).column)}" for n in update
            )
            sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    _statements[key] = (sql, fields)
    return sql, fields


def update_rows(model: type[Model], rows: Iterable[Model], fields: Sequence[str]) -> None:
    """``UPDATE <table> SET <fields> WHERE pk = ...`` for each of ``rows``, by primary key, in one round trip.

    Like ``bulk_update(rows, fields)`` (no signals, no validation), but ``auto_now`` fields in ``fields`` are set to
    now as ``save()`` would. Model instances are left with the values written.
    """
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    rows = list(rows)
    if not rows:
        return
    sql, columns = _statement("update", model, tuple(fields))
    pk = model._meta.pk
    params = [
        [field.get_db_prep_save(field.pre_save(row, False), conn) for field in columns]
        + [pk.get_db_prep_value(row.pk, conn)]
        for row in rows
    ]
    _run(sql, params)


def upsert_rows(model: type[Model], rows: Iterable[Model], *, unique: Sequence[str], update: Sequence[str]) -> None:
    """``INSERT … ON CONFLICT (<unique>) DO UPDATE SET <update>`` for each of ``rows`` in one round trip (PostgreSQL,
    and SQLite 3.24+). ``unique`` must name a unique constraint's fields; an auto-incremented key is left out."""
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    rows = list(rows)
    if not rows:
        return
    sql, columns = _statement("upsert", model, tuple(unique), tuple(update))
    _run(sql, [[field.get_db_prep_save(field.pre_save(row, True), conn) for field in columns] for row in rows])


def insert_rows(model: type[Model], rows: Iterable[Model]) -> None:
    """``INSERT`` each of ``rows`` (all concrete fields; an auto-incremented primary key left to the database) in one
    round trip. Like ``bulk_create(rows)`` without returning generated keys: use it only for rows whose primary key
    nobody reads afterwards, or that set their own (UUIDs)."""
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    rows = list(rows)
    if not rows:
        return
    sql, columns = _statement("insert", model)
    params = [[field.get_db_prep_save(field.pre_save(row, True), conn) for field in columns] for row in rows]
    _run(sql, params)
    for row in rows:
        row._state.adding = False
        row._state.db = conn.alias


class _Reader:
    """``SELECT`` of all of a model's concrete fields, with the value converters Django's compiler would apply on
    this backend (``ops.get_db_converters`` and each field's ``from_db_value``), built once per model and backend."""

    def __init__(self, model: type[Model]):
        conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
        meta = model._meta
        fields = meta.concrete_fields
        table = _quoted(meta.db_table)
        self.model = model
        self.columns = ", ".join(f"{table}.{_quoted(field.column)}" for field in fields)
        self.table = table
        self.attnames = [field.attname for field in fields]
        self.converters = []
        for index, field in enumerate(fields):
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


_readers: dict[tuple[type[Model], str], _Reader] = {}


def fetch_rows(
    model: type[Model],
    where: str,
    params: Sequence[Any] = (),
    *,
    order_by: str = "",
    limit: int | None = None,
    for_update: bool = False,
) -> list[Model]:
    """Model instances for ``SELECT <all fields> FROM <table> WHERE <where> [ORDER BY] [LIMIT] [FOR UPDATE]``.

    ``where`` and ``order_by`` are SQL over the table's own columns with ``%s`` placeholders (never user text).
    The read side of :func:`update_rows`: the same rows ``Model.objects.filter(...)`` returns (converters included)
    without building and compiling a query each time, for the few reads every order makes. ``for_update`` locks the
    rows where the backend can (PostgreSQL; SQLite serializes writers instead).
    """
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    reader = _reader(model)
    sql = f"SELECT {reader.columns} FROM {reader.table} WHERE {where}"  # noqa: S608  (our own SQL, params bound)
    if order_by:
        sql += f" ORDER BY {order_by}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    if for_update and conn.features.has_select_for_update:
        sql += " FOR UPDATE"
    with conn.cursor() as cursor:
        cursor.execute(sql, _params(params, conn))
        rows = cursor.fetchall()
    return [reader.build(row, conn) for row in rows]


def fetch_pairs(
    model: type[Model], other: type[Model], on: str, where: str, params: Sequence[Any] = (), *, limit: int | None = None
) -> list[tuple[Model, Model]]:
    """``(model, other)`` instances for ``SELECT <both> FROM <model> JOIN <other> ON <on> WHERE <where>``: a
    foreign key and the row it points to in one round trip (``on`` and ``where`` name columns with their table)."""
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    first, second = _reader(model), _reader(other)
    sql = f"SELECT {first.columns}, {second.columns} FROM {first.table} JOIN {second.table} ON {on} WHERE {where}"  # noqa: S608
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with conn.cursor() as cursor:
        cursor.execute(sql, _params(params, conn))
        rows = cursor.fetchall()
    split = len(first.attnames)
    return [(first.build(row[:split], conn), second.build(row[split:], conn)) for row in rows]


def _reader(model: type[Model]) -> _Reader:
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    key = (model, conn.vendor)
    reader = _readers.get(key)
    if reader is None:
        reader = _readers[key] = _Reader(model)
    return reader


def _params(values: Sequence[Any], conn) -> list[Any]:
    # Django stores UUIDs as 32 hex characters where the backend has no uuid type (SQLite); psycopg adapts them.
    if conn.features.has_native_uuid_field:
        return list(values)
    return [value.hex if isinstance(value, uuid.UUID) else value for value in values]


def placeholders(values: Sized) -> str:
    """``%s, %s, …``: one placeholder per value, for ``IN (…)``."""
    return ", ".join(["%s"] * len(values))


@contextmanager
def pipelined() -> Iterator[None]:
    """Send the statements run inside to PostgreSQL together, without waiting for each answer (psycopg pipeline
    mode): one round trip for a transaction's writes. Errors (a constraint, a lock timeout) surface on the way out,
    as the usual Django database exceptions. A no-op on other backends."""
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    if conn.vendor != "postgresql":
        yield
        return
    conn.ensure_connection()
    with conn.wrap_database_errors, conn.connection.pipeline():
        yield


@dataclass(frozen=True)
class Select:
    """One read for :func:`fetch_together`: the arguments of :func:`fetch_rows`."""

    model: type[Model]
    where: str
    params: Sequence[Any] = ()
    order_by: str = ""
    limit: int | None = None
    for_update: bool = False

    def sql(self) -> tuple[str, list[Any]]:
        conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
        reader = _reader(self.model)
        sql = f"SELECT {reader.columns} FROM {reader.table} WHERE {self.where}"  # noqa: S608  (our own SQL)
        if self.order_by:
            sql += f" ORDER BY {self.order_by}"
        if self.limit is not None:
            sql += f" LIMIT {int(self.limit)}"
        if self.for_update and conn.features.has_select_for_update:
            sql += " FOR UPDATE"
        return sql, _params(self.params, conn)

    def build(self, rows: list[Sequence[Any]]) -> list[Model]:
        conn = connections[DEFAULT_DB_ALIAS]
        reader = _reader(self.model)
        return [reader.build(row, conn) for row in rows]


@dataclass(frozen=True)
class Scalar:
    """One read for :func:`fetch_together` that returns a single value (a ``COUNT(*)``, say)."""

    sql_text: str
    params: Sequence[Any] = ()

    def sql(self) -> tuple[str, list[Any]]:
        return self.sql_text, _params(self.params, connections[DEFAULT_DB_ALIAS])

    def build(self, rows: list[Sequence[Any]]) -> Any:
        return rows[0][0] if rows else None


def fetch_together(*reads: Select | Scalar) -> list[Any]:
    """Run independent reads in one round trip (psycopg pipeline mode on PostgreSQL; one after the other
    elsewhere) and return their results in order: a list of instances per :class:`Select`, a value per
    :class:`Scalar`. They run in the order given, each seeing what the ones before it locked."""
    conn = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    if conn.vendor != "postgresql" or len(reads) == 1:
        results = []
        for read in reads:
            sql, params = read.sql()
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                results.append(read.build(cursor.fetchall()))
        return results
    conn.ensure_connection()
    raw = conn.connection
    with conn.wrap_database_errors:
        cursors = []
        try:
            with raw.pipeline():
                for read in reads:
                    cursor = raw.cursor()
                    cursors.append(cursor)
                    cursor.execute(*read.sql())
            return [read.build(cursor.fetchall()) for read, cursor in zip(reads, cursors, strict=True)]
        finally:
            for cursor in cursors:
                cursor.close()
