"""One process at a time: a lock for services that must not run twice at once (the source poller, DESIGN section 10).

On PostgreSQL it is a session-level advisory lock taken on a connection of its own, outside Django's pool: it holds
while that connection lives, and PostgreSQL releases it by itself when the process dies or the connection drops (so a
crashed poller never blocks the next one). On SQLite (``make run``, one machine) it is an exclusive ``flock`` on a
file beside the database, which the kernel releases the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from pathlib import Path
from typing import Any

import psycopg
from django.db import connections

logger = logging.getLogger(__name__)


class SingletonLock:
    """A named lock across processes and machines. ``try_acquire()`` takes it if free; ``acquire()`` waits for it
    (checking every ``poll`` seconds, until ``stop`` is set); ``held()`` tells whether it is still ours (a lost
    database connection loses it); ``release()`` gives it back."""

    def __init__(self, name: str, *, poll: float = 5.0):
        self.name, self.poll = name, poll
        self._connection: psycopg.Connection | None = None
        self._file: Any = None

    @property
    def _postgres(self) -> bool:
        return "postgresql" in connections["default"].settings_dict["ENGINE"]

    def _connect(self) -> psycopg.Connection:
        params = connections["default"].settings_dict  # the database this process uses (a test's test database)
        return psycopg.connect(
            host=params.get("HOST") or None,
            port=params.get("PORT") or None,
            user=params.get("USER") or None,
            password=params.get("PASSWORD") or None,
            dbname=params.get("NAME"),
            connect_timeout=int(params.get("OPTIONS", {}).get("connect_timeout", 5)),
            autocommit=True,
        )

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; ``True`` if this process holds it now."""
        if self._postgres:
            if self._connection is None or self._connection.closed:
                self._connection = self._connect()
            row = self._connection.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [self.name]
            ).fetchone()
            return bool(row and row[0])
        if self._file is None:
            path = Path(str(connections["default"].settings_dict["NAME"])).with_name(f".{self.name}.lock")
            self._file = path.open("w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self, *, stop: threading.Event | None = None) -> bool:
        """Wait until the lock is ours (logging that another process holds it); ``False`` if ``stop`` was set first."""
        stop = stop or threading.Event()
        waited = False
        while not stop.is_set():
            if self.try_acquire():
                if waited:
                    logger.info("%s: the lock is ours now", self.name)
                return True
            if not waited:
                logger.info("%s: another process holds the lock; waiting for it", self.name)
                waited = True
            stop.wait(self.poll)
        return False

    def held(self) -> bool:
        """Whether the lock is still ours: on PostgreSQL, whether its connection still answers."""
        if not self._postgres:
            return self._file is not None
        try:
            return self._connection is not None and self._connection.execute("SELECT 1").fetchone() is not None
        except psycopg.Error:
            return False

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()  # the advisory lock goes with the session
            self._connection = None
        if self._file is not None:
            self._file.close()  # closing the file releases its flock
            self._file = None
