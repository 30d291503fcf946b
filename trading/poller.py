"""The poller: feeds mirror real markets from their sources (DESIGN section 10).

:func:`feed_pass` runs one feed once: it lists the source's matching binary markets, imports the new ones (up to the
feed's ``max_markets``), stores a snapshot of each one's prices when they changed (and at least hourly), closes a
market when its source stops trading it, and resolves it when the source settles it, through the same resolution
service as the admin (``trading.resolution.market_resolve``, the source as resolver; only a proposal when an operator
marked the market ``manual_resolution``). The feed's markets the listing did not show (they closed or settled at the
source, and left its list of open markets) are read one by one.

A pass survives a source that is down, slow, rate-limiting or answering garbage: the client retries
(``markets.sources.base``), an entry that cannot be read is skipped and counted, a market whose update fails is logged
and left for the next pass, and a source still failing after the retries ends the feed's pass with its error recorded
on the feed; the next pass catches up, since every step is idempotent (a market is imported once by its source id, a
snapshot is stored only when it is news, a market resolves once). It lives in ``trading`` rather than ``markets``
because it closes and resolves markets, which are trading services (docs/decisions.md 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from markets.importers import shorten
from markets.models import Feed, Market, MarketSnapshot, Resolver
from markets.services import (
    UNREAD,
    market_import,
    market_update,
    snapshot_is_news,
    snapshot_record,
    snapshots_record,
)
from markets.sources import SOURCE_NAMES, BadEntry, SourceClient, SourceError, SourceMarket, client_for
from markets.sources.base import CLOSED, OPEN, SETTLED
from moltstreet.errors import MarketAlreadyResolved, MoltStreetError
from trading.lifecycle import market_close
from trading.resolution import market_resolve, resolution_propose_for_operator

logger = logging.getLogger("moltstreet.poller")

# Listed entries are mirrored a batch at a time: their markets and last snapshots are read in two queries per batch
# instead of two per market (bench/poller.py, docs/performance.md). A Kalshi or Polymarket page holds 100.
BATCH = 100


@dataclass
class PassSummary:
    """What one pass of one feed did, for its log line and ``Feed.last_summary``."""

    listed: int = 0  # binary markets the source listed for the feed's query
    imported: int = 0
    updated: int = 0  # markets already mirrored, seen again
    refreshed: int = 0  # mirrored markets the listing did not show, read one by one
    snapshots: int = 0
    closed: int = 0
    resolved: int = 0
    proposed: int = 0  # settled at the source, kept for an operator (manual_resolution)
    skipped: int = 0  # unreadable entries, and markets this exchange cannot mirror (no close time, ...)
    over_limit: int = 0  # new markets past the feed's max_markets
    missing: int = 0  # mirrored markets the source no longer has
    failed: int = 0  # markets whose update failed here (left for the next pass)
    source_error: str = ""
    seconds: float = 0.0

    def line(self, feed: Feed) -> str:
        counts = ", ".join(
            f"{value} {name.replace('_', ' ')}"
            for name, value in asdict(self).items()
            if value and isinstance(value, int)
        )
        error = f"; source error: {self.source_error}" if self.source_error else ""
        return f"feed {feed.pk} ({feed}): {counts or 'nothing new'} in {self.seconds:.1f} s{error}"


@dataclass
class _Pass:
    feed: Feed
    client: SourceClient
    now: datetime
    summary: PassSummary = field(default_factory=PassSummary)
    # The feed's markets, counted once a pass rather than before each import (1,000 counts of a full feed cost about
    # 1 s here, bench/poller.py); one poller at a time imports.
    feed_markets: int | None = None

    def run(self) -> None:
        seen: set[str] = set()
        batch: list[SourceMarket] = []
        try:
            for entry in self.client.list_markets(
                query=self.feed.query, status=self.feed.status, limit=self.feed.max_markets
            ):
                if isinstance(entry, BadEntry):
                    self.summary.skipped += 1
                    logger.warning(
                        "feed %s: skipped %s: %s", self.feed.pk, entry.external_id or "an entry", entry.reason
                    )
                    continue
                self.summary.listed += 1
                seen.add(entry.external_id)
                batch.append(entry)
                if len(batch) >= BATCH:  # before asking for the next entry, which may cost another page
                    self.mirror_batch(batch)
                    batch = []
        except SourceError as exc:
            self.mirror_batch(batch)  # what was listed before the failure
            self.summary.source_error = str(exc)
            return  # the source is down or answering garbage: the next pass catches up
        self.mirror_batch(batch)
        self.refresh(seen)

    def mirror_batch(self, entries: list[SourceMarket]) -> None:
        """:meth:`mirror` ``entries`` (one source's) together: their markets and last snapshots read in two queries,
        the new ones imported, then their snapshots stored in one transaction (``snapshots_record``), then each brought
        up to date. A failure is still one market's only: when the batch's read or write fails, each market is read
        or written on its own."""
        if not entries:
            return
        known: dict[str, tuple[Market, MarketSnapshot | None]] | None
        try:
            known = self.known(entries)
        except DatabaseError as exc:
            logger.warning("feed %s: reading a batch of markets failed: %r", self.feed.pk, exc)
            known = None
        found: list[tuple[SourceMarket, Market, bool]] = []  # (entry, its market, whether its prices are news)
        done: set[str] = set()
        for entry in entries:
            # A market listed twice in the batch is read again the second time: the first may have imported it.
            fresh = entry.external_id not in done
            prior = known.get(entry.external_id, (None, None)) if known is not None and fresh else None
            done.add(entry.external_id)
            with self.guard(entry):
                market, last = self.mirrored(entry, prior)
                if market is not None:
                    found.append((entry, market, self.is_news(market, entry, last)))
        news = [i for i, (_, _, is_news) in enumerate(found) if is_news]
        try:
            views = [(found[i][1].id, _values(found[i][0])) for i in news]
            self.summary.snapshots += len(snapshots_record(source=entries[0].source, views=views, taken_at=self.now))
            news = []  # stored, or no longer news under the locks
        except (MoltStreetError, DatabaseError) as exc:  # then each market's is stored on its own
            logger.warning("feed %s: storing a batch of snapshots failed: %r", self.feed.pk, exc)
        left = set(news)
        for i, (entry, market, _) in enumerate(found):
            with self.guard(entry):
                if i in left:
                    self.store(market, entry)
                self.follow(market, entry)

    def known(self, entries: list[SourceMarket]) -> dict[str, tuple[Market, MarketSnapshot | None]]:
        """The mirrored markets of ``entries`` by external id, each with its last snapshot from the source (or
        ``None``): one query for the markets (the last snapshot's id beside each, an index probe of
        ``(market, source, seq)``) and one for the snapshots."""
        source = entries[0].source
        last_id = MarketSnapshot.objects.filter(market=OuterRef("pk"), source=source).order_by("-seq").values("id")[:1]
        markets = list(
            Market.objects.filter(source=source, external_id__in={e.external_id for e in entries})
            .annotate(last_snapshot_id=Subquery(last_id))
            .order_by()
        )
        snapshots = MarketSnapshot.objects.in_bulk([m.last_snapshot_id for m in markets if m.last_snapshot_id])
        return {m.external_id: (m, snapshots.get(m.last_snapshot_id)) for m in markets}

    def refresh(self, seen: set[str]) -> None:
        """Read one by one the feed's mirrored markets, not yet resolved here, that the listing did not show."""
        unresolved = self.feed.markets.exclude(status=Market.Status.RESOLVED).exclude(external_id__in=seen)
        for external_id in list(unresolved.values_list("external_id", flat=True)):
            try:
                entry = self.client.get_market(external_id)
            except SourceError as exc:
                self.summary.source_error = str(exc)
                return
            if entry is None:
                self.summary.missing += 1
                continue
            self.summary.refreshed += 1
            self.mirror(entry)

    @contextmanager
    def guard(self, entry: SourceMarket) -> Iterator[None]:
        """A failure inside is this market's only: counted, logged, and the pass goes on."""
        try:
            yield
        except (MoltStreetError, DatabaseError) as exc:
            self.summary.failed += 1
            logger.warning("feed %s: %s %s not updated: %r", self.feed.pk, entry.source, entry.external_id, exc)

    def mirror(self, entry: SourceMarket) -> None:
        """Import ``entry`` if new, then bring its market up to date. A failure here is this market's only."""
        with self.guard(entry):
            market, last = self.mirrored(entry)
            if market is not None:
                self.record(market, entry, last)
                self.follow(market, entry)

    def mirrored(
        self, entry: SourceMarket, known: tuple[Market | None, MarketSnapshot | None] | None = None
    ) -> tuple[Market | None, Any]:
        """``entry``'s market, imported if new (``None`` if it is not to be mirrored), and its last snapshot from the
        source (``None``: none; ``UNREAD``: not read). ``known``: the market (``None`` if not mirrored yet) and its
        last snapshot, if :meth:`known` read them already; otherwise the market is read here."""
        if known is None:
            market, last = Market.objects.filter(source=entry.source, external_id=entry.external_id).first(), UNREAD
        else:
            market, last = known
        if market is None:
            return self.imported(entry), None  # a market imported now has no snapshot yet
        self.summary.updated += 1
        if market.feed_id is None:  # imported another way (ForecastBench): this feed follows it from now on
            adopted = Market.objects.filter(pk=market.pk, feed=None).update(feed=self.feed)
            if adopted and self.feed_markets is not None:
                self.feed_markets += 1
        return market, last

    def imported(self, entry: SourceMarket) -> Market | None:
        if self.feed_markets is None:
            self.feed_markets = self.feed.markets.count()
        if self.feed_markets >= self.feed.max_markets:
            self.summary.over_limit += 1
            return None
        if entry.close_time is None:
            self.summary.skipped += 1
            logger.warning(
                "feed %s: %s %s has no close time: not mirrored", self.feed.pk, entry.source, entry.external_id
            )
            return None
        market = market_import(
            question=shorten(entry.question, settings.MOLTSTREET["MAX_QUESTION_LENGTH"]),
            deadline=entry.close_time,
            source=entry.source,
            external_id=entry.external_id,
            description=entry.description,
            resolution_criteria=entry.rules,
            category=entry.category,
            source_url=entry.url,
            attribution=entry.terms,
            reference_price=entry.yes_price,
            feed=self.feed,
        )
        self.summary.imported += 1
        self.feed_markets += 1
        return market

    def is_news(self, market: Market, entry: SourceMarket, last: Any) -> bool:
        return snapshot_is_news(market.id, entry.source, _values(entry), self.now, last=last)

    def record(self, market: Market, entry: SourceMarket, last: Any) -> None:
        """Store a snapshot of ``entry``'s prices when they are news. ``last``: the market's last snapshot from the
        source when already read (``None``: it has none), else ``UNREAD``."""
        if self.is_news(market, entry, last):
            self.store(market, entry)

    def store(self, market: Market, entry: SourceMarket) -> None:
        """Store a snapshot of ``entry``'s prices (``snapshot_record`` decides again under the market's lock)."""
        if snapshot_record(market_id=market.id, source=entry.source, values=_values(entry), taken_at=self.now):
            self.summary.snapshots += 1

    def follow(self, market: Market, entry: SourceMarket) -> None:
        """Deadline, close and resolution of one mirrored market (its snapshot stored), each only when it is news."""
        moved = entry.close_time is not None and entry.close_time != market.deadline and entry.close_time > self.now
        if market.status == Market.Status.OPEN and entry.status == OPEN and moved:
            market_update(market_id=market.id, deadline=entry.close_time)  # the source moved its close
        if market.status == Market.Status.OPEN and entry.status in (CLOSED, SETTLED):
            market_close(market_id=market.id)  # trading on a known or imminent result would be free money
            self.summary.closed += 1
        if entry.settled and market.status != Market.Status.RESOLVED:
            self.settle(market, entry)

    def settle(self, market: Market, entry: SourceMarket) -> None:
        """Resolve ``market`` as its source settled it, once: final at once, or a proposal for an operator.
        Raises ``ValueError`` for an entry that has no result (not ``settled``)."""
        outcome = entry.result
        if outcome is None:
            raise ValueError(f"{entry.source} market {entry.external_id} has no result to settle with")
        evidence = {**entry.evidence, "outcome": outcome}
        if entry.settled_at is not None:
            evidence["settled_at"] = entry.settled_at.isoformat()
        resolver = Resolver.source(SOURCE_NAMES[entry.source], evidence)
        if Market.objects.filter(pk=market.pk, manual_resolution=True).exists():
            resolution_propose_for_operator(market_id=market.id, outcome=outcome, resolver=resolver)
            self.summary.proposed += 1
            return
        try:
            market_resolve(market_id=market.id, outcome=outcome, resolver=resolver)
        except MarketAlreadyResolved:
            return  # resolved meanwhile (an operator, another pass): once is all
        self.summary.resolved += 1


def _values(entry: SourceMarket) -> dict[str, Any]:
    """What a snapshot keeps of ``entry``."""
    return {
        "yes_price": entry.yes_price,
        "yes_bid": entry.yes_bid,
        "yes_ask": entry.yes_ask,
        "volume": entry.volume,
        "status": entry.status,
    }


def feed_pass(feed: Feed, *, client: SourceClient | None = None, now: datetime | None = None) -> PassSummary:
    """Run one pass of ``feed`` (see the module's docstring); records the outcome on the feed (``last_run_at``,
    ``last_ok_at`` when the source answered, ``last_summary``, ``last_error``) and returns the summary. Never raises
    for a source's failure; a source error is in ``summary.source_error``."""
    started = time.monotonic()
    now = now or timezone.now()
    own_client = client is None
    client = client or client_for(feed.source)
    run = _Pass(feed=feed, client=client, now=now)
    try:
        run.run()
    finally:
        if own_client:
            client.close()
    summary = run.summary
    summary.seconds = time.monotonic() - started
    feed.last_run_at = now
    if not summary.source_error:
        feed.last_ok_at = now
    feed.last_error = summary.source_error
    feed.last_summary = asdict(summary)
    feed.save(update_fields=["last_run_at", "last_ok_at", "last_error", "last_summary"])
    (logger.warning if summary.source_error else logger.info)("poller: %s", summary.line(feed))
    return summary


def feeds_due(now: datetime | None = None) -> list[Feed]:
    """The active feeds whose interval has passed since their last pass."""
    now = now or timezone.now()
    return [feed for feed in Feed.objects.filter(is_active=True) if feed.is_due(now)]


def poll_due(now: datetime | None = None, *, run: Callable[[Feed], Any] = feed_pass) -> list[PassSummary]:
    """One pass of every feed that is due (what the poller does each tick); a feed that fails unexpectedly is logged
    and the others still run."""
    summaries = []
    for feed in feeds_due(now):
        try:
            summaries.append(run(feed))
        except Exception:
            logger.exception("poller: feed %s failed", feed.pk)
    return summaries
