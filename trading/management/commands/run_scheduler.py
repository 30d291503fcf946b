"""``python manage.py run_scheduler [--interval S] [--once]``: close markets at their deadline, expire GTD orders,
fire dead-man's switches (every ``HEARTBEAT_CHECK_INTERVAL`` seconds, between passes too), settle oracle proposals
whose dispute window passed.

``make run`` starts it next to daphne. Each pass calls ``trading.lifecycle.markets_close_due`` and
``orders_expire_due`` and ``trading.resolution.resolutions_finalize_due``; each is idempotent (every change is
re-checked under the market lock), so running two schedulers at once, or a pass after a crash, is harmless.
After each pass that succeeded it touches ``MOLTSTREET_SCHEDULER_HEARTBEAT`` (when set): docker-compose.yml's health
check of the scheduler is that this file is fresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError, connections

from moltstreet.errors import MoltStreetError
from moltstreet.periodic import run_every, touch_heartbeat
from trading import heartbeat, lifecycle
from trading.resolution import resolutions_finalize_due

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
        "expire GTD orders past expires_at, and make final (and pay out) oracle proposals whose dispute window "
        "passed undisputed. Stops cleanly on SIGINT/SIGTERM."
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
        """Run passes until SIGINT or SIGTERM; a signal lets the running pass finish (its transactions commit).

        Between passes, dead-man's switches are checked every ``HEARTBEAT_CHECK_INTERVAL`` seconds (1 by default):
        an agent's timeout may be as short as 5 seconds, and the passes' other jobs need not run that often."""
        check_every = settings.MOLTSTREET["HEARTBEAT_CHECK_INTERVAL"]
        next_pass = 0.0

        def tick(stop: object) -> bool:
            nonlocal next_pass
            if time.monotonic() >= next_pass:
                next_pass = time.monotonic() + interval
                return run_pass()
            recycle_connections()
            return _job("firing dead-man's switches", _fire_heartbeats)

        run_every("scheduler", min(interval, check_every), tick, heartbeat=settings.MOLTSTREET["SCHEDULER_HEARTBEAT"])


def beat() -> None:
    """Touch the heartbeat file (``MOLTSTREET_SCHEDULER_HEARTBEAT``), if one is set: a pass just succeeded."""
    touch_heartbeat(settings.MOLTSTREET["SCHEDULER_HEARTBEAT"], "scheduler")


def run_pass() -> bool:
    """Close due markets, expire due GTD orders, settle oracle proposals whose dispute window passed undisputed, and
    sweep the backtests a dead worker or an abandoned upload left behind (``backtests.services``); returns False if
    any job failed.

    The jobs fail independently: a database hiccup while closing markets still lets the others run. Errors are
    logged and swallowed, so a long-running scheduler survives outages and retries on its next pass.
    """
    recycle_connections()
    results = [
        _job("closing due markets", _close_due),
        _job("expiring GTD orders", _expire_due),
        _job("firing dead-man's switches", _fire_heartbeats),
        _job("settling proposed resolutions", _settle_due),
        _job("sweeping stale backtests", _sweep_backtests),
    ]
    recycle_connections()
    return all(results)


def _job(what: str, work: Callable[[], None]) -> bool:
    try:
        work()
    except TRANSIENT as exc:
        logger.warning("scheduler: %s failed, retrying next pass: %r", what, exc)
        return False
    except Exception:
        # A bug, not an outage; keep going on later passes rather than stopping the exchange's clock.
        logger.exception("scheduler: %s failed", what)
        return False
    return True


def _close_due() -> None:
    for market in lifecycle.markets_close_due():
        logger.info("scheduler: closed market %s at its deadline %s: %s", market.id, market.deadline, market)


def _expire_due() -> None:
    expired = lifecycle.orders_expire_due()
    if expired:
        logger.info("scheduler: expired %d GTD order%s", expired, "" if expired == 1 else "s")


def _fire_heartbeats() -> None:
    fired = heartbeat.heartbeats_expire_due()
    if fired:
        logger.info("scheduler: %d dead-man's switch%s fired", fired, "" if fired == 1 else "es")


def _settle_due() -> None:
    for market in resolutions_finalize_due():
        logger.info("scheduler: %s resolved %s, the proposal undisputed: %s", market.id, market.outcome, market)


def _sweep_backtests() -> None:
    # The worker sweeps when it starts too; here it also happens while workers run (a worker killed mid-run).
    from backtests.services import backtest_fail_stale_uploads, backtest_requeue_stale

    abandoned, requeued = backtest_fail_stale_uploads(), backtest_requeue_stale()
    if abandoned:
        logger.info(
            "scheduler: %d unfinished backtest upload(s) marked failed: %s", len(abandoned), ", ".join(abandoned)
        )
    if requeued:
        logger.info(
            "scheduler: queued again %d backtest(s) left by a stopped worker: %s", len(requeued), ", ".join(requeued)
        )
