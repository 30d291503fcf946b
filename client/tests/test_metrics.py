"""The metrics of backtests and calibration (moltstreet_client.metrics, DESIGN section 11), each against a hand
computation: return, daily closes, Sharpe, max drawdown, win rate, Brier, the reliability diagram's ten bins, the
thinned equity curve and the P&L identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from moltstreet_client import metrics

D = Decimal
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def test_return_is_pnl_over_the_starting_cash_to_six_places():
    assert metrics.total_return(D("2.26"), D("1000.00")) == D("0.002260")
    assert metrics.total_return(D("-1"), D("3")) == D("-0.333333")


def test_daily_closes_are_the_last_equity_of_each_utc_day_carried_over_days_without_a_change():
    equity = [
        (DAY + timedelta(hours=1), D("1000")),
        (DAY + timedelta(hours=20), D("990")),
        (DAY + timedelta(days=2, hours=3), D("1010")),  # nothing on day 2: 990 carries over
        (DAY + timedelta(days=2, hours=23, minutes=59), D("1005")),
        (DAY + timedelta(days=3), D("1020")),  # midnight belongs to the next day
    ]
    closes = metrics.daily_closes(equity, DAY + timedelta(hours=1), DAY + timedelta(days=3, hours=5), D("1000"))
    assert closes == [D("1000"), D("990"), D("990"), D("1005"), D("1020")]


def test_sharpe_is_the_mean_over_the_sample_deviation_of_daily_returns_times_the_root_of_365():
    # Returns +10 %, -10 %, +10 %: mean 0.0333..., sample sd sqrt(((2/30)^2 * 2 + (4/30)^2) / 2) = 0.11547...;
    # 0.288675 x 19.104973 = 5.5151.
    closes = [D("100"), D("110"), D("99"), D("108.9")]
    assert metrics.sharpe(closes) == D("5.5151")


def test_sharpe_is_none_with_fewer_than_two_returns_no_variation_or_a_close_at_zero():
    assert metrics.sharpe([D("100"), D("110")]) is None
    assert metrics.sharpe([D("100"), D("100"), D("100")]) is None
    assert metrics.sharpe([D("100"), D("0"), D("50"), D("60")]) is None


def test_max_drawdown_is_the_largest_fall_from_a_running_peak_as_a_fraction_of_it():
    # Peaks 100 then 120: falls 100 -> 90 (10 %) and 120 -> 96 (20 %); the later recovery changes nothing.
    assert metrics.max_drawdown([D(v) for v in (100, 90, 120, 96, 130)]) == D("0.200000")
    assert metrics.max_drawdown([D(v) for v in (100, 101, 102)]) == D("0")
    assert metrics.max_drawdown([D("3"), D("2")]) == D("0.333333")


def test_win_rate_counts_markets_with_positive_pnl_among_those_traded():
    pnl = {"a": D("1.00"), "b": D("-0.50"), "c": D("0.00"), "d": D("5")}
    assert metrics.win_rate(pnl, {"a", "b", "c"}) == D("0.3333")  # c broke even: not a win; d was not traded
    assert metrics.win_rate(pnl, set()) is None


def test_brier_is_the_mean_squared_error_of_the_stated_probabilities():
    # (0.9 - 1)^2 + (0.2 - 0)^2 + (0.6 - 0)^2 = 0.01 + 0.04 + 0.36 = 0.41; / 3 = 0.136666...
    assert metrics.brier([(D("0.9"), 1), (D("0.2"), 0), (D("0.6"), 0)]) == D("0.1367")
    assert metrics.brier([]) is None


def test_the_reliability_diagram_has_ten_bins_with_counts_mean_forecast_and_observed_frequency_of_yes():
    forecasts = [
        (D("0"), 0),  # bin 0
        (D("0.05"), 1),  # bin 0
        (D("0.1"), 0),  # 0.1 opens bin 1
        (D("0.35"), 1),
        (D("0.35"), 0),
        (D("0.38"), 1),  # bin 3: three, two YES
        (D("0.99"), 1),
        (D("1"), 1),  # 1 falls in the last bin
    ]
    bins = metrics.reliability(forecasts)
    assert len(bins) == 10
    assert [(b["lower"], b["upper"]) for b in bins][:2] == [("0.00", "0.10"), ("0.10", "0.20")]
    assert bins[-1]["upper"] == "1.00"
    assert [b["count"] for b in bins] == [2, 1, 0, 3, 0, 0, 0, 0, 0, 2]
    assert bins[0] == {"lower": "0.00", "upper": "0.10", "count": 2, "mean_forecast": "0.0250", "observed": "0.5000"}
    assert bins[1]["mean_forecast"] == "0.1000" and bins[1]["observed"] == "0.0000"
    assert bins[2] == {"lower": "0.20", "upper": "0.30", "count": 0, "mean_forecast": None, "observed": None}
    assert bins[3]["mean_forecast"] == "0.3600"  # (0.35 + 0.35 + 0.38) / 3
    assert bins[3]["observed"] == "0.6667"
    assert bins[9]["mean_forecast"] == "0.9950" and bins[9]["observed"] == "1.0000"


def test_the_thinned_curve_keeps_the_ends_and_each_stretchs_lowest_and_highest_point():
    points = [(DAY + timedelta(minutes=i), D(1000 + (i % 7) - (50 if i == 333 else 0))) for i in range(1000)]
    thinned = metrics.thin(points, 100)
    assert thinned[0] == points[0] and thinned[-1] == points[-1]
    assert len(thinned) <= 100
    assert points[333] in thinned  # the trough survives
    assert min(v for _, v in thinned) == min(v for _, v in points)
    assert max(v for _, v in thinned) == max(v for _, v in points)
    assert [t for t, _ in thinned] == sorted(t for t, _ in thinned)
    assert metrics.thin(points[:50], 100) == points[:50]


def test_the_seven_metrics_are_named_once():
    assert metrics.METRICS == ("pnl", "return", "sharpe", "max_drawdown", "win_rate", "trades", "brier")
