"""Write services of the markets app: creating markets, stating forecasts, and the market event sequence."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import CharField, OuterRef, Subquery
from django.utils import timezone

from agents.models import Agent, LedgerEntry
from agents.services import AgentFeed, CashBook, lock_agents
from markets.models import Feed, Forecast, Market, MarketEvent, MarketSnapshot
from markets.shape import market_payload  # the state a ``market`` event stores (one market shape)
from moltstreet.db import service_transaction
from moltstreet.errors import AgentSuspended, InvalidRequest, MarketClosed, NotFound
from moltstreet.ids import parse_id

MAX_MARKET_LIFETIME = timedelta(days=5 * 365)


def lock_market(market_id: uuid.UUID) -> Market:
    """Lock the market row: the first lock of every trading transaction (DESIGN section 6).

    Raises :class:`NotFound` for an unknown id.
    """
    key = parse_id(market_id, "market")  # a malformed id is an unknown id
    # Read and locked in one statement: the row lock is held from here to commit.
    found = Market.objects.select_for_update().filter(id=key).first()
    if found is None:
        raise NotFound.of("market", market_id)
    return found


def _max_length(name: str) -> int:
    """The ``max_length`` of one of the market's text fields (characters)."""
    field = Market._meta.get_field(name)
    assert isinstance(field, CharField) and field.max_length is not None, name
    return field.max_length


def _described(
    question: str, description: str | None, resolution_criteria: str | None, category: str | None
) -> dict[str, str]:
    """The text fields of a new market as stored: its question, description and rules (empty if none) and its category
    (at most 40 characters)."""
    return {
        "question": question,
        "description": description or "",
        "resolution_criteria": resolution_criteria or "",
        "category": (category or "")[:40],
    }


def clean_question(question: str | None, *, limit: int) -> str:
    """A market question stripped of surrounding space; raises :class:`InvalidRequest` if empty or over ``limit``."""
    question = (question or "").strip()
    if not question:
        raise InvalidRequest("question must not be empty.", detail={"question": question})
    if len(question) > limit:
        raise InvalidRequest(
            f"question must be at most {limit} characters.", detail={"length": len(question), "limit": limit}
        )
    return question


def ensure_tradable(market: Market, now: datetime | None = None) -> None:
    """Raise :class:`MarketClosed` unless the market is open and its deadline has not passed."""
    now = now or timezone.now()
    if market.status != Market.Status.OPEN or market.deadline <= now:
        raise MarketClosed(
            "The market is closed to new orders." if market.status == Market.Status.OPEN else None,
            detail={"market": str(market.id), "status": market.status, "deadline": market.deadline.isoformat()},
        )


@dataclass
class EventLog:
    """Hands out a locked market's next sequence numbers and writes the events in one insert.

    Use only while holding the market row lock; :meth:`flush` stores the events and the market's new ``seq``.
    After commit, ``published`` callbacks receive the stored events (the live feed hooks in there).
    """

    market: Market
    events: list[MarketEvent] = field(default_factory=list)

    def add(self, kind: str, data: dict[str, Any]) -> int:
        self.market.seq += 1
        self.events.append(MarketEvent(market=self.market, seq=self.market.seq, kind=kind, data=data))
        return self.market.seq

    def flush(self, extra_fields: tuple[str, ...] = ()) -> list[MarketEvent]:
        """Store the events and the market's ``seq`` (and ``extra_fields``); after commit, hand them to the
        subscribers (:meth:`published_on_commit`). The order path writes its events with everything else instead
        (``trading.book_store.write``)."""
        if not self.events:
            return []
        MarketEvent.objects.bulk_create(self.events)
        self.market.save(update_fields=["seq", *extra_fields])
        return self.published_on_commit()

    def published_on_commit(self, feed: AgentFeed | None = None) -> list[MarketEvent]:
        """Hand the stored events, and the private feed messages ``feed`` this transaction stored with them, to the
        subscribers once the transaction commits; returns the events and starts a new batch."""
        stored, self.events = self.events, []
        if not stored and (feed is None or not feed.events):
            return []
        market_id = self.market.id
        # robust: a failing subscriber is logged; the committed trade must never surface as an error. The messages
        # are taken from the feed after commit, off the time the market's row lock is held.
        transaction.on_commit(
            lambda: publish_events(market_id, stored, feed.messages() if feed is not None else {}), robust=True
        )
        return stored


# Subscribers to committed market events, e.g. the websocket broadcaster. Each is called after commit as
# ``subscriber(market_id, events, agent_messages)``; ``agent_messages`` is ``{agent_id: [message, ...]}``, the private
# feed messages the same transaction stored (``agents.services.AgentFeed``), each agent's in ``seq`` order.
EVENT_SUBSCRIBERS: list = []


def publish_events(
    market_id: uuid.UUID, events: list[MarketEvent], agent_messages: dict[str, list[dict[str, Any]]] | None = None
) -> None:
    for subscriber in EVENT_SUBSCRIBERS:
        subscriber(market_id, events, agent_messages or {})


@service_transaction
def market_create(
    *,
    creator: Agent,
    question: str,
    deadline: datetime,
    description: str = "",
    category: str = "",
    resolution_criteria: str = "",
) -> Market:
    """Create an open market and charge its creator the creation fee (10.00 credits, ledgered as ``fee``).

    Raises :class:`InvalidRequest` for an empty or too long question or a deadline not in the future (or more than
    five years ahead), :class:`InsufficientBalance` when the creator cannot pay the fee.
    """
    question = clean_question(question, limit=settings.MOLTSTREET["MAX_QUESTION_LENGTH"])
    now = timezone.now()
    if deadline <= now:
        raise InvalidRequest("deadline must be in the future.", detail={"deadline": deadline.isoformat()})
    if deadline > now + MAX_MARKET_LIFETIME:
        raise InvalidRequest("deadline must be within five years.", detail={"deadline": deadline.isoformat()})
    # A new market has no row to lock yet; the creator's row is the only lock (DESIGN section 6).
    agent = lock_agents([creator.id])[creator.id]
    if agent.is_suspended:
        raise AgentSuspended()
    market = Market.objects.create(
        **_described(question, description, resolution_criteria, category), deadline=deadline, creator=agent
    )
    book = CashBook()
    book.move(
        agent,
        -settings.MOLTSTREET["MARKET_CREATION_FEE"],
        LedgerEntry.Kind.FEE,
        market_id=market.id,
        reference=str(market.id),
        memo="market creation fee",
    )
    book.flush()
    log = EventLog(market)
    log.add(MarketEvent.Kind.MARKET, {"event": "created", "market": market_payload(market)})
    log.flush()
    return market


def parse_probability(value: Any) -> Decimal:
    """Parse a stated probability in [0, 1] (string or number); raises :class:`InvalidRequest` otherwise."""
    try:
        probability = Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise InvalidRequest("forecast must be a number between 0 and 1.", detail={"forecast": str(value)}) from exc
    if not probability.is_finite() or probability < 0 or probability > 1:
        raise InvalidRequest("forecast must be a number between 0 and 1.", detail={"forecast": str(value)})
    return probability.quantize(Decimal("0.0001"))


@service_transaction
def forecast_record(*, agent: Agent, market_id: uuid.UUID, probability: Any, reasoning: str = ""):
    """Record the agent's stated probability of YES without trading (DESIGN 4a).

    Raises :class:`NotFound` for an unknown market, :class:`MarketClosed` once trading has closed (only forecasts made
    before close count), :class:`InvalidRequest` for a probability outside [0, 1], :class:`AgentSuspended` for a
    suspended agent (a forecast counts for its Brier score as much as a trade does for its reputation).
    """
    probability = parse_probability(probability)
    # The market lock orders this against closing: a forecast either lands before the close or is refused.
    market = lock_market(market_id)
    ensure_tradable(market)
    # Then the agent (DESIGN section 6 lock order): suspension sets its flag under this lock, so no forecast slips past.
    if lock_agents([agent.id])[agent.id].is_suspended:
        raise AgentSuspended("This agent is suspended and cannot state forecasts.", detail={"agent": agent.name})
    return Forecast.objects.create(
        agent=agent,
        market=market,
        probability=probability,
        reasoning=reasoning or "",
        reference_price=market.reference_price,  # the source's price beside it (brier_vs_market)
    )


IMPORT_PRICE_PLACES = Decimal("0.0001")


@service_transaction
def market_import(
    *,
    question: str,
    deadline: datetime,
    source: str,
    external_id: str,
    description: str = "",
    resolution_criteria: str = "",
    category: str = "",
    source_url: str = "",
    attribution: str = "",
    reference_price: Decimal | None = None,
    is_historical: bool = False,
    feed: Feed | None = None,
) -> Market:
    """Create an open market for a real question of another venue: no creator, no fee (an operator import).

    ``source`` names the venue (``manifold``, ``polymarket``, …) and ``external_id`` the question's id there; the pair
    is unique, so an import never duplicates a market. ``deadline`` (time-zone aware) may lie in the past for a
    question that already closed at its source: the caller then closes or resolves the market through
    the trading services. ``reference_price`` is the source market's probability of YES (0-1, kept to four places),
    ``attribution`` the provenance and licence of the text, ``is_historical`` marks a past question reopened for
    trading. ``feed`` is the feed that mirrors it (DESIGN section 10), if any. Writes the market and its ``created``
    event (sequence number 1); moves no money.

    Raises :class:`InvalidRequest` for an empty or too long question (the importer shortens it first), an empty or
    too long ``source``/``external_id``/``source_url``, a naive deadline or a reference price outside [0, 1], and
    :class:`InvalidRequest` with code ``market_exists`` (detail ``market``: the existing id) when ``source`` and
    ``external_id`` are already imported.
    """
    question = (question or "").strip()
    source, external_id = (source or "").strip(), (external_id or "").strip()
    for name, value in (("question", question), ("source", source), ("external_id", external_id)):
        if not value:
            raise InvalidRequest(f"{name} must not be empty.", detail={name: value})
    for name, value in (
        ("question", question),
        ("source", source),
        ("external_id", external_id),
        ("source_url", source_url or ""),
    ):
        limit = _max_length(name)
        if len(value) > limit:
            raise InvalidRequest(
                f"{name} must be at most {limit} characters.", detail={name: value[:80], "limit": limit}
            )
    if timezone.is_naive(deadline):
        raise InvalidRequest("deadline must carry a time zone.", detail={"deadline": deadline.isoformat()})
    if reference_price is not None:
        try:
            reference_price = Decimal(str(reference_price))
        except (InvalidOperation, ValueError) as exc:
            raise InvalidRequest(
                "reference_price must be a number.", detail={"reference_price": str(reference_price)}
            ) from exc
        if not reference_price.is_finite() or not 0 <= reference_price <= 1:
            raise InvalidRequest(
                "reference_price must be between 0 and 1.", detail={"reference_price": str(reference_price)}
            )
        reference_price = reference_price.quantize(IMPORT_PRICE_PLACES)
    try:
        # A savepoint: an import of a question imported already hits the unique constraint, not a broken transaction
        # (one statement instead of a read first and then the insert: the poller imports a thousand at a time).
        with transaction.atomic():
            market = Market.objects.create(
                **_described(question, description, resolution_criteria, category),
                deadline=deadline,
                source=source,
                source_url=source_url or "",
                external_id=external_id,
                attribution=attribution or "",
                reference_price=reference_price,
                reference_updated_at=timezone.now() if reference_price is not None else None,
                is_historical=is_historical,
                feed=feed,
            )
    except IntegrityError as exc:
        existing = Market.objects.filter(source=source, external_id=external_id).values_list("id", flat=True).first()
        if existing is None:  # another constraint: not an import twice
            raise
        raise InvalidRequest(
            "This question is already imported.", code="market_exists", detail={"market": str(existing)}
        ) from exc
    # The new row is not visible to anyone else before commit, so no lock is needed to number its first event.
    log = EventLog(market)
    log.add(MarketEvent.Kind.MARKET, {"event": "created", "market": market_payload(market)})
    log.flush()
    return market


MARKET_EDITABLE_FIELDS = ("question", "description", "resolution_criteria", "category", "deadline")


@service_transaction
def market_update(*, market_id: uuid.UUID, **changes: Any) -> Market:
    """Edit an open market's text or deadline (operators), recording a ``market`` event ``updated`` in its sequence.

    Only ``question``, ``description``, ``resolution_criteria``, ``category`` and ``deadline`` may change. Raises
    :class:`InvalidRequest` for other fields, an empty or too long question, or a deadline not in the future;
    :class:`MarketClosed` once the market is closed or resolved; :class:`NotFound` for an unknown market.
    """
    unknown = set(changes) - set(MARKET_EDITABLE_FIELDS)
    if unknown:
        raise InvalidRequest("Only a market's text and deadline can be edited.", detail={"fields": sorted(unknown)})
    # The market lock orders this edit against trades and closing: a trade's seq or a close can never be overwritten.
    market = lock_market(market_id)
    if market.status != Market.Status.OPEN:
        raise MarketClosed("Only open markets can be edited.", detail={"status": market.status})
    if "question" in changes:
        changes["question"] = clean_question(changes["question"], limit=_max_length("question"))
    if "deadline" in changes and changes["deadline"] <= timezone.now():
        raise InvalidRequest("deadline must be in the future; close the market to stop trading now.")
    if not changes:
        return market
    for name, value in changes.items():
        setattr(market, name, value)
    log = EventLog(market)
    log.add(MarketEvent.Kind.MARKET, {"event": "updated", "market": market_payload(market), "fields": sorted(changes)})
    log.flush(extra_fields=tuple(sorted(changes)))
    return market


# --------------------------------------------------------------------------------------------------------------------
# Snapshots of a source's prices (DESIGN section 10)

SNAPSHOT_FIELDS = ("yes_price", "yes_bid", "yes_ask", "volume", "status")
SNAPSHOT_AT_LEAST_EVERY = timedelta(hours=1)
VOLUME_PLACES = Decimal("0.0001")
UNREAD = object()  # snapshot_is_news(last=...): the caller has not read the last snapshot


def snapshot_is_news(
    market_id: uuid.UUID, source: str, values: dict[str, Any], taken_at: datetime, *, last: Any = UNREAD
) -> bool:
    """Whether ``values`` (``yes_price``, ``yes_bid``, ``yes_ask``, ``volume``, ``status``) would be a new snapshot:
    something changed since the market's last one from ``source``, or that one is an hour old. A read without a lock,
    so that a pass over unchanged markets takes none; :func:`snapshot_record` decides again under the lock.
    ``last``: that last snapshot (``None``: there is none) when the caller read it already, with others (the poller
    reads a page's in one query); then nothing is read here."""
    if last is UNREAD:
        last = MarketSnapshot.objects.filter(market_id=market_id, source=source).order_by("-seq").first()
    return _is_news(last, _snapshot_values(values), taken_at)


def _snapshot_values(values: dict[str, Any]) -> dict[str, Any]:
    volume = values.get("volume")
    return {
        "yes_price": values.get("yes_price"),
        "yes_bid": values.get("yes_bid"),
        "yes_ask": values.get("yes_ask"),
        "volume": volume.quantize(VOLUME_PLACES) if volume is not None else None,
        "status": values["status"],
    }


def _is_news(last: MarketSnapshot | None, values: dict[str, Any], taken_at: datetime) -> bool:
    if last is None or taken_at - last.taken_at >= SNAPSHOT_AT_LEAST_EVERY:
        return True
    return any(getattr(last, name) != values[name] for name in SNAPSHOT_FIELDS)


@service_transaction
def snapshot_record(
    *, market_id: uuid.UUID, source: str, values: dict[str, Any], taken_at: datetime
) -> MarketSnapshot | None:
    """Store the source's view of a market (DESIGN section 10) when it is news (:func:`snapshot_is_news`), as the
    source's next snapshot ``seq``; it becomes the market's ``reference_price`` and a ``reference`` event of the
    market's sequence (the live feed's ``reference`` message). ``values``: ``yes_price``, ``yes_bid``, ``yes_ask``
    (0-1, four places, or None), ``volume`` (the source's unit) and ``status`` (``open``, ``closed``, ``settled``).
    Returns the snapshot, or ``None`` when nothing changed within the hour. Raises :class:`NotFound`."""
    market = lock_market(market_id)
    values = _snapshot_values(values)
    # Under the market lock: the seq cannot be taken twice, and the last snapshot is the last.
    last = MarketSnapshot.objects.filter(market=market, source=source).order_by("-seq").first()
    if not _is_news(last, values, taken_at):
        return None
    snapshot = MarketSnapshot.objects.create(
        market=market, source=source, seq=last.seq + 1 if last else 1, taken_at=taken_at, **values
    )
    _reference(market, snapshot)
    return snapshot


def _reference(market: Market, snapshot: MarketSnapshot) -> None:
    """The locked market's reference price and time from its new ``snapshot``, and the ``reference`` event."""
    fields = ["reference_updated_at"]
    market.reference_updated_at = snapshot.taken_at
    if snapshot.yes_price is not None:
        market.reference_price = snapshot.yes_price
        fields.append("reference_price")
    log = EventLog(market)
    log.add(MarketEvent.Kind.REFERENCE, {"reference": snapshot.public()})
    log.flush(extra_fields=tuple(fields))


@service_transaction
def snapshots_record(
    *, source: str, views: Sequence[tuple[uuid.UUID, dict[str, Any]]], taken_at: datetime
) -> dict[uuid.UUID, MarketSnapshot]:
    """:func:`snapshot_record` for several markets of one ``source`` at once (the poller, a page at a time): one
    transaction, the markets locked in one statement in ascending id order (the only lock of several markets, always
    in that order, so two of these cannot deadlock, and markets still come before agents: DESIGN section 6), their last
    snapshots read in one query, the new ones inserted in one statement, and each one's reference price and
    ``reference`` event written as :func:`snapshot_record` writes them, together in one round trip. ``views``:
    ``(market_id, values)`` pairs, ``values`` as for :func:`snapshot_record`. Returns the stored snapshots by market
    id; a market whose values are not news, or that does not exist, has none."""
    wanted = dict(views)
    if not wanted:
        return {}
    ids = sorted(wanted)
    markets = list(Market.objects.select_for_update().filter(id__in=ids).order_by("id"))
    last_id = MarketSnapshot.objects.filter(market=OuterRef("pk"), source=source).order_by("-seq").values("id")[:1]
    lasts = {
        snapshot.market_id: snapshot
        for snapshot in MarketSnapshot.objects.filter(
            id__in=Market.objects.filter(id__in=ids).annotate(last=Subquery(last_id)).values("last")
        )
    }
    snapshots = []
    for market in markets:
        values, last = _snapshot_values(wanted[market.id]), lasts.get(market.id)
        if _is_news(last, values, taken_at):
            seq = last.seq + 1 if last else 1
            snapshots.append(MarketSnapshot(market=market, source=source, seq=seq, taken_at=taken_at, **values))
    MarketSnapshot.objects.bulk_create(snapshots)
    for snapshot in snapshots:
        _reference(snapshot.market, snapshot)
    return {snapshot.market_id: snapshot for snapshot in snapshots}
