"""Orders, trades and positions (DESIGN section 3).

Every order is BUY or SELL of YES or NO at a limit price on its own side. In the book it is a bid in one of two
queues: ``book_side=YES`` (BUY YES at p, SELL NO at q shown as 1 - q) or ``book_side=NO`` (BUY NO at q, SELL YES at p
shown as 1 - p), at ``book_price``. Orders, trades and positions of a market change only under its row lock.
"""

import uuid
from decimal import Decimal

from django.db import models
from django.db.models import F, Q

from agents.models import MONEY, Agent
from markets.models import PRICE, Market, Outcome

# An agent's own id for an order (its idempotency key, unique per agent): at most this many characters.
CLIENT_ORDER_ID_MAX = 64

# What one contract pays at resolution, per outcome: (a YES contract, a NO contract), in credits (DESIGN section 4).
# Keyed by str: an Outcome is its string, and callers look up a market's stored outcome.
SETTLEMENT: dict[str, tuple[Decimal, Decimal]] = {
    Outcome.YES: (Decimal("1.00"), Decimal("0.00")),
    Outcome.NO: (Decimal("0.00"), Decimal("1.00")),
    Outcome.VOID: (Decimal("0.50"), Decimal("0.50")),
}


class Side(models.TextChoices):
    YES = "YES", "Yes"
    NO = "NO", "No"


class Action(models.TextChoices):
    BUY = "BUY", "Buy"
    SELL = "SELL", "Sell"


class TimeInForce(models.TextChoices):
    GTC = "GTC", "Good till cancelled"
    GTD = "GTD", "Good till date"
    IOC = "IOC", "Immediate or cancel"
    FOK = "FOK", "Fill or kill"


class Order(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        PARTIAL = "partial", "Partially filled"
        FILLED = "filled", "Filled"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"

    RESTING = (Status.OPEN, Status.PARTIAL)

    class CancelReason(models.TextChoices):
        USER = "user", "Cancelled by the agent"
        SELF_TRADE = "self_trade", "Self-trade prevention"
        IOC_REMAINDER = "ioc_remainder", "Unfilled rest of an IOC order"
        FOK_UNFILLED = "fok_unfilled", "FOK order could not fill completely"
        MARKET_CLOSED = "market_closed", "Market closed"
        MARKET_RESOLVED = "market_resolved", "Market resolved"
        AGENT_SUSPENDED = "agent_suspended", "Agent suspended"
        EXPIRED = "expired", "Expired (GTD)"
        AMENDED = "amended", "Replaced by an amended order"
        HEARTBEAT_EXPIRED = "heartbeat_expired", "No heartbeat within the agent's timeout"
        DISCONNECTED = "disconnected", "Private feed closed with cancel_on_disconnect"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="orders")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="orders")
    side = models.CharField(max_length=3, choices=Side.choices)
    action = models.CharField(max_length=4, choices=Action.choices)
    price = models.DecimalField(**PRICE, help_text="Limit price on the order's own side.")
    size = models.PositiveIntegerField()
    filled = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    time_in_force = models.CharField(max_length=3, choices=TimeInForce.choices, default=TimeInForce.GTC)
    post_only = models.BooleanField(default=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    client_order_id = models.CharField(max_length=CLIENT_ORDER_ID_MAX, null=True, blank=True)  # noqa: DJ001 (unique only when set)
    cancel_reason = models.CharField(max_length=20, choices=CancelReason.choices, blank=True, default="")
    # Set when an amend cancelled this order and replaced it (PATCH /orders/{id}/): the replacement carries its
    # client_order_id on, so only the newest order of a chain holds the id as an idempotency key.
    replaced_by = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="replaces", db_index=False
    )
    forecast = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    # The queue this order bids in and its bid price there (derived from side/action/price at placement).
    book_side = models.CharField(max_length=3, choices=Side.choices)
    book_price = models.DecimalField(**PRICE)
    # Time priority: the market sequence number at arrival (strictly increasing under the market lock).
    seq = models.BigIntegerField()
    updated_seq = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The resting book of a market, in priority order per queue: best price first, then earliest.
            models.Index(
                F("market"),
                F("book_side"),
                F("book_price").desc(),
                F("seq"),
                name="trading_order_book",
                condition=Q(status__in=["open", "partial"]),
            ),
            models.Index(fields=["agent", "-created_at"], name="trading_order_agent_created"),
            # An agent's resting orders: the open-order limit and the position limit count them on every order.
            models.Index(
                fields=["agent", "market"],
                name="trading_order_agent_resting",
                condition=Q(status__in=["open", "partial"]),
            ),
            models.Index(
                fields=["expires_at"],
                name="trading_order_gtd_expiry",
                condition=Q(status__in=["open", "partial"], expires_at__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(price__gte=Decimal("0.01"), price__lte=Decimal("0.99")), name="trading_order_price_range"
            ),
            models.CheckConstraint(condition=Q(size__gte=1), name="trading_order_size_gte_1"),
            models.CheckConstraint(condition=Q(filled__lte=F("size")), name="trading_order_filled_lte_size"),
            models.CheckConstraint(
                condition=~Q(status="filled") | Q(filled=F("size")), name="trading_order_filled_status_is_full"
            ),
            models.UniqueConstraint(
                fields=["agent", "client_order_id"],
                condition=Q(client_order_id__isnull=False, replaced_by__isnull=True),
                name="trading_order_unique_client_order_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.side} {self.size}@{self.price}"

    @property
    def remaining(self) -> int:
        return self.size - self.filled

    @property
    def is_resting(self) -> bool:
        return self.status in self.RESTING


class BookLevel(models.Model):
    """The resting contracts at one price of one queue of a market: the sum of ``size - filled`` over its resting
    orders there. Written by the services in the very transaction that changes those orders (``MarketTx.flush``), and
    checked against the orders by the audit, so the order book, the live snapshot and the top of book read at most
    198 rows instead of aggregating every resting order. A level that empties keeps its row with size 0."""

    market = models.ForeignKey(Market, on_delete=models.CASCADE, related_name="book_levels")
    book_side = models.CharField(max_length=3, choices=Side.choices)
    price = models.DecimalField(**PRICE, help_text="Bid price in the queue of book_side.")
    size = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["market", "book_side", "price"], name="trading_booklevel_market_side_price"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.book_side} {self.price} x {self.size}"


class Trade(models.Model):
    """One execution between a resting (maker) order and an incoming (taker) order at the maker's price.

    ``price`` is always the YES price x; the NO side traded at 1 - x. ``taker_side`` is the queue the taker bid in:
    YES if it bought YES or sold NO, NO if it bought NO or sold YES.
    """

    class Kind(models.TextChoices):
        MINT = "mint", "New pair minted"
        TRANSFER_YES = "transfer_yes", "YES changed hands"
        TRANSFER_NO = "transfer_no", "NO changed hands"
        BURN = "burn", "Pair burned"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="trades")
    seq = models.BigIntegerField()
    price = models.DecimalField(**PRICE)
    size = models.PositiveIntegerField()
    taker_side = models.CharField(max_length=3, choices=Side.choices)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    maker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="maker_trades")
    taker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="taker_trades")
    maker_agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="maker_trades")
    taker_agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="taker_trades")
    # Maker and taker were linked agents (Agent.link_group) when it executed: its P&L earns neither of them rank.
    linked = models.BooleanField(default=False, help_text="Between linked agents: flagged for operators.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["market", "-seq"], name="trading_trade_market_seq"),
            models.Index(fields=["maker_agent", "-created_at"], name="trading_trade_maker_created"),
            models.Index(fields=["taker_agent", "-created_at"], name="trading_trade_taker_created"),
            # A market's trades by time, covering what candles and the 24-hour change read (an index-only scan:
            # docs/performance.md, "Price history on a big market").
            models.Index(
                fields=["market", "created_at"], include=["seq", "price", "size"], name="trading_trade_market_time"
            ),
            models.Index(fields=["-created_at"], condition=Q(linked=True), name="trading_trade_linked"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(price__gte=Decimal("0.01"), price__lte=Decimal("0.99")), name="trading_trade_price_range"
            ),
            models.CheckConstraint(condition=Q(size__gte=1), name="trading_trade_size_gte_1"),
            models.CheckConstraint(condition=~Q(maker_agent=F("taker_agent")), name="trading_trade_no_self_trade"),
            models.UniqueConstraint(fields=["market", "seq"], name="trading_trade_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.size}@{self.price} ({self.kind})"


class Position(models.Model):
    """An agent's contracts in one market, with their cost basis and realized P&L (average-cost method).

    ``*_reserved`` contracts back resting SELL orders. ``*_cost`` is the total cost basis of the held contracts, so
    the average price is ``cost / shares``. ``realized_pnl`` accumulates (proceeds - cost basis) of every sale, netting
    and payout; once the market resolves it equals payouts + sale proceeds + netting credits - purchase costs.
    """

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="positions")
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="positions")
    yes_shares = models.BigIntegerField(default=0)
    no_shares = models.BigIntegerField(default=0)
    yes_reserved = models.BigIntegerField(default=0)
    no_reserved = models.BigIntegerField(default=0)
    yes_cost = models.DecimalField(default=Decimal("0.00"), **MONEY)
    no_cost = models.DecimalField(default=Decimal("0.00"), **MONEY)
    realized_pnl = models.DecimalField(default=Decimal("0.00"), **MONEY)
    # What trades with linked agents moved: credits (paid negative, received positive) and contracts (bought
    # positive, sold negative). Their worth at resolution, linked_cash + linked_yes x YES pays + linked_no x NO pays,
    # is the part of realized_pnl that earns no reputation (trading.resolution).
    linked_cash = models.DecimalField(default=Decimal("0.00"), **MONEY)
    linked_yes = models.BigIntegerField(default=0)
    linked_no = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "market"], name="trading_position_unique_agent_market"),
            models.CheckConstraint(condition=Q(yes_shares__gte=0), name="trading_position_yes_gte_0"),
            models.CheckConstraint(condition=Q(no_shares__gte=0), name="trading_position_no_gte_0"),
            models.CheckConstraint(
                condition=Q(yes_reserved__gte=0, yes_reserved__lte=F("yes_shares")),
                name="trading_position_yes_reserved_range",
            ),
            models.CheckConstraint(
                condition=Q(no_reserved__gte=0, no_reserved__lte=F("no_shares")),
                name="trading_position_no_reserved_range",
            ),
        ]
        indexes = [models.Index(fields=["market", "-yes_shares"], name="trading_position_market_yes")]

    def __str__(self) -> str:
        return f"{self.agent_id} in {self.market_id}: {self.yes_shares} YES / {self.no_shares} NO"

    def linked_worth(self, outcome: str | None = None) -> Decimal:
        """What the trades with linked agents were worth to this position's agent, in credits: their cash plus their
        contracts at ``outcome``'s payouts (DESIGN section 4). Before resolution (``outcome`` None), the most they
        can turn out to be worth: the better of YES and NO winning (VOID lies between). Every trade is worth its
        cash plus its contracts at the payout, and netting trades a pair for exactly the 1.00 it pays, so at
        resolution this is exactly the part of ``realized_pnl`` those trades made."""
        if outcome is None:
            return self.linked_cash + max(self.linked_yes, self.linked_no)
        yes_pays, no_pays = SETTLEMENT[outcome]
        return self.linked_cash + yes_pays * self.linked_yes + no_pays * self.linked_no
