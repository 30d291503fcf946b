"""Markets, their lifecycle and their event sequence, and agents' stated forecasts (DESIGN sections 4, 4a, 5.6)."""

import uuid

from django.db import models
from django.db.models import Q

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
