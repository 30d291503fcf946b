"""Geometry of the server-rendered charts (DESIGN section 11): a backtest's equity curve with its drawdown, a market's
YES price over the backtest's period, and a reliability diagram.

Pure functions from data to SVG coordinates; the templates only place the strings these return. No JavaScript and no
inline style: the Content-Security-Policy allows neither, and SVG presentation comes from classes in site.css.
Coordinates are floats formatted to one decimal place (pixels, display only); the money and probabilities themselves
stay ``Decimal`` and are labelled from their own values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.utils import timezone

if TYPE_CHECKING:
    from backtests.models import Backtest

# The equity chart's and the price charts' canvas (viewBox units; the SVG scales to the card's width).
WIDTH = 760
EQUITY_HEIGHT = 260
PRICE_HEIGHT = 120
LEFT, RIGHT, TOP, BOTTOM = 70, 14, 12, 24
# The reliability diagram: a square plot of probability against observed frequency, and beneath it a strip with the
# count of each bin.
REL_PLOT = 300
REL_LEFT, REL_TOP, REL_RIGHT = 44, 12, 12
REL_STRIP = 56
REL_WIDTH = REL_LEFT + REL_PLOT + REL_RIGHT
REL_GAP = 40  # tick labels and the axis title between the plot and the strip
REL_HEIGHT = REL_TOP + REL_PLOT + REL_GAP + REL_STRIP + 18


def _f(value: float) -> str:
    """A coordinate as SVG text: one decimal place, no ``-0.0``."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


@dataclass(frozen=True)
class _Scale:
    """A linear map from a domain ``[lo, hi]`` onto pixels ``[start, end]`` (``end`` < ``start`` flips the axis)."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo
        fraction = (value - self.lo) / span if span else 0.5
        return self.start + fraction * (self.end - self.start)


def _time_scale(t0: datetime, t1: datetime, start: float, end: float) -> tuple[_Scale, datetime, datetime]:
    if t1 <= t0:  # one instant: a minute either side, so the single value is drawn across the middle
        t0, t1 = t0 - timedelta(minutes=1), t1 + timedelta(minutes=1)
    return _Scale(t0.timestamp(), t1.timestamp(), start, end), t0, t1


def _steps(points: Sequence[tuple[float, float]], x_end: float) -> list[tuple[float, float]]:
    """The vertices of a step line through ``points`` (each value holds until the next point), carried to ``x_end``."""
    vertices: list[tuple[float, float]] = []
    for x, y in points:
        if vertices:
            vertices.append((x, vertices[-1][1]))
        vertices.append((x, y))
    if vertices and x_end > vertices[-1][0]:
        vertices.append((x_end, vertices[-1][1]))
    return vertices


def _path(vertices: Sequence[tuple[float, float]], close: bool = False) -> str:
    if not vertices:
        return ""
    head, *rest = vertices
    text = f"M{_f(head[0])},{_f(head[1])}" + "".join(f"L{_f(x)},{_f(y)}" for x, y in rest)
    return text + "Z" if close else text


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _credits_label(value: float, step: float) -> str:
    places = 0 if step >= 1 else 2
    return f"{value:,.{places}f}"


def _time_ticks(scale: _Scale, t0: datetime, t1: datetime) -> list[dict[str, str]]:
    """Labels at the start, middle and end of the period; times only when it is shorter than three days."""
    fmt = "%b %d %H:%M" if t1 - t0 < timedelta(days=3) else "%b %d, %Y"
    middle = t0 + (t1 - t0) / 2
    return [
        {"x": _f(scale(t.timestamp())), "label": t.strftime(fmt), "anchor": anchor}
        for t, anchor in ((t0, "start"), (middle, "middle"), (t1, "end"))
    ]


def equity_chart(
    equity: Sequence[tuple[datetime, Decimal]], *, cash: Decimal, start: datetime, end: datetime
) -> dict[str, Any]:
    """The equity curve of a backtest from ``start`` to ``end``: equity as a step line (it holds between changes), the
    running peak (starting from ``cash``, as ``max_drawdown`` counts it), the drawdown (the area between the peak and
    the equity) shaded, the starting cash as a dashed line, credit ticks and time labels. ``max_fall`` is the largest
    peak-to-trough fall on the drawn curve in credits (``None`` without a point)."""
    if not equity:
        return {"width": WIDTH, "height": EQUITY_HEIGHT, "empty": True}
    start, end = min(start, equity[0][0]), max(end, equity[-1][0])
    x, start, end = _time_scale(start, end, LEFT, WIDTH - RIGHT)
    values = [value for _, value in equity]
    low, high = float(min(*values, cash)), float(max(*values, cash))
    pad = (high - low) * 0.06 or max(abs(high) * 0.01, 1.0)
    ticks = nice_ticks(low - pad, high + pad)
    y = _Scale(min(low - pad, ticks[0]), max(high + pad, ticks[-1]), EQUITY_HEIGHT - BOTTOM, TOP)

    peak = cash
    peaks: list[Decimal] = []
    max_fall = Decimal("0.00")
    for value in values:
        peak = max(peak, value)
        peaks.append(peak)
        max_fall = max(max_fall, peak - value)
    x_end = x(end.timestamp())
    # Before the first recorded point the strategy held its starting cash (its peak too).
    lead = [(start, cash, cash)] if equity[0][0] > start else []
    series = lead + [(t, value, top) for (t, value), top in zip(equity, peaks, strict=True)]
    equity_vertices = _steps([(x(t.timestamp()), y(float(value))) for t, value, _ in series], x_end)
    peak_vertices = _steps([(x(t.timestamp()), y(float(top))) for t, _, top in series], x_end)
    in_drawdown = max_fall > 0
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return {
        "width": WIDTH,
        "height": EQUITY_HEIGHT,
        "empty": False,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": EQUITY_HEIGHT - BOTTOM,
        "equity_path": _path(equity_vertices),
        "peak_path": _path(peak_vertices),
        # The peak forward, then the equity back: both step lines share their x breakpoints, so this is the area
        # between them (zero-width wherever the equity is at its peak).
        "drawdown_path": _path(peak_vertices + equity_vertices[::-1], close=True) if in_drawdown else "",
        "cash_y": _f(y(float(cash))),
        "y_ticks": [{"y": _f(y(t)), "label": _credits_label(t, step)} for t in ticks],
        "x_ticks": _time_ticks(x, start, end),
        "label_y": _f(EQUITY_HEIGHT - 6),
        "tick_x": _f(LEFT - 6),
        "max_fall": max_fall,
        "points": len(equity),
    }


def price_chart(
    points: Sequence[tuple[datetime, Decimal]], *, before: Decimal | None, start: datetime, end: datetime
) -> dict[str, Any]:
    """A market's YES price (0 to 1) from ``start`` to ``end`` as a step line through its trades (``points``), from
    the last price before ``start`` (``before``) when there was one; aligned in time with :func:`equity_chart`."""
    if points:
        start, end = min(start, points[0][0]), max(end, points[-1][0])
    x, start, end = _time_scale(start, end, LEFT, WIDTH - RIGHT)
    y = _Scale(0.0, 1.0, PRICE_HEIGHT - BOTTOM, TOP)
    xy = [(x(start.timestamp()), y(float(before)))] if before is not None else []
    xy += [(x(t.timestamp()), y(float(price))) for t, price in points]
    return {
        "width": WIDTH,
        "height": PRICE_HEIGHT,
        "empty": not xy,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "path": _path(_steps(xy, x(end.timestamp()))),
        "y_ticks": [{"y": _f(y(t)), "label": label} for t, label in ((0.0, "0"), (0.5, "0.50"), (1.0, "1"))],
        "x_ticks": _time_ticks(x, start, end),
        "label_y": _f(PRICE_HEIGHT - 6),
        "tick_x": _f(LEFT - 6),
        "top": TOP,
        "bottom": PRICE_HEIGHT - BOTTOM,
    }


def reliability_chart(bins: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A reliability diagram of the ten bins of ``moltstreet_client.metrics.reliability``: the observed frequency of
    YES against the mean forecast of each non-empty bin (a dot, joined in order), the diagonal of perfect
    calibration, and beneath the plot a bar and the count of every bin. ``None`` when every bin is empty (the pages
    say so instead of drawing an empty chart)."""
    total = sum(b["count"] for b in bins)
    if not total:
        return None
    x = _Scale(0.0, 1.0, REL_LEFT, REL_LEFT + REL_PLOT)
    y = _Scale(0.0, 1.0, REL_TOP + REL_PLOT, REL_TOP)
    strip_top = REL_TOP + REL_PLOT + REL_GAP
    strip_bottom = strip_top + REL_STRIP
    most = max(b["count"] for b in bins)
    dots, bars = [], []
    for b in bins:
        lower, upper = float(b["lower"]), float(b["upper"])
        height = (strip_bottom - strip_top - 12) * b["count"] / most
        bars.append(
            {
                "x": _f(x(lower) + 1),
                "y": _f(strip_bottom - height),
                "width": _f(x(upper) - x(lower) - 2),
                "height": _f(height),
                "label_x": _f((x(lower) + x(upper)) / 2),
                "label_y": _f(strip_bottom - height - 3),
                "count": b["count"],
                "range": f"{b['lower']}–{b['upper']}",
            }
        )
        if b["count"]:
            mean, observed = Decimal(b["mean_forecast"]), Decimal(b["observed"])
            dots.append(
                {
                    "cx": _f(x(float(mean))),
                    "cy": _f(y(float(observed))),
                    # Area grows with the count, so a bin of a few forecasts does not look as sure as a full one.
                    "r": _f(2.5 + 4.5 * math.sqrt(b["count"] / most)),
                    "count": b["count"],
                    "mean": mean,
                    "observed": observed,
                    "range": f"{b['lower']}–{b['upper']}",
                }
            )
    grid = [
        {"x": _f(x(t)), "y": _f(y(t)), "label": label}
        for t, label in ((0.0, "0"), (0.25, ".25"), (0.5, ".5"), (0.75, ".75"), (1.0, "1"))
    ]
    return {
        "width": REL_WIDTH,
        "height": REL_HEIGHT,
        "left": _f(x(0.0)),
        "right": _f(x(1.0)),
        "top": _f(y(1.0)),
        "bottom": _f(y(0.0)),
        "diagonal": _path([(x(0.0), y(0.0)), (x(1.0), y(1.0))]),
        "line": _path([(float(d["cx"]), float(d["cy"])) for d in dots]) if len(dots) > 1 else "",
        "dots": dots,
        "bars": bars,
        "grid": grid,
        "strip_top": _f(strip_top),
        "strip_bottom": _f(strip_bottom),
        "tick_y": _f(REL_TOP + REL_PLOT + 13),
        "tick_x": _f(REL_LEFT - 5),
        "x_label_y": _f(REL_TOP + REL_PLOT + 28),
        "strip_label_y": _f(strip_bottom + 14),
        "y_label_x": _f(REL_LEFT - 30),
        "y_label_y": _f(REL_TOP + REL_PLOT / 2),
        "total": total,
    }


def decimal_or_none(value: Any) -> Decimal | None:
    """A metric as stored (a decimal string, a number or null) as a ``Decimal``."""
    if value is None or value == "":
        return None
    return Decimal(str(value))


def parse_equity(equity: list[list[Any]]) -> list[tuple[datetime, Decimal]]:
    """The stored ``[[ISO time, credits], ...]`` as ``(datetime, Decimal)`` pairs, in time order (a time without an
    offset is UTC, as the API writes every time)."""
    points = []
    for at, value in equity:
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        points.append((moment, Decimal(str(value))))
    points.sort(key=lambda point: point[0])
    return points


def backtest_period(backtest: Backtest, equity: list[tuple[datetime, Decimal]]) -> tuple[datetime, datetime]:
    """The period the charts span: the backtest's ``start``/``end``, or where they are open, its equity curve's first
    and last points (else when it was created and when it finished)."""
    start = backtest.start or (equity[0][0] if equity else backtest.created_at)
    end = backtest.end or (equity[-1][0] if equity else backtest.finished_at or timezone.now())
    return start, max(start, end)
