"""Reads of the exchange: order-book levels, candles, an agent's fills and positions."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import (
    BigIntegerField,
    Count,
    DateTimeField,
    DecimalField,
    DurationField,
    ExpressionWrapper,
    F,
    Func,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import Agent
from markets.models import Forecast, Market, MarketSnapshot
from moltstreet.errors import InvalidRequest
from moltstreet.money import ONE, complement, quantize
from trading.models import BookLevel, Position, Side, Trade


def book_levels(market: Market, depth: int | None = None) -> dict[str, Any]:
    """Aggregated resting size per price in each queue, best first, with the market ``seq`` they reflect.

    Read from ``BookLevel`` (kept by the services with the orders). Returns ``{"market", "seq", "yes": [{"price",
    "size"}], "no": [...], "best_bid", "best_ask"}``: ``yes`` levels
    are YES bids at YES prices; ``no`` levels are NO bids at NO prices (a NO bid at q is a YES ask at 1 - q).
    The seq is read before and after the levels; if a trade committed in between, the read is repeated.
    """
    for _ in range(5):
        seq = Market.objects.filter(id=market.id).values_list("seq", flat=True).first()
        rows = list(
            BookLevel.objects.filter(market_id=market.id, size__gt=0)
            .order_by("book_side", "-price")
            .values_list("book_side", "price", "size")
        )
        if Market.objects.filter(id=market.id).values_list("seq", flat=True).first() == seq:
            break
    levels: dict[str, list[dict[str, Any]]] = {Side.YES: [], Side.NO: []}
    for side, price, size in rows:
        levels[side].append({"price": str(price), "size": size})
    if depth is not None:
        levels = {side: rows[:depth] for side, rows in levels.items()}
    best_no = Decimal(levels[Side.NO][0]["price"]) if levels[Side.NO] else None
    return {
        "market": str(market.id),
        "seq": seq,
        "yes": levels[Side.YES],
        "no": levels[Side.NO],
        "best_bid": levels[Side.YES][0]["price"] if levels[Side.YES] else None,
        "best_ask": str(complement(best_no)) if best_no is not None else None,
    }


INTERVALS = OrderedDict(
    [("1m", timedelta(minutes=1)), ("5m", timedelta(minutes=5)), ("1h", timedelta(hours=1)), ("1d", timedelta(days=1))]
)
MAX_CANDLES = 1000
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


class _BucketStart(Func):
    """The start of the ``step``-wide bucket a time falls in, counted from ``origin``:
    ``origin + floor((time - origin) / step) * step``, exact to the microsecond, as an aware datetime (UTC)."""

    output_field = DateTimeField()

    def __init__(self, expression, *, origin: datetime, step: timedelta):
        super().__init__(expression)
        self.origin, self.step = origin, step

    def as_sql(self, compiler, connection, function=None, template=None, arg_joiner=None, **extra_context):
        raise NotImplementedError(f"candle buckets are written for PostgreSQL and SQLite, not {connection.vendor}")

    def as_postgresql(self, compiler, connection, **extra_context):
        # date_bin (PostgreSQL 14+) counts in whole microseconds: exact, and 1.8x as fast on 300,000 trades as
        # FLOOR(EXTRACT(EPOCH ...) / step), whose numeric arithmetic dominated the query (docs/performance.md).
        (at,) = self.get_source_expressions()
        step, origin = Value(self.step, output_field=DurationField()), Value(self.origin, output_field=DateTimeField())
        return compiler.compile(Func(step, at, origin, function="DATE_BIN", output_field=DateTimeField()))

    def as_sqlite(self, compiler, connection, **extra_context):
        # In whole seconds, which is exact since origin and step are whole seconds. Django stores times as
        # 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC); strftime would round the fraction to milliseconds (23:59:59.9996 would
        # become the next day), so it reads only the first 19 characters ("%%%%" is one "%" in the end). SQL's "/"
        # and "%" truncate toward zero, so the non-negative remainder ((x % step) + step) % step is taken off to
        # round down before the origin too.
        (at,) = self.get_source_expressions()
        origin, step = (self.origin - UNIX_EPOCH) // SECOND, self.step // SECOND
        unix = Func(
            at,
            template="CAST(strftime('%%%%s', substr(%(expressions)s, 1, 19)) AS INTEGER)",
            output_field=BigIntegerField(),
        )
        since = unix - Value(origin)
        start = since - (since % step + step) % step + Value(origin)
        return compiler.compile(Func(start, Value("unixepoch"), function="datetime", output_field=DateTimeField()))


def candles(
    market: Market, interval: str = "1h", start: datetime | None = None, end: datetime | None = None
) -> list[dict]:
    """OHLC candles of the market's YES trade prices, oldest first: ``[{"start": ISO 8601 str, "open", "high",
    "low", "close": YES price as a two-place decimal str, "volume": contracts traded (int)}]``.

    ``interval`` is one of 1m, 5m, 1h, 1d. Buckets are aligned on 2000-01-01 in ``end``'s time zone (UTC here):
    ``epoch + floor((created_at - epoch) / step) * step``; a candle's open and close are the prices of its lowest
    and highest ``seq``. The window is ``[start, end]`` (both inclusive; ``end`` defaults to now), clamped to the
    last 1000 intervals before ``end`` (to the earliest representable time for an ``end`` near year 1), so there are
    at most 1000 candles. Buckets without trades are left out. Raises :class:`InvalidRequest` for an unknown
    interval.

    Aggregated in the database (PostgreSQL 14+ or SQLite): one grouped query over the trades of the window, then
    one query for the open and close prices by ``(market, seq)``. Its cost is linear in the trades of the window
    (130 ms for 300,000 here; docs/performance.md).
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
    buckets = list(
        Trade.objects.filter(market=market, created_at__gte=start, created_at__lte=end)
        .annotate(bucket=_BucketStart("created_at", origin=datetime(2000, 1, 1, tzinfo=end.tzinfo), step=step))
        .values("bucket")
        .annotate(first=Min("seq"), last=Max("seq"), high=Max("price"), low=Min("price"), volume=Sum("size"))
        .order_by("bucket")
    )
    if not buckets:
        return []
    seqs = {b["first"] for b in buckets} | {b["last"] for b in buckets}
    prices = dict(Trade.objects.filter(market=market, seq__in=seqs).order_by().values_list("seq", "price"))
    return [
        {
            "start": b["bucket"].astimezone(end.tzinfo).isoformat(),
            "open": str(prices[b["first"]]),
            "high": str(quantize(b["high"])),  # SQLite gives aggregates of decimals unquantized (0.560000000000000)
            "low": str(quantize(b["low"])),
            "close": str(prices[b["last"]]),
            "volume": b["volume"],
        }
        for b in buckets
    ]


def agent_fills(agent: Agent) -> QuerySet[Trade]:
    """Trades in which the agent was maker or taker, newest first, with both orders loaded."""
    return (
        Trade.objects.filter(Q(maker_agent=agent) | Q(taker_agent=agent))
        .select_related("maker_order", "taker_order")
        .order_by("-seq", "-created_at")
    )


# --------------------------------------------------------------------------------------------------------------------
# Spectator pages (DESIGN section 9): reads that take a fixed number of queries however big the book or history is.

CHANGE_WINDOW = timedelta(hours=24)


def markets_with_change(queryset: QuerySet[Market], now: datetime | None = None) -> QuerySet[Market]:
    """Annotate each market with ``price_before``: the YES price its 24-hour change is measured from.

    That is the last trade at or before 24 hours ago; a market whose first trade came later is measured from that
    first trade (as Kalshi and Polymarket do for young markets). ``None`` when it never traded. Both lookups are
    correlated subqueries served by the ``(market, created_at)`` index, so a page of markets stays one query.
    """
    since = (now or timezone.now()) - CHANGE_WINDOW
    trades = Trade.objects.filter(market=OuterRef("pk"))
    before = trades.filter(created_at__lte=since).order_by("-created_at", "-seq").values("price")[:1]
    first_after = trades.filter(created_at__gt=since).order_by("created_at", "seq").values("price")[:1]
    price = DecimalField(max_digits=3, decimal_places=2)
    return queryset.annotate(
        price_before=Coalesce(Subquery(before, output_field=price), Subquery(first_after, output_field=price))
    )


def price_change(market: Market) -> Decimal | None:
    """The 24-hour change of a market annotated by :func:`markets_with_change` (YES price, may be negative)."""
    before = getattr(market, "price_before", None)
    if before is None or market.last_price is None:
        return None
    # quantize: SQLite hands the subquery's decimal back as a float.
    return quantize(Decimal(market.last_price) - Decimal(str(before)))


def recent_trades(market: Market, limit: int = 50) -> list[Trade]:
    """The market's last ``limit`` trades, newest first."""
    return list(Trade.objects.filter(market=market).order_by("-seq")[:limit])


def top_holders(market: Market, limit: int = 10) -> dict[str, list[Position]]:
    """The positions holding the most YES and the most NO contracts, with their agents (two queries)."""
    positions = Position.objects.filter(market=market).select_related("agent")
    return {
        Side.YES: list(positions.filter(yes_shares__gt=0).order_by("-yes_shares", "agent__name")[:limit]),
        Side.NO: list(positions.filter(no_shares__gt=0).order_by("-no_shares", "agent__name")[:limit]),
    }


def price_series(market: Market, max_points: int = 500) -> dict[str, Any]:
    """The market's YES price over its whole history, for a chart: ``{"points": [[epoch_ms, "0.55"], ...], "trades"}``.

    Every trade when there are at most ``max_points`` (``market.trade_count``, kept by the services). Otherwise the
    sequence numbers from the first trade to the last are cut into ``max_points`` runs of equal length and each run
    is drawn by the first trade at or after its start, plus the last trade: an even sampling of a long history,
    found with one index probe per run (a recursive CTE of the run starts, portable to SQLite) instead of reading,
    numbering or grouping every trade (100 ms on 100,000 trades). One query whatever the history's length.
    """
    count = market.trade_count
    trades = Trade.objects.filter(market=market)
    if count <= max_points:
        rows = list(trades.order_by("seq").values_list("created_at", "price"))
    else:
        rows = _sampled_trades(market, max_points)
    return {"points": [[int(at.timestamp() * 1000), str(price)] for at, price in rows], "trades": count}


def _sampled_trades(market: Market, runs: int) -> list[tuple[datetime, Decimal]]:
    """``(created_at, price)`` of the first trade at or after the start of each of ``runs`` equal runs of seqs from
    the market's first trade to its last, and of the last, in seq order (a run with no trade of its own yields the
    next one, kept once). One query: the bounds and the step come from the (market, seq) index in SQL."""
    table = connection.ops.quote_name(Trade._meta.db_table)
    market_id = Trade._meta.get_field("market").get_db_prep_value(market.id, connection)
    starts = f"""
        WITH RECURSIVE
            bounds(lo, hi, step) AS (
                SELECT MIN(seq), MAX(seq), (MAX(seq) - MIN(seq) + CAST(%s AS BIGINT)) / CAST(%s AS BIGINT)
                FROM {table} WHERE market_id = %s
            ),
            runs(start) AS (
                SELECT lo FROM bounds
                UNION ALL SELECT start + step FROM runs, bounds WHERE start + step <= hi
            )
        SELECT (SELECT MIN(t.seq) FROM {table} t WHERE t.market_id = %s AND t.seq >= runs.start) FROM runs
        UNION SELECT hi FROM bounds
    """  # noqa: S608  (the table name is the model's own; every value is bound)
    seqs = RawSQL(starts, [runs, runs, market_id, market_id])  # noqa: S611  (bound values only)
    return list(Trade.objects.filter(market=market, seq__in=seqs).order_by("seq").values_list("created_at", "price"))


def reference_series(market: Market, max_points: int = 500) -> list[list[Any]]:
    """The source's probability of YES over time for the market page's chart: ``[[epoch_ms, "0.5500"], ...]`` in
    time order, from the market's own source's snapshots (DESIGN section 10); empty for a market without a source.

    Every snapshot when there are at most ``max_points``; otherwise every k-th seq and the last, found by the unique
    ``(market, source, seq)`` index (a source's snapshots of a market are numbered 1, 2, ... without gaps), so the read
    stays one small index probe per point however many snapshots there are."""
    snapshots = MarketSnapshot.objects.filter(market=market, source=market.source).exclude(yes_price=None)
    last = (
        MarketSnapshot.objects.filter(market=market, source=market.source)
        .order_by("-seq")
        .values_list("seq", flat=True)[:1]
    )
    count = next(iter(last), 0)
    if count > max_points:
        step = -(-count // max_points)  # ceiling
        snapshots = snapshots.filter(seq__in=[*range(1, count + 1, step), count])
    rows = snapshots.order_by("seq").values_list("taken_at", "yes_price")
    return [[int(at.timestamp() * 1000), str(price)] for at, price in rows]


def market_public_forecasts(market: Market, limit: int = 50) -> list[Forecast]:
    """Each agent's last forecast in a resolved market, with its reasoning (DESIGN 4a: public once it resolves).

    Empty for a market that has not resolved. One query: the latest forecast per agent via a correlated subquery.
    """
    if market.status != Market.Status.RESOLVED:
        return []
    latest = Forecast.objects.filter(market=market, agent=OuterRef("agent")).order_by("-id").values("id")[:1]
    return list(
        Forecast.objects.filter(market=market, id=Subquery(latest))
        .select_related("agent")
        .order_by("-created_at", "-id")[:limit]
    )


def agent_position_summary(agent: Agent) -> dict[str, Any]:
    """One aggregate over all the agent's positions: ``open`` and ``resolved`` counts, and ``marked_pnl``.

    ``open`` counts positions holding contracts in markets not yet resolved; ``marked_pnl`` values those at the last
    YES price (NO at 1 - it) against their cost basis, ``None`` when none of their markets has traded.
    """
    open_q = ~Q(market__status=Market.Status.RESOLVED) & (Q(yes_shares__gt=0) | Q(no_shares__gt=0))
    mark = F("market__last_price")
    money = DecimalField(max_digits=20, decimal_places=4)
    value = ExpressionWrapper(
        mark * F("yes_shares") + (Value(ONE) - mark) * F("no_shares") - F("yes_cost") - F("no_cost"),
        output_field=money,
    )
    totals = Position.objects.filter(agent=agent).aggregate(
        open=Count("id", filter=open_q),
        resolved=Count("id", filter=Q(market__status=Market.Status.RESOLVED)),
        marked_pnl=Sum(value, filter=open_q & Q(market__last_price__isnull=False), output_field=money),
    )
    if totals["marked_pnl"] is not None:
        totals["marked_pnl"] = quantize(Decimal(str(totals["marked_pnl"])))
    return totals


def agent_open_positions(agent: Agent, limit: int = 50) -> list[Position]:
    """The agent's positions holding contracts in markets not yet resolved, with their markets (one query)."""
    return list(
        Position.objects.filter(agent=agent)
        .exclude(market__status=Market.Status.RESOLVED)
        .filter(Q(yes_shares__gt=0) | Q(no_shares__gt=0))
        .select_related("market")
        .order_by("-updated_at", "-id")[:limit]
    )


def agent_resolved_positions(agent: Agent, limit: int = 50) -> list[Position]:
    """The agent's positions in resolved markets with their realized P&L, latest resolution first (one query)."""
    return list(
        Position.objects.filter(agent=agent, market__status=Market.Status.RESOLVED)
        .select_related("market")
        .order_by("-market__resolved_at", "-id")[:limit]
    )


def agent_recent_fills(agent: Agent, limit: int = 50) -> list[Trade]:
    """The agent's last ``limit`` fills, newest first, with both orders and the market loaded.

    Two queries, one per role, each served by its ``(maker_agent|taker_agent, -created_at)`` index, merged here
    (one query with ``maker OR taker`` would have to sort all of the agent's trades). Each trade gets ``own_order``
    (the agent's order in it), ``role`` (maker or taker) and ``own_price`` (the price on the agent's side).
    """
    fills: dict[Any, Trade] = {}
    for field in ("maker_agent", "taker_agent"):
        for trade in (
            Trade.objects.filter(**{field: agent})
            .select_related("maker_order", "taker_order", "market")
            .order_by("-created_at", "-seq")[:limit]
        ):
            fills[trade.id] = trade
    newest = sorted(fills.values(), key=lambda t: (t.created_at, t.seq), reverse=True)[:limit]
    for trade in newest:
        maker = trade.maker_agent_id == agent.id
        own_order = trade.maker_order if maker else trade.taker_order
        # Attributes for the fills serializer, set on the instances: not model fields, so unknown to mypy.
        trade.own_order = own_order  # type: ignore[attr-defined]
        trade.role = "maker" if maker else "taker"  # type: ignore[attr-defined]
        trade.own_price = trade.price if own_order.side == Side.YES else complement(trade.price)  # type: ignore[attr-defined]
    return newest


def agent_public_forecasts(agent: Agent, limit: int = 50) -> list[Forecast]:
    """The agent's forecasts in resolved markets, newest first, with their reasoning (DESIGN 4a), one query.

    Forecasts in markets still open or closed stay private: their reasoning could move the price.
    """
    return list(
        Forecast.objects.filter(agent=agent, market__status=Market.Status.RESOLVED)
        .select_related("market")
        .order_by("-created_at", "-id")[:limit]
    )
