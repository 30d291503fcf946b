"""Reads of the exchange: order-book levels, candles, an agent's fills and positions."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from agents.models import Agent
from markets.models import Market
from moltstreet.errors import InvalidRequest
from moltstreet.money import ONE
from trading.models import Order, Side, Trade


def book_levels(market: Market, depth: int | None = None) -> dict[str, Any]:
    """Aggregated resting size per price in each queue, best first, with the market ``seq`` they reflect.

    Returns ``{"market", "seq", "yes": [{"price", "size"}], "no": [...], "best_bid", "best_ask"}``: ``yes`` levels
    are YES bids at YES prices; ``no`` levels are NO bids at NO prices (a NO bid at q is a YES ask at 1 - q).
    The seq is read before and after the levels; if a trade committed in between, the read is repeated.
    """
    for _ in range(5):
        seq = Market.objects.filter(id=market.id).values_list("seq", flat=True).first()
        rows = list(
            Order.objects.filter(market_id=market.id, status__in=Order.RESTING)
            .values("book_side", "book_price")
            .annotate(size=Sum(F("size") - F("filled")))
            .order_by("book_side", "-book_price")
        )
        if Market.objects.filter(id=market.id).values_list("seq", flat=True).first() == seq:
            break
    levels: dict[str, list[dict[str, Any]]] = {Side.YES: [], Side.NO: []}
    for row in rows:
        levels[row["book_side"]].append({"price": str(row["book_price"]), "size": row["size"]})
    if depth is not None:
        levels = {side: rows[:depth] for side, rows in levels.items()}
    best_no = Decimal(levels[Side.NO][0]["price"]) if levels[Side.NO] else None
    return {
        "market": str(market.id),
        "seq": seq,
        "yes": levels[Side.YES],
        "no": levels[Side.NO],
        "best_bid": levels[Side.YES][0]["price"] if levels[Side.YES] else None,
        "best_ask": str(ONE - best_no) if best_no is not None else None,
    }


INTERVALS = OrderedDict(
    [("1m", timedelta(minutes=1)), ("5m", timedelta(minutes=5)), ("1h", timedelta(hours=1)), ("1d", timedelta(days=1))]
)
MAX_CANDLES = 1000


def candles(
    market: Market, interval: str = "1h", start: datetime | None = None, end: datetime | None = None
) -> list[dict]:
    """OHLC candles of the market's YES trade prices: ``[{start, open, high, low, close, volume}]`` oldest first.

    ``interval`` is one of 1m, 5m, 1h, 1d; at most 1000 candles (the window ends at ``end``, default now).
    Buckets without trades are left out. Raises :class:`InvalidRequest` for an unknown interval.
    """
    if interval not in INTERVALS:
        raise InvalidRequest(f"interval must be one of {', '.join(INTERVALS)}.", detail={"interval": interval})
    step = INTERVALS[interval]
    end = end or timezone.now()
    try:
        earliest = end - step * MAX_CANDLES
    except OverflowError:  # an ``end`` near year 1: the window starts at the earliest representable time
        earliest = datetime.min.replace(tzinfo=end.tzinfo)
    start = max(start, earliest) if start else earliest
    trades = (
        Trade.objects.filter(market=market, created_at__gte=start, created_at__lte=end)
        .order_by("seq")
        .values_list("created_at", "price", "size")
    )
    out: list[dict] = []
    epoch = datetime(2000, 1, 1, tzinfo=end.tzinfo)
    for at, price, size in trades.iterator(chunk_size=2000):
        bucket = epoch + ((at - epoch) // step) * step
        if not out or out[-1]["_bucket"] != bucket:
            out.append({"_bucket": bucket, "open": price, "high": price, "low": price, "close": price, "volume": 0})
        candle = out[-1]
        candle["high"], candle["low"], candle["close"] = max(candle["high"], price), min(candle["low"], price), price
        candle["volume"] += size
    return [
        {
            "start": c["_bucket"].isoformat(),
            "open": str(c["open"]),
            "high": str(c["high"]),
            "low": str(c["low"]),
            "close": str(c["close"]),
            "volume": c["volume"],
        }
        for c in out
    ]


def agent_fills(agent: Agent) -> QuerySet[Trade]:
    """Trades in which the agent was maker or taker, newest first, with both orders loaded."""
    return (
        Trade.objects.filter(Q(maker_agent=agent) | Q(taker_agent=agent))
        .select_related("maker_order", "taker_order")
        .order_by("-seq", "-created_at")
    )
