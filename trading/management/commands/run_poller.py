"""``python manage.py run_poller [--once] [--sources kalshi,polymarket,manifold]``: the source poller (DESIGN section 10).

Runs every active feed at its interval: imports the source's matching markets, stores snapshots of their prices,
closes and resolves them as the source does (``trading.poller``). Exactly one poller works at a time: a second one
started beside it (another container, a second terminal) waits for the first's lock (``moltstreet.singleton``) and
takes over when it stops. Each pass logs a summary line per feed; after each round it touches
``MOLTSTREET_POLLER_HEARTBEAT`` (docker-compose.yml's health check). ``make run SOURCES=…`` starts it.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from markets.models import Feed
from markets.sources import SOURCES
from moltstreet.periodic import run_every, touch_heartbeat
from moltstreet.singleton import SingletonLock
from trading.poller import feed_pass, poll_due

logger = logging.getLogger("moltstreet.poller")
LOCK_NAME = "moltstreet-poller"


class Command(BaseCommand):
    help = (
        "Run the source feeds: every active feed at its interval (each a pass over its source), until SIGINT or "
        "SIGTERM; with --once, one pass of every active feed, then exit. One poller works at a time; another waits. "
        "--sources kalshi,polymarket,manifold first adds a default feed (open markets, 20 at most) for each named "
        "source that has none."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass of every active feed, then exit.")
        parser.add_argument(
            "--sources", default="", help="Comma-separated sources to make sure a feed exists for (kalshi, ...)."
        )
        parser.add_argument(
            "--tick",
            type=float,
            default=None,
            help="Seconds between looks for due feeds (default MOLTSTREET['POLLER_TICK']).",
        )

    def handle(self, *args, once: bool, sources: str, tick: float | None, **options) -> None:
        for source in [s.strip() for s in sources.split(",") if s.strip()]:
            if source not in SOURCES:
                raise CommandError(f"Unknown source {source!r}: one of {', '.join(SOURCES)}.")
            feed, created = Feed.objects.get_or_create(source=source, defaults={"status": Feed.Listing.OPEN})
            if created:
                self.stdout.write(f"Added feed {feed.pk}: {feed}")
        lock = SingletonLock(LOCK_NAME)
        stop = threading.Event()
        if not lock.acquire(stop=stop):
            return
        try:
            if once:
                feeds = list(Feed.objects.filter(is_active=True))
                for feed in feeds:
                    self.stdout.write(feed_pass(feed).line(feed))
                if not feeds:
                    self.stdout.write("No active feed: add one with manage.py feed_add or in the admin.")
                touch_heartbeat(settings.MOLTSTREET["POLLER_HEARTBEAT"], "poller")
                return
            interval = settings.MOLTSTREET["POLLER_TICK"] if tick is None else tick
            run_every(
                "poller", interval, lambda stop: self.round(lock), heartbeat=settings.MOLTSTREET["POLLER_HEARTBEAT"]
            )
        finally:
            lock.release()

    def round(self, lock: SingletonLock) -> bool:
        """One look for due feeds, each run once. With the lock lost (its database connection dropped), it is taken
        again first: another poller may hold it now, and this one then waits."""
        if not lock.held():
            logger.warning("poller: the lock's connection was lost; taking the lock again")
            lock.release()
            lock.acquire()
        close_old_connections()
        poll_due()
        close_old_connections()
        return True
