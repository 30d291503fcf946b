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
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction

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
