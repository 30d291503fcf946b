"""Candles aggregated in SQL (``trading.selectors.candles``) give what the Python loop they replaced gave.

The loop is kept below as the reference. The trades are real: minted through ``order_place`` at varied prices and
sizes; only their ``created_at`` (set by the database's clock) is moved afterwards, to spread them over bucket
boundaries. Each Hypothesis example moves the times inside a savepoint that is rolled back, then compares both
implementations for every interval, with and without ``start`` and ``end``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moltstreet.errors import InvalidRequest
from testsupport.api import api_client
from trading.models import Trade
from trading.selectors import INTERVALS, MAX_CANDLES, candles
from trading.tests.factories import mint, new_agent

API = "/api/v1"
TRADES = 24
# Times are drawn around ANCHOR (a midnight, so a boundary of every interval); "now" is frozen at NOW.
ANCHOR = datetime(2024, 3, 10, tzinfo=UTC)
NOW = ANCHOR + timedelta(hours=12, microseconds=250)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # the alignment of the buckets


def reference_candles(market, interval: str = "1h", start=None, end=None) -> list[dict]:
    """The implementation ``candles`` replaced, verbatim: every trade of the window read in Python, in seq order."""
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


@pytest.fixture
def trades(market) -> list[Trade]:
    """``TRADES`` mint trades in ``market`` placed through the services (prices 0.30-0.70, 1-5 contracts), in seq
    order."""
    rng = random.Random(11)
    yes_buyer, no_buyer = new_agent("yes"), new_agent("no")
    for _ in range(TRADES):
        mint(yes_buyer, no_buyer, market, rng.randint(1, 5), f"0.{rng.randint(30, 70)}")
    made = list(Trade.objects.filter(market=market).order_by("seq"))
    assert len(made) == TRADES and len({t.price for t in made}) > 5
    return made


def move(trades: list[Trade], times: list[datetime]) -> None:
    """Give the trades (in seq order) these ``created_at``."""
    for trade, at in zip(trades, times, strict=True):
        Trade.objects.filter(id=trade.id).update(created_at=at)


def both(market, interval: str, **window) -> tuple[list[dict], list[dict]]:
    """(new, reference) for the same arguments, with "now" frozen at NOW."""
    with mock.patch.object(timezone, "now", return_value=NOW):
        return candles(market, interval, **window), reference_candles(market, interval, **window)


# A time near a boundary of some interval (exactly on it, a microsecond either side, or up to two minutes away),
# from about three years before ANCHOR (1000 days is the 1d window) to a little after NOW (outside the default end).
instants = st.builds(
    lambda unit, boundaries, jitter: ANCHOR + unit * boundaries + timedelta(microseconds=jitter),
    st.sampled_from(list(INTERVALS.values())),
    st.integers(min_value=-1100, max_value=15),
    st.one_of(st.sampled_from([-1, 0, 1]), st.integers(min_value=-120_000_000, max_value=120_000_000)),
)


@st.composite
def histories(draw) -> tuple[list[datetime], dict]:
    """Trade times (non-decreasing in seq, as the services stamp them under the market lock, ties included) and a
    window: ``start`` and ``end`` each absent, anywhere, or exactly on a trade."""
    times = sorted(draw(st.lists(instants, min_size=TRADES, max_size=TRADES)))
    if draw(st.booleans()):  # four trades at one instant
        i = draw(st.integers(min_value=0, max_value=TRADES - 4))
        times[i : i + 4] = [times[i]] * 4
    window = {}
    for name in ("start", "end"):
        choice = draw(st.sampled_from(["none", "instant", "trade"]))
        if choice == "instant":
            window[name] = draw(instants)
        elif choice == "trade":
            window[name] = times[draw(st.integers(min_value=0, max_value=TRADES - 1))]
    if "end" in window and draw(st.booleans()):  # as the API parses it: zoneinfo's UTC, not datetime's
        window["end"] = window["end"].astimezone(ZoneInfo("UTC"))
    return times, window


@pytest.mark.django_db
def test_it_gives_the_candles_the_python_loop_gave(market, trades):
    seen = {"candles": 0, "moving": 0}

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(histories())
    def check(history):
        times, window = history
        with transaction.atomic():
            move(trades, times)
            for interval in INTERVALS:
                new, reference = both(market, interval, **window)
                assert new == reference, (interval, window)
                seen["candles"] += len(new)
                seen["moving"] += sum(c["open"] != c["close"] for c in new)  # open and close differ
            transaction.set_rollback(True)

    check()
    assert seen["candles"] > 500 and seen["moving"] > 50, seen  # the examples were not all empty


@pytest.mark.django_db
@pytest.mark.parametrize("interval", list(INTERVALS))
@pytest.mark.parametrize(
    "boundary_of",
    [lambda step: ANCHOR - 3 * step, lambda step: EPOCH, lambda step: EPOCH - 2 * step],
    ids=["after 2000", "on 2000-01-01", "before 2000"],
)
def test_it_puts_a_trade_a_microsecond_before_a_boundary_in_the_earlier_bucket(market, trades, interval, boundary_of):
    step = INTERVALS[interval]
    boundary = boundary_of(step)
    times = [boundary - timedelta(microseconds=1), boundary, boundary + timedelta(microseconds=1)]
    move(trades, times + [NOW] * (TRADES - 3))

    new, reference = both(market, interval, end=boundary + step)
    assert new == reference
    assert [(c["start"], c["volume"]) for c in new] == [
        ((boundary - step).isoformat(), trades[0].size),
        (boundary.isoformat(), trades[1].size + trades[2].size),
    ]


@pytest.mark.django_db
def test_it_keeps_at_most_a_thousand_candles_ending_at_end(market, trades):
    # An hour between trades, 1m candles, a window ending 30 s after the 21st trade: 1000 minutes (16 h 40 min)
    # reach back past the 5th trade (20 min 30 s after the 4th), whatever start asks for.
    times = [ANCHOR + timedelta(hours=i) for i in range(TRADES)]
    move(trades, times)
    end = times[20] + timedelta(seconds=30)

    new, reference = both(market, "1m", start=ANCHOR - timedelta(days=1), end=end)
    assert new == reference
    assert [c["start"] for c in new] == [t.isoformat() for t in times[4:21]]


@pytest.mark.django_db
@pytest.mark.parametrize("end", [datetime.min.replace(tzinfo=UTC), datetime(1, 1, 2, 12, tzinfo=UTC)])
def test_it_answers_an_end_near_year_one_with_no_candles(market, trades, end):
    for interval in INTERVALS:
        assert both(market, interval, end=end) == ([], [])


@pytest.mark.django_db
def test_it_refuses_an_unknown_interval(market):
    with pytest.raises(InvalidRequest) as refused:
        candles(market, "2m")
    assert refused.value.detail == {"interval": "2m"}


@pytest.mark.django_db
def test_it_reads_the_candles_in_two_queries_and_an_empty_window_in_one(market, trades, django_assert_num_queries):
    move(trades, [ANCHOR + timedelta(minutes=7 * i) for i in range(TRADES)])
    with django_assert_num_queries(2):  # the buckets, then the open and close prices
        assert len(candles(market, "1m", end=NOW)) == TRADES
    with django_assert_num_queries(1):  # an empty window needs no prices
        assert candles(market, "1m", end=ANCHOR - timedelta(days=1)) == []


@pytest.mark.django_db
def test_it_gives_one_candle_per_bucket_even_when_the_clock_stepped_back(market, trades):
    """Where the loop differed, on purpose: if ``created_at`` ever went backwards in seq (a clock stepped back),
    the loop started a new candle at every change of bucket (two candles with one start, out of order); the
    aggregate gives one candle per bucket, opening at its lowest seq and closing at its highest."""
    hour = ANCHOR + timedelta(hours=10)
    times = [hour + timedelta(seconds=30), hour - timedelta(seconds=10), hour + timedelta(seconds=40)]
    move(trades, times + [NOW] * (TRADES - 3))
    first, second, third = trades[:3]

    new, reference = both(market, "1h", end=hour + timedelta(minutes=1))
    assert [c["start"] for c in reference] == [
        hour.isoformat(),
        (hour - timedelta(hours=1)).isoformat(),
        hour.isoformat(),
    ]
    assert new == [
        {
            "start": (hour - timedelta(hours=1)).isoformat(),
            "open": str(second.price),
            "high": str(second.price),
            "low": str(second.price),
            "close": str(second.price),
            "volume": second.size,
        },
        {
            "start": hour.isoformat(),
            "open": str(first.price),
            "high": str(max(first.price, third.price)),
            "low": str(min(first.price, third.price)),
            "close": str(third.price),
            "volume": first.size + third.size,
        },
    ]


@pytest.mark.django_db
def test_it_answers_the_history_endpoint_as_before(market, trades):
    rng = random.Random(5)
    move(trades, sorted(ANCHOR + timedelta(minutes=rng.randint(-3000, 700)) for _ in range(TRADES)))
    for interval in INTERVALS:
        for query, window in [
            ("", {}),
            ("&end=2024-03-10T06:00:00Z", {"end": ANCHOR + timedelta(hours=6)}),
            ("&start=2024-03-09T00:00:00Z&end=2024-03-10T12:00:00Z", {"start": ANCHOR - timedelta(days=1), "end": NOW}),
        ]:
            with mock.patch.object(timezone, "now", return_value=NOW):
                response = api_client().get(f"{API}/markets/{market.id}/history/?interval={interval}{query}")
                reference = reference_candles(market, interval, **window)
            assert response.status_code == 200
            assert response.json() == {"market": str(market.id), "interval": interval, "candles": reference}
            assert reference or query  # the default window holds trades for every interval
