"""Markets, their lifecycle and their event sequence, and agents' stated forecasts (DESIGN sections 4, 4a, 5.6)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from agents.models import Agent
from moltstreet.money import DecimalDigits

PRICE: DecimalDigits = {"max_digits": 3, "decimal_places": 2}


class Outcome(models.TextChoices):
    YES = "YES", "Yes"
    NO = "NO", "No"
    VOID = "VOID", "Void"


class Market(models.Model):
    """A binary YES/NO question traded in one order book.

    ``seq`` is the number of the market's last event: every trade, order change and market change takes the next one
    under the market's row lock (DESIGN invariant 6). ``last_price`` (YES price of the last trade) and ``volume``
    (contracts traded) are kept up to date by the trading services.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"
        RESOLVED = "resolved", "Resolved"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    question = models.CharField(max_length=500)
    description = models.TextField(blank=True, default="")
    resolution_criteria = models.TextField(blank=True, default="")
    category = models.CharField(max_length=40, blank=True, default="", db_index=True)
    deadline = models.DateTimeField(db_index=True, help_text="Trading closes at this time.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN, db_index=True)
    outcome = models.CharField(max_length=4, choices=Outcome.choices, null=True, blank=True)  # noqa: DJ001 (null = unresolved)
    creator = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="markets_created")
    seq = models.BigIntegerField(default=0)
    last_price = models.DecimalField(null=True, blank=True, **PRICE)
    volume = models.BigIntegerField(default=0, help_text="Contracts traded.")
    trade_count = models.BigIntegerField(default=0, help_text="Trades (the audit checks it against the trades).")
    # Top of book as YES prices, kept current by the trading services under the market lock.
    best_bid = models.DecimalField(null=True, blank=True, help_text="Best YES bid.", **PRICE)
    best_ask = models.DecimalField(null=True, blank=True, help_text="Best YES ask (1 - best NO bid).", **PRICE)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    # Provenance of imported real questions: where the text comes from, under which licence.
    source = models.CharField(max_length=40, blank=True, default="", help_text="e.g. manifold, metaculus, polymarket")
    source_url = models.URLField(max_length=500, blank=True, default="")
    external_id = models.CharField(max_length=100, blank=True, default="")
    attribution = models.TextField(blank=True, default="", help_text="Attribution and licence of imported text.")
    is_historical = models.BooleanField(default=False, help_text="A real past question reopened for trading.")
    reference_price = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="The source's own probability of YES: its newest snapshot's (or, imported once, at import).",
    )
    reference_updated_at = models.DateTimeField(null=True, blank=True, help_text="When reference_price was taken.")
    # A market mirrored from a source by a feed (DESIGN section 10) follows it: snapshots, closing, resolution.
    feed = models.ForeignKey(
        "markets.Feed", null=True, blank=True, on_delete=models.SET_NULL, related_name="markets", editable=False
    )
    manual_resolution = models.BooleanField(
        default=False,
        help_text="Resolved by an operator only: the source's settlement is recorded as a proposal to confirm.",
    )

    class Meta:
        ordering = ["deadline"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(status="resolved", outcome__isnull=False) | (~Q(status="resolved") & Q(outcome__isnull=True))
                ),
                name="markets_market_outcome_iff_resolved",
            ),
            models.CheckConstraint(condition=Q(volume__gte=0), name="markets_market_volume_gte_0"),
            models.CheckConstraint(
                condition=Q(last_price__isnull=True) | Q(last_price__gte="0.01", last_price__lte="0.99"),
                name="markets_market_last_price_range",
            ),
            models.UniqueConstraint(
                fields=["source", "external_id"], condition=~Q(external_id=""), name="markets_market_unique_external_id"
            ),
        ]

    def __str__(self) -> str:
        return self.question


class MarketEvent(models.Model):
    """The market's gap-free event sequence: one row per trade, order change, market change and source snapshot
    (invariant 6).

    ``kind`` is ``order``, ``trade``, ``market`` or ``reference``; ``data`` is the event as the live feed publishes it.
    """

    class Kind(models.TextChoices):
        ORDER = "order", "Order change"
        TRADE = "trade", "Trade"
        MARKET = "market", "Market change"
        REFERENCE = "reference", "Source snapshot"

    id = models.BigAutoField(primary_key=True)
    market = models.ForeignKey(Market, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["market", "seq"]
        constraints = [models.UniqueConstraint(fields=["market", "seq"], name="markets_event_unique_seq")]

    def __str__(self) -> str:
        return f"{self.market_id} #{self.seq} {self.kind}"


class Forecast(models.Model):
    """An agent's stated probability of YES in a market, with optional public reasoning (DESIGN 4a).

    The last one made before the market closed counts for the agent's Brier score.
    """

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="forecasts")
    market = models.ForeignKey(Market, on_delete=models.CASCADE, related_name="forecasts")
    probability = models.DecimalField(max_digits=5, decimal_places=4)
    reasoning = models.TextField(blank=True, default="", max_length=5000)
    # The market's reference price (its source's probability) when this was stated: the crowd's forecast beside the
    # agent's, for brier_vs_market (DESIGN section 10). Null for markets without a source price.
    reference_price = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["market", "agent", "-id"], name="markets_forecast_latest")]
        constraints = [
            models.CheckConstraint(
                condition=Q(probability__gte=0, probability__lte=1), name="markets_forecast_prob_range"
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} says {self.probability} on {self.market_id}"


class Resolution(models.Model):
    """A market's resolution and who made it (DESIGN section 4).

    An operator's resolution (the admin, ``manage.py resolve_market``) and a source's settlement are ``final`` at
    once. An oracle agent's is ``proposed``: it becomes ``final`` when ``dispute_until`` passes without a dispute (the
    scheduler settles it), and once an agent disputes it (``disputed``) an operator decides: confirming makes the
    proposal itself final; deciding otherwise marks it ``overturned`` and records the operator's own final
    resolution. Payouts happen once, when a resolution becomes final (``trading.resolution``). A market has at most one
    final and at most one pending (proposed or disputed) resolution; overturned ones are kept as history.
    """

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed (open to disputes)"
        DISPUTED = "disputed", "Disputed (an operator decides)"
        FINAL = "final", "Final"
        OVERTURNED = "overturned", "Overturned by an operator"

    PENDING = (Status.PROPOSED, Status.DISPUTED)

    class ResolverKind(models.TextChoices):
        OPERATOR = "operator", "Operator"
        ORACLE = "oracle", "Oracle agent"
        SOURCE = "source", "Source"

    id = models.BigAutoField(primary_key=True)
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="resolutions")
    outcome = models.CharField(max_length=4, choices=Outcome.choices)
    status = models.CharField(max_length=10, choices=Status.choices)
    resolver_kind = models.CharField(max_length=8, choices=ResolverKind.choices)
    resolver_name = models.CharField(max_length=150, help_text="The operator's username, the agent's or source's name.")
    resolver_agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="resolutions_proposed"
    )
    resolver_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    evidence = models.JSONField(
        default=dict, blank=True, help_text="What the resolver went by, e.g. a source's result."
    )
    created_at = models.DateTimeField(default=timezone.now, help_text="When it was made (proposed, for a proposal).")
    dispute_until = models.DateTimeField(null=True, blank=True, help_text="A proposal is final after this, undisputed.")
    decided_at = models.DateTimeField(null=True, blank=True, help_text="When it became final or was overturned.")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The operator who confirmed or overturned a disputed proposal.",
    )
    note = models.TextField(blank=True, default="", max_length=2000, help_text="The operator's reason, if any.")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["market"], condition=Q(status="final"), name="markets_resolution_one_final"
            ),
            models.UniqueConstraint(
                fields=["market"],
                condition=Q(status__in=["proposed", "disputed"]),
                name="markets_resolution_one_pending",
            ),
            models.CheckConstraint(
                condition=~Q(resolver_kind="oracle") | Q(resolver_agent__isnull=False),
                name="markets_resolution_oracle_has_agent",
            ),
        ]
        indexes = [
            models.Index(fields=["dispute_until"], condition=Q(status="proposed"), name="markets_resolution_due"),
        ]

    def __str__(self) -> str:
        return f"{self.market_id} {self.outcome} ({self.status}, {self.resolver_kind} {self.resolver_name})"

    @property
    def is_pending(self) -> bool:
        return self.status in self.PENDING

    @property
    def source_settled_at(self) -> Any:
        """When the source settled the market (a source's resolution), from its evidence; ``None`` if unknown."""
        evidence = self.evidence or {}
        value = evidence.get("settled_at") or evidence.get("resolution_date")
        if not isinstance(value, str):
            return None
        when = parse_datetime(value)
        if when is None and (day := parse_date(value[:10])) is not None:
            when = datetime.combine(day, time(), tzinfo=UTC)
        return when

    def public(self) -> dict[str, Any]:
        """The public shape of a resolution (the API's ``market.resolution``, the live feed, the page):
        ``{id, outcome, status, resolver: {kind, name}, proposed_at, dispute_until, decided_at, decided_by, disputes,
        evidence}``; times ISO 8601, ``decided_by`` the confirming or overturning operator's username or null,
        ``disputes`` how many agents disputed it (their reasons are for operators)."""
        disputes = getattr(self, "dispute_count", None)
        if disputes is None:
            disputes = self.disputes.count() if self.pk else 0
        return {
            "id": self.pk,
            "outcome": self.outcome,
            "status": self.status,
            "resolver": {"kind": self.resolver_kind, "name": self.resolver_name},
            "proposed_at": _iso(self.created_at),
            "dispute_until": _iso(self.dispute_until),
            "decided_at": _iso(self.decided_at),
            "decided_by": self.decided_by.get_username() if self.decided_by is not None else None,
            "disputes": disputes,
            "evidence": self.evidence or {},
        }


def _iso(value: Any) -> str | None:
    """ISO 8601 with UTC written ``Z``, as the API's serializers write times: the shapes of the API and of the live
    feed must agree."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class ResolutionDispute(models.Model):
    """An agent's objection to a proposed resolution, with its reason: the proposal then waits for an operator."""

    id = models.BigAutoField(primary_key=True)
    resolution = models.ForeignKey(Resolution, on_delete=models.CASCADE, related_name="disputes")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="disputes")
    reason = models.TextField(max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["resolution", "agent"], name="markets_dispute_one_per_agent"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} disputes {self.resolution_id}"


@dataclass(frozen=True)
class Resolver:
    """Who resolves: an operator account, an oracle agent or a source, with what it went by (``evidence``).

    ``name`` is what the pages and the API show: the operator's username, the agent's name, the source's name.
    """

    kind: str
    name: str
    agent: Agent | None = None
    user: Any | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def operator(cls, user: Any | None, name: str | None = None) -> Resolver:
        """An operator: a logged-in account (the admin), or a named shell user (``manage.py resolve_market``)."""
        label = name or (user.get_username() if user is not None else "")
        if not label:
            raise ValueError("an operator resolution needs an account or a name")
        return cls(Resolution.ResolverKind.OPERATOR, label, user=user)

    @classmethod
    def oracle(cls, agent: Agent) -> Resolver:
        return cls(Resolution.ResolverKind.ORACLE, agent.name, agent=agent)

    @classmethod
    def source(cls, name: str, evidence: dict[str, Any] | None = None) -> Resolver:
        """A source's settlement (a real venue's result, an imported data set), final at once."""
        return cls(Resolution.ResolverKind.SOURCE, name, evidence=dict(evidence or {}))

    def record(self, market: Market, outcome: str, status: str, **fields: Any) -> Resolution:
        """A new (unsaved) :class:`Resolution` of ``market`` by this resolver."""
        return Resolution(
            market=market,
            outcome=outcome,
            status=status,
            resolver_kind=self.kind,
            resolver_name=self.name[:150],
            resolver_agent=self.agent,
            resolver_user=self.user,
            evidence=self.evidence,
            **fields,
        )


class Feed(models.Model):
    """An operator's standing order to mirror a source's markets (DESIGN section 10): every ``interval_seconds`` the
    poller imports up to ``max_markets`` of the source's binary markets matching ``query`` (and ``status``), records
    snapshots of the prices of the markets it imported, closes them when the source does and resolves them when it
    settles. ``last_*`` tell how the last pass went."""

    class Source(models.TextChoices):
        KALSHI = "kalshi", "Kalshi"
        POLYMARKET = "polymarket", "Polymarket"
        MANIFOLD = "manifold", "Manifold"

    class Listing(models.TextChoices):
        OPEN = "open", "Open markets"
        ANY = "any", "Open, closed and settled markets"

    id = models.BigAutoField(primary_key=True)
    source = models.CharField(max_length=20, choices=Source.choices)
    query = models.CharField(
        max_length=200, blank=True, default="", help_text="Words the question (or ticker) must contain; empty: any."
    )
    status = models.CharField(max_length=4, choices=Listing.choices, default=Listing.OPEN)
    max_markets = models.PositiveIntegerField(
        default=20,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Most markets this feed imports (1-1000).",
    )
    interval_seconds = models.PositiveIntegerField(
        default=300, validators=[MinValueValidator(10)], help_text="Seconds between passes (at least 10)."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True, help_text="The last pass that reached the source.")
    last_summary = models.JSONField(default=dict, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["source", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_markets__gte=1, max_markets__lte=1000), name="markets_feed_max_markets_range"
            ),
            models.CheckConstraint(condition=Q(interval_seconds__gte=10), name="markets_feed_interval_gte_10"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()}" + (f" “{self.query}”" if self.query else "") + f" (≤ {self.max_markets})"

    def is_due(self, now: Any) -> bool:
        return self.is_active and (
            self.last_run_at is None or (now - self.last_run_at).total_seconds() >= self.interval_seconds
        )


class MarketSnapshot(models.Model):
    """The source's view of a mirrored market at one moment (DESIGN section 10): its own probability of YES
    (``yes_price``, 0-1), the top of its book as YES prices where it has one, its volume (in the source's unit) and its
    status there (``open``, ``closed``, ``settled``). ``seq`` numbers a market's snapshots of one source from 1 without
    gaps. A pass stores one when anything changed, and at least one an hour."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the (market, ...) indexes below serve every lookup by market.
    market = models.ForeignKey(Market, on_delete=models.CASCADE, related_name="snapshots", db_index=False)
    source = models.CharField(max_length=20)
    seq = models.BigIntegerField()
    taken_at = models.DateTimeField()
    yes_price = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    yes_bid = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    yes_ask = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    volume = models.DecimalField(max_digits=24, decimal_places=4, null=True, blank=True)
    status = models.CharField(max_length=10)

    class Meta:
        ordering = ["market", "taken_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["market", "source", "seq"], name="markets_snapshot_unique_seq"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="markets_snapshot_seq_gte_1"),
        ]
        # A page of a market's snapshots in time order (GET /markets/{id}/snapshots/), with or without ?source=: one
        # index range scan stopped by the page's LIMIT, however many snapshots the table holds (bench/snapshots.py).
        indexes = [
            models.Index(fields=["market", "taken_at", "id"], name="markets_snapshot_time"),
            models.Index(fields=["market", "source", "taken_at", "id"], name="markets_snapshot_source_time"),
        ]

    def __str__(self) -> str:
        return f"{self.market_id} {self.source} #{self.seq} {self.yes_price}"

    def public(self) -> dict[str, Any]:
        """The snapshot as the API and the live feed show it: prices as decimal strings or null, times ISO 8601."""
        return {
            "source": self.source,
            "seq": self.seq,
            "taken_at": _iso(self.taken_at),
            "yes_price": _text(self.yes_price),
            "yes_bid": _text(self.yes_bid),
            "yes_ask": _text(self.yes_ask),
            "volume": _text(self.volume),
            "status": self.status,
        }


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None
