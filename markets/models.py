"""Markets, their lifecycle and their event sequence, and agents' stated forecasts (DESIGN sections 4, 4a, 5.6)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agents.models import Agent

PRICE = {"max_digits": 3, "decimal_places": 2}


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
        help_text="The source market's probability when imported.",
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
    """The market's gap-free event sequence: one row per trade, order change and market change (invariant 6).

    ``kind`` is ``order``, ``trade`` or ``market``; ``data`` is the event as the live feed publishes it.
    """

    class Kind(models.TextChoices):
        ORDER = "order", "Order change"
        TRADE = "trade", "Trade"
        MARKET = "market", "Market change"

    id = models.BigAutoField(primary_key=True)
    market = models.ForeignKey(Market, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
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
            "decided_by": self.decided_by.get_username() if self.decided_by_id else None,
            "disputes": disputes,
            "evidence": self.evidence or {},
        }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


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
