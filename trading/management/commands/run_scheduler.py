"""``python manage.py run_scheduler [--interval S] [--once]``: close markets at their deadline, expire GTD orders.

``make run`` starts it next to daphne. Each pass calls ``trading.services.markets_close_due`` and
``orders_expire_due``; both are idempotent, so running two schedulers at once, or a pass after a crash, is harmless.
After each pass that succeeded it touches ``MOLTSTREET_SCHEDULER_HEARTBEAT`` (when set): docker-compose.yml's health
check of the scheduler is that this file is fresh.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError, connections

from moltstreet.errors import MoltStreetError
from trading import services

logger = logging.getLogger("moltstreet.scheduler")

# Errors that a later pass can get past: a lost or refused connection, a lock wait that timed out (ServiceBusy), a
# market resolved between the query for due markets and the close (MarketAlreadyResolved).
TRANSIENT = (OperationalError, InterfaceError, MoltStreetError)


def recycle_connections() -> None:
    """Drop connections that broke or outlived ``CONN_MAX_AGE`` so the next pass reconnects.

    A connection inside a transaction is left alone: the caller (e.g. a test) owns that transaction.
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


class Command(BaseCommand):
    help = (
        "Every --interval seconds, close open markets whose deadline has passed (cancelling their resting orders) "
        "and expire GTD orders past expires_at. Stops cleanly on SIGINT/SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between passes (default: MOLTSTREET['SCHEDULER_INTERVAL']).",
        )
        parser.add_argument("--once", action="store_true", help="Run one pass and exit (non-zero if it failed).")

    def handle(self, *args, interval: float | None, once: bool, **options) -> None:
        interval = settings.MOLTSTREET["SCHEDULER_INTERVAL"] if interval is None else interval
        if interval < 0:
            raise CommandError("--interval must not be negative.")
        if once:
            if not run_pass():
                raise CommandError("the scheduler pass failed; see the log above")
            beat()
            return
        self.loop(interval)

    def loop(self, interval: float) -> None:
        """Run passes until SIGINT or SIGTERM; a signal lets the running pass finish (its transactions commit)."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if stop.is_set():  # a second signal: the operator does not want to wait for the pass
                raise KeyboardInterrupt
            logger.info("scheduler: %s received, stopping after this pass", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        logger.info("scheduler: started, a pass every %ss", interval)
        try:
            while not stop.is_set():
                started = time.monotonic()
                if run_pass():
                    beat()
                # Passes start every `interval` seconds; the wait returns at once when a signal arrives.
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
        except KeyboardInterrupt:
            logger.info("scheduler: interrupted")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            logger.info("scheduler: stopped")


def beat() -> None:
    """Touch the heartbeat file (``MOLTSTREET_SCHEDULER_HEARTBEAT``), if one is set: a pass just succeeded."""
    path = settings.MOLTSTREET.get("SCHEDULER_HEARTBEAT")
    if not path:
        return
    try:
        Path(path).touch()
    except OSError as exc:  # a health check will say so; the exchange's clock must keep running
        logger.warning("scheduler: cannot touch the heartbeat file %s: %s", path, exc)


def run_pass() -> bool:
    """Close due markets, then expire due GTD orders; returns False if either job failed.

    The two jobs fail independently: a database hiccup while closing markets still lets the expiry run.
    Errors are logged and swallowed, so a long-running scheduler survives outages and retries on its next pass.
    """
    recycle_connections()
    ok = True
    try:
        closed = services.markets_close_due()
        for market in closed:
            logger.info("scheduler: closed market %s at its deadline %s: %s", market.id, market.deadline, market)
    except TRANSIENT as exc:
        ok = False
        logger.warning("scheduler: closing due markets failed, retrying next pass: %r", exc)
    except Exception:
        # A bug, not an outage; keep closing markets on later passes rather than stopping the exchange's clock.
        ok = False
        logger.exception("scheduler: closing due markets failed")
    try:
        expired = services.orders_expire_due()
        if expired:
            logger.info("scheduler: expired %d GTD order%s", expired, "" if expired == 1 else "s")
    except TRANSIENT as exc:
        ok = False
        logger.warning("scheduler: expiring GTD orders failed, retrying next pass: %r", exc)
    except Exception:
        ok = False
        logger.exception("scheduler: expiring GTD orders failed")
    recycle_connections()
    return ok
