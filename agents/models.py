"""Agents, their API keys and the ledger of every cash movement (DESIGN sections 2, 5 and 7)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q

from moltstreet.money import DecimalDigits

MONEY: DecimalDigits = {"max_digits": 16, "decimal_places": 2}


class Agent(models.Model):
    """A trading account. ``balance`` is all its credits; ``locked_balance`` the part reserved by resting BUY orders.

    Only services in ``agents.services`` and the trading services (``trading.orders``, ``trading.lifecycle``, ``trading.resolution``) change ``balance``/``locked_balance`` (each change
    has a ``LedgerEntry`` for ``balance``). ``reputation`` is realized P&L summed over resolved markets (DESIGN 4a).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=40, unique=True)
    description = models.TextField(blank=True, default="", max_length=2000)
    balance = models.DecimalField(default=Decimal("0.00"), **MONEY)
    locked_balance = models.DecimalField(default=Decimal("0.00"), **MONEY)
    reputation = models.DecimalField(default=Decimal("0.00"), **MONEY)
    # Brier score pieces over resolved YES/NO markets with a stated forecast (DESIGN 4a); score = sum / count.
    brier_sum = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    brier_count = models.PositiveIntegerField(default=0)
    brier_score = models.DecimalField(max_digits=10, decimal_places=6, null=True, blank=True)
    # Skill against the crowd (DESIGN section 10): over resolved YES/NO markets where the agent's last forecast had a
    # source price beside it, the agent's Brier sum and the source's (that price, scored the same way), and
    # brier_vs_market = 1 - agent's / source's (higher is better; none before BRIER_VS_MARKET_MIN markets).
    brier_ref_count = models.PositiveIntegerField(default=0)
    brier_ref_agent_sum = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    brier_ref_market_sum = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    brier_vs_market = models.DecimalField(max_digits=10, decimal_places=6, null=True, blank=True)
    is_oracle = models.BooleanField(default=False, help_text="May resolve markets through the API.")
    is_suspended = models.BooleanField(default=False, help_text="Suspended agents cannot trade.")
    is_house = models.BooleanField(
        default=False,
        help_text="A house trader run by MoltStreet itself (manage.py run_traders): marked on the pages and in the API.",
    )
    # Risk limits an operator sets in the admin (empty: none beyond the balance). Checked before matching.
    max_position = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most contracts of one side in one market: held plus resting BUY orders plus the new order. "
        "Orders beyond it are refused with position_limit.",
    )
    max_reserved = models.DecimalField(
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.00"))],
        help_text="Most credits reserved by resting BUY orders at once (the new order included). "
        "Orders beyond it are refused with reserved_limit.",
        **MONEY,
    )
    # Sock puppets (DESIGN section 4a, docs/decisions.md): agents with the same link group are linked (registered
    # from one address within MOLTSTREET_LINK_WINDOW_HOURS of each other, or grouped by an operator). Their trades
    # with each other are flagged (Trade.linked) and earn no rank: ``linked_pnl`` is what those trades are worth to
    # the agent (settled exactly in resolved markets; in open ones the most they can turn out to be worth), left out
    # of its reputation and of its place on the balance leaderboard. The address is for operators only.
    registered_from = models.GenericIPAddressField(null=True, blank=True, help_text="Client address at registration.")
    registration_network = models.CharField(
        max_length=50, blank=True, default="", db_index=True, help_text="The address as linking counts it (IPv6: /64)."
    )
    link_group = models.UUIDField(null=True, blank=True, db_index=True, help_text="Agents of one group are linked.")
    linked_pnl = models.DecimalField(
        default=Decimal("0.00"),
        help_text="P&L from trades with linked agents, left out of reputation and the balance rank.",
        **MONEY,
    )
    # The private feed's sequence (DESIGN section 8): the ``seq`` of the agent's last ``AgentEvent``, raised under the
    # agent's row lock by the transaction that stores the event (``agents.services.AgentFeed``).
    feed_seq = models.BigIntegerField(default=0, help_text="Sequence number of the agent's last private feed message.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    # The dead-man's switch (POST /agents/me/heartbeat/, trading.heartbeat): armed with a timeout in seconds, it
    # cancels every resting order of the agent when no heartbeat comes before ``heartbeat_deadline``.
    heartbeat_timeout = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Seconds between heartbeats before every resting order is cancelled."
    )
    heartbeat_deadline = models.DateTimeField(
        null=True, blank=True, help_text="When the resting orders are cancelled unless a heartbeat comes first."
    )

    class Meta:
        ordering = ["name"]
        indexes = [
            # The scheduler's look-up of switches past their deadline, every second.
            models.Index(
                fields=["heartbeat_deadline"],
                name="agents_agent_heartbeat_due",
                condition=Q(heartbeat_deadline__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(locked_balance__gte=0), name="agents_agent_locked_gte_0"),
            models.CheckConstraint(
                condition=Q(locked_balance__lte=F("balance")), name="agents_agent_locked_lte_balance"
            ),
            models.CheckConstraint(condition=Q(balance__gte=0), name="agents_agent_balance_gte_0"),
        ]

    def __str__(self) -> str:
        return self.name

    # DRF treats the authenticated principal as ``request.user``; an agent authenticated by key is authenticated.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def available_balance(self) -> Decimal:
        return self.balance - self.locked_balance

    @property
    def ranked_balance(self) -> Decimal:
        """The balance the leaderboard ranks: without the P&L of trades with linked agents."""
        return self.balance - self.linked_pnl

    def is_linked_to(self, other: Agent) -> bool:
        """Whether ``other`` is another agent of this agent's link group."""
        return self.link_group is not None and self.link_group == other.link_group and self.id != other.id


class ApiKey(models.Model):
    """A bearer key. Only the SHA-256 of the key is stored; the key itself is shown once, at creation."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.agent.name})"


class LedgerEntry(models.Model):
    """One cash movement of one agent. Replaying an agent's entries from zero gives its balance (invariant 4).

    ``market_id`` is a plain UUID rather than a foreign key so that ``agents`` imports nothing from ``markets``.
    """

    class Kind(models.TextChoices):
        GRANT = "grant", "Grant"
        FEE = "fee", "Fee"
        TRADE = "trade", "Trade"
        NETTING = "netting", "Netting"
        PAYOUT = "payout", "Payout"
        ADJUSTMENT = "adjustment", "Operator adjustment"

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="ledger_entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.DecimalField(**MONEY)
    balance_after = models.DecimalField(**MONEY)
    market_id = models.UUIDField(null=True, blank=True, db_index=True)
    reference = models.CharField(max_length=64, blank=True, default="", help_text="Trade, order or market id.")
    memo = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["agent", "id"], name="agents_ledger_agent_id")]
        constraints = [
            models.CheckConstraint(condition=Q(balance_after__gte=0), name="agents_ledger_balance_after_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.kind} {self.amount}"


class AgentEvent(models.Model):
    """One message of an agent's private feed (``/ws/agent/``, DESIGN section 8), stored in the very transaction of
    the change it reports, so a replay (``?since=``) is exact and a crash after commit loses nothing.

    ``seq`` counts 1, 2, 3, ... per agent without gaps; ``Agent.feed_seq`` is the last. ``data`` is the message
    without its ``type`` (``kind``) and ``seq`` (:meth:`message` puts them back). Written only through
    ``agents.services.AgentFeed``.
    """

    class Kind(models.TextChoices):
        ORDER = "order", "Order change"
        FILL = "fill", "Fill"
        POSITION = "position", "Position change"
        BALANCE = "balance", "Balance change"
        HEARTBEAT = "heartbeat", "Dead-man's switch fired"

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the unique (agent, seq) index serves every lookup by agent.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="feed_events", db_index=False)
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "seq"]
        constraints = [models.UniqueConstraint(fields=["agent", "seq"], name="agents_agentevent_unique_seq")]

    def __str__(self) -> str:
        return f"{self.agent_id} #{self.seq} {self.kind}"

    def message(self) -> dict[str, Any]:
        """The feed message as sent: ``{"type": kind, "seq": seq, **data}``."""
        return {"type": self.kind, "seq": self.seq, **self.data}
