"""The metrics of a backtest and of calibration, each defined once, here (DESIGN section 11).

Money is in credits and exact (``Decimal``); fractions are rounded to 6 decimal places, ratios to 4. The server
uses these same functions for backtests it runs and for the reliability diagram on agents' profiles.

* ``pnl`` = final equity - starting cash, where equity = cash (reserved credits included) + the marked value of
  the contracts held; resolution payouts are cash. It equals the executions' cash flows + payouts + the marked value
  of what is left, to the cent (:func:`pnl_identity_gap`).
* ``return`` = ``pnl`` / starting cash.
* ``sharpe`` = mean(r) / stdev(r) x sqrt(365), r the daily equity returns: c_d / c_(d-1) - 1 over the UTC days of
  the period, c_0 the starting cash and c_d the equity at the end of day d (the last day: at the end of the
  backtest); ``stdev`` the sample standard deviation (n - 1). ``None`` with fewer than 2 daily returns or no
  variation. (Sharpe 1966, "Mutual fund performance"; annualised with 365 days, as prediction markets trade every
  day.)
* ``max_drawdown`` = the largest fall from a running peak of equity to a later trough, as a fraction of the peak
  (0 when equity never fell).
* ``win_rate`` = markets with positive P&L / markets with at least one fill; ``None`` with no fill.
* ``trades`` = the number of fills (netting is not a trade).
* ``brier`` = mean over markets resolved YES or NO of (f - o)^2, f the last probability of YES stated before the
  market closed and o 1 for YES, 0 for NO (Brier 1950; DESIGN section 4a); ``None`` without a stated forecast.
* reliability diagram: the same forecasts in ten bins of probability (0-0.1, ..., 0.9-1.0; 1.0 in the last), each
  with its count, mean forecast and observed frequency of YES (Murphy and Winkler 1977, "Reliability of
  subjective probability forecasts of precipitation and temperature").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moltstreet_client.backtest import BacktestResult

ZERO = Decimal("0")
FRACTION = Decimal("0.000001")
RATIO = Decimal("0.0001")
BINS = 10
DAYS_A_YEAR = 365
METRICS = ("pnl", "return", "sharpe", "max_drawdown", "win_rate", "trades", "brier")


def total_return(pnl: Decimal, cash: Decimal) -> Decimal:
    """``pnl / cash`` (a fraction, 6 places)."""
    return (pnl / cash).quantize(FRACTION)


def daily_closes(
    equity: Sequence[tuple[datetime, Decimal]], start: datetime, end: datetime, cash: Decimal
) -> list[Decimal]:
    """``[c_0, c_1, ...]``: the starting ``cash``, then the equity at the end of each UTC day from ``start``'s day to
    ``end``'s (the equity of the last point before midnight, carried over days without one)."""
    closes = [cash]
    day = start.astimezone(UTC).date()
    last_day = end.astimezone(UTC).date()
    index, value = 0, cash
    while day <= last_day:
        midnight = datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)
        while index < len(equity) and equity[index][0] < midnight:
            value = equity[index][1]
            index += 1
        closes.append(value)
        day += timedelta(days=1)
    return closes


def sharpe(closes: Sequence[Decimal]) -> Decimal | None:
    """The annualised Sharpe ratio of daily closes (module doc); ``None`` with fewer than 2 returns or a zero
    standard deviation (or a close of 0, after which returns are undefined)."""
    returns = []
    for before, after in pairwise(closes):
        if before <= 0:
            return None
        returns.append(after / before - 1)
    if len(returns) < 2:
        return None
    mean = sum(returns, ZERO) / len(returns)
    variance = sum(((r - mean) ** 2 for r in returns), ZERO) / (len(returns) - 1)
    if variance == 0:
        return None
    return (mean / variance.sqrt() * Decimal(DAYS_A_YEAR).sqrt()).quantize(RATIO)


def max_drawdown(values: Iterable[Decimal]) -> Decimal:
    """The largest ``(peak - trough) / peak`` over the series, a trough after its peak (6 places); 0 if it never
    fell."""
    peak: Decimal | None = None
    worst = ZERO
    for value in values:
        if peak is None or value > peak:
            peak = value
        elif peak > 0:
            fall = (peak - value) / peak
            if fall > worst:
                worst = fall
    return worst.quantize(FRACTION)


def win_rate(pnl_by_market: dict[str, Decimal], traded: Iterable[str]) -> Decimal | None:
    """Markets with positive P&L among those ``traded`` (4 places); ``None`` when none was traded."""
    traded = set(traded)
    if not traded:
        return None
    wins = sum(1 for market in traded if pnl_by_market.get(market, ZERO) > 0)
    return (Decimal(wins) / len(traded)).quantize(RATIO)


def brier(forecasts: Iterable[tuple[Decimal, int]]) -> Decimal | None:
    """Mean of ``(f - o)^2`` over ``(probability, outcome 1/0)`` pairs (4 places); ``None`` with none."""
    pairs = list(forecasts)
    if not pairs:
        return None
    return (sum(((Decimal(f) - o) ** 2 for f, o in pairs), ZERO) / len(pairs)).quantize(RATIO)


def reliability(forecasts: Iterable[tuple[Decimal, int]], bins: int = BINS) -> list[dict[str, Any]]:
    """The reliability diagram of ``(probability, outcome 1/0)`` pairs: one dict per bin, ``{lower, upper, count,
    mean_forecast, observed}`` (decimal strings; ``mean_forecast``/``observed`` ``None`` in an empty bin). Bin i
    holds ``i/bins <= f < (i+1)/bins``; a forecast of 1 falls in the last."""
    counts = [0] * bins
    sums = [ZERO] * bins
    yes = [0] * bins
    for probability, outcome in forecasts:
        probability = Decimal(probability)
        index = min(int(probability * bins), bins - 1)
        counts[index] += 1
        sums[index] += probability
        yes[index] += 1 if outcome else 0
    width = Decimal(1) / bins
    return [
        {
            "lower": str((width * i).quantize(Decimal("0.01"))),
            "upper": str((width * (i + 1)).quantize(Decimal("0.01"))),
            "count": counts[i],
            "mean_forecast": str((sums[i] / counts[i]).quantize(RATIO)) if counts[i] else None,
            "observed": str((Decimal(yes[i]) / counts[i]).quantize(RATIO)) if counts[i] else None,
        }
        for i in range(bins)
    ]


def thin(points: Sequence[tuple[datetime, Decimal]], count: int = 500) -> list[tuple[datetime, Decimal]]:
    """About ``count`` of ``points`` for a chart: the first, the last and, in each of ``count / 2`` equal runs of
    the series, its lowest and highest point in time order (so peaks, troughs and the drawdown stay visible)."""
    if len(points) <= count:
        return list(points)
    buckets = max(1, (count - 2) // 2)
    size = (len(points) - 2) / buckets
    kept = [points[0]]
    for b in range(buckets):
        run = points[1 + int(b * size) : 1 + int((b + 1) * size)]
        if not run:
            continue
        low = min(range(len(run)), key=lambda i: run[i][1])
        high = max(range(len(run)), key=lambda i: run[i][1])
        for i in sorted({low, high}):
            kept.append(run[i])
    kept.append(points[-1])
    return kept


def pnl_identity_gap(result: BacktestResult) -> Decimal:
    """``pnl - (cash flows + payouts + marked value left)``: 0.00 for every correct backtest."""
    return result.pnl - (result.cash_flows() + sum(result.payouts.values(), ZERO) + sum(result.marked.values(), ZERO))


def summary(result: BacktestResult) -> dict[str, Any]:
    """The seven metrics of a backtest (module doc): ``{pnl, return, sharpe, max_drawdown, win_rate, trades,
    brier}``; money in credits, fractions as ``Decimal``, ``None`` where undefined."""
    pnl = result.pnl
    fills = [execution for execution in result.executions if execution.reason != "netting"]
    closes = daily_closes(result.equity, result.start, result.end, result.cash)
    return {
        "pnl": pnl,
        "return": total_return(pnl, result.cash),
        "sharpe": sharpe(closes),
        "max_drawdown": max_drawdown([result.cash, *(value for _, value in result.equity)]),
        "win_rate": win_rate(result.pnl_by_market(), {execution.market for execution in fills}),
        "trades": len(fills),
        "brier": brier(result.scored_forecasts()),
    }
