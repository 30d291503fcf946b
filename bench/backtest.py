"""Benchmark 9: backtests and calibration (bench/README.md, DESIGN section 11).

1. **Backtest.** Each built-in strategy (``moltstreet_client.strategies.BUILTINS``, default parameters) backtested
   in this process by ``moltstreet_client.backtest.run_backtest`` over one market's recorded history of ``--trades``
   (10,000) trades and ``--snapshots`` (1,000) source snapshots with their book events, as
   ``GET /api/v1/markets/{id}/events/`` sends them (built here, no server: the engine is what is measured). The
   history: a book of five levels a side around a YES price that walks; a taker every 30 s (about three days) that
   takes the best level and sometimes sweeps into the next (a ``trade`` and the maker level's new size per fill, as
   ``order_place`` records them), orders resting and cancelled in between, a snapshot of the source every 300 s (a
   feed's default interval), then the market closed and resolved YES. Printed per strategy: the median wall time of
   ``--runs`` (3) runs (and its CPU time: on a busy machine the wall time includes waiting for a core), and its
   metrics; every run must give the same result (``as_dict``, to the cent) and the P&L identity must hold. Target:
   at most 1 s.
2. **Profile.** The spectator page ``/agents/<name>/`` of an agent with ``--forecasts`` (10,000) scored forecasts:
   one forecast in each of as many resolved markets (YES or NO, seeded in bulk with ``COPY`` by bench/seed.py, the
   agent's Brier sums set as resolution would have left them), on the real server (daphne as ``make run`` serves),
   ``--requests`` (10) GETs on one keep-alive connection after ``--warmup`` (3): the median server time
   (``Server-Timing``) and client time, and in this process the reliability diagram of those forecasts (the last
   forecast per resolved market read in one query, then ``moltstreet_client.metrics.reliability``). The page is
   measured as it is; target: at most 150 ms. Then the audit of DESIGN section 5.

    .venv/bin/python bench/backtest.py                         # both cases, about 1 minute
    .venv/bin/python bench/backtest.py --case backtest --runs 5
    .venv/bin/python bench/backtest.py --case profile --forecasts 2000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import harness
from harness import median, say

TRADE_EVERY = timedelta(seconds=30)
SNAPSHOT_EVERY = timedelta(seconds=300)
LEVELS = 5


# --------------------------------------------------------------------------------------------------------------------
# 1. Backtest


def _price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def recorded_history(trades: int, snapshots: int, seed: int = 9) -> Any:
    """One market's history as the events endpoint sends it: ``trades`` trades and ``snapshots`` reference events
    with the book events around them (module doc); a ``MarketHistory``."""
    from moltstreet_client.backtest import MarketHistory

    rng = random.Random(seed)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    now = start

    def add(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "seq": len(events) + 1, "created_at": now.isoformat(), **fields})

    # Both queues as bids in cents: yes[p] YES bids at the YES price p, no[q] NO bids at the NO price q.
    yes: dict[int, int] = {}
    no: dict[int, int] = {}

    def level(side: str, price: int, size: int) -> None:
        book = yes if side == "YES" else no
        if size > 0:
            book[price] = size
        else:
            book.pop(price, None)
        add("book", market="m", levels=[{"side": side, "price": _price(price), "size": max(size, 0)}])

    def refill(mid: int) -> None:
        """Rest orders on the levels within LEVELS ticks of ``mid`` that are empty; the book never crosses."""
        for k in range(1, LEVELS + 1):
            bid, no_bid = mid - k, 100 - (mid + k)
            if 1 <= bid <= 99 and bid not in yes and (not no or bid + max(no) < 100):
                level("YES", bid, rng.randint(5, 50))
            if 1 <= no_bid <= 99 and no_bid not in no and (not yes or no_bid + max(yes) < 100):
                level("NO", no_bid, rng.randint(5, 50))

    add("market", event="created", market={"status": "open", "outcome": None})
    mid = 50
    refill(mid)
    per_snapshot = max(1, round(SNAPSHOT_EVERY / TRADE_EVERY))
    taken = 0
    while taken < trades:
        now += TRADE_EVERY
        mid = min(90, max(10, mid + rng.choice((-1, 0, 0, 1))))
        # Between trades: someone rests an order near the touch, someone cancels part of one.
        if rng.random() < 0.5:
            refill(mid)
        if rng.random() < 0.3 and yes:
            price = rng.choice(list(yes))
            level("YES", price, yes[price] - rng.randint(1, yes[price]))
        if rng.random() < 0.3 and no:
            price = rng.choice(list(no))
            level("NO", price, no[price] - rng.randint(1, no[price]))
        # A taker: a YES buyer takes the best NO bids (YES asks), a NO buyer the best YES bids.
        buyer = rng.random() < 0.5
        book = no if buyer else yes
        if not book:
            refill(mid)
            continue
        want = rng.randint(1, 15)
        add("book", market="m", levels=[])  # the taker's own event, reserved before its fills
        while want > 0 and book and taken < trades:
            best = max(book)
            size = min(want, book[best])
            yes_price = 100 - best if buyer else best
            add("trade", trade={"price": _price(yes_price), "size": size, "taker_side": "YES" if buyer else "NO"})
            level("NO" if buyer else "YES", best, book[best] - size)
            want -= size
            taken += 1
            if taken % per_snapshot == 0:
                reference = Decimal(mid * 100 + rng.randint(-150, 150)) / 10000
                add("reference", reference={"yes_price": str(min(Decimal("0.99"), max(Decimal("0.01"), reference)))})
            if rng.random() < 0.7:
                break  # most takers stop at the first level
        if rng.random() < 0.5:
            refill(mid)
    # Top the snapshots up to the count asked for (the last ones after the last trade), then close and resolve.
    while sum(1 for e in events if e["type"] == "reference") < snapshots:
        now += SNAPSHOT_EVERY
        add("reference", reference={"yes_price": _price(mid)})
    now += timedelta(minutes=1)
    add("market", event="closed", market={"status": "closed", "outcome": None})
    now += timedelta(minutes=1)
    add("market", event="resolved", market={"status": "resolved", "outcome": "YES"})
    return MarketHistory("m", "Benchmark market?", None, events)


def bench_backtests(args) -> list[str]:
    from moltstreet_client import metrics
    from moltstreet_client.backtest import run_backtest
    from moltstreet_client.strategies import BUILTINS

    started = time.perf_counter()
    history = recorded_history(args.trades, args.snapshots)
    kinds = {}
    for event in history.events:
        kinds[event["type"]] = kinds.get(event["type"], 0) + 1
    span = (
        datetime.fromisoformat(history.events[-1]["created_at"])
        - datetime.fromisoformat(history.events[0]["created_at"])
    ).total_seconds() / 86400
    say(
        f"history: {history.trades:,} trades, {history.snapshots:,} snapshots, {kinds.get('book', 0):,} book events, "
        f"{len(history.events):,} events over {span:.1f} days (built in {time.perf_counter() - started:.1f} s)"
    )
    lines = []
    # The noise trader's work follows the simulated time, not the history: a turn every `interval` (4 s) seconds.
    # Also measured with a turn every 30 s, one a trade.
    cases = [(name, name, {}) for name in sorted(BUILTINS)] + [("noise (interval 30 s)", "noise", {"interval": 30.0})]
    for label, name, params in cases:
        times, cpu, results = [], [], []
        for _ in range(args.runs):
            strategy = BUILTINS[name](**params)
            began, began_cpu = time.perf_counter(), time.process_time()
            result = run_backtest(strategy, history)
            times.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
            results.append(result.as_dict())
            if metrics.pnl_identity_gap(result) != 0:
                raise SystemExit(f"{label}: the P&L identity is off by {metrics.pnl_identity_gap(result)}")
        same = all(r == results[0] for r in results[1:])
        if not same:
            raise SystemExit(f"{label}: two runs of the same backtest differ")
        m = results[0]["metrics"]
        refused = sum(results[0]["refusals"].values())
        line = (
            f"backtest: {label}, {history.trades:,} trades + {history.snapshots:,} snapshots: "
            f"{median(times) * 1000:.0f} ms (median of {args.runs}; max {max(times) * 1000:.0f} ms; "
            f"CPU {median(cpu) * 1000:.0f} ms), "
            f"same result every run: {'yes' if same else 'NO'}; trades {m['trades']}, pnl {m['pnl']}, "
            f"return {m['return']}, sharpe {m['sharpe']}, max_drawdown {m['max_drawdown']}, win_rate {m['win_rate']}, "
            f"brier {m['brier']}, refusals {refused}"
        )
        say(line)
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------------------------------
# 2. Profile


def seed_forecasts(count: int, rng: random.Random) -> str:
    """An agent with one forecast in each of ``count`` resolved markets (YES with the forecast's probability, so the
    diagram shows a calibrated forecaster), and its Brier sums as resolution leaves them; returns its name."""
    import seed
    from django.db import transaction
    from django.utils import timezone

    from agents.models import Agent
    from markets.models import Forecast, Market

    (agent,) = seed.register_agents(1, "calibrated")
    now = timezone.now()
    markets, forecasts = [], []
    brier_sum = Decimal(0)
    for i in range(count):
        created = now - timedelta(days=400) + timedelta(minutes=50 * i)
        closed = created + timedelta(days=7)
        probability = (Decimal(rng.randint(0, 10000)) / 10000).quantize(Decimal("0.0001"))
        outcome = "YES" if rng.random() < probability else "NO"
        market_id = uuid.uuid4()
        markets.append(
            {
                "id": market_id,
                "question": f"Benchmark calibration question {i}?",
                "deadline": closed,
                "status": "resolved",
                "outcome": outcome,
                "created_at": created,
                "closed_at": closed,
                "resolved_at": closed + timedelta(hours=1),
            }
        )
        forecasts.append(
            {
                "agent_id": agent.id,
                "market_id": market_id,
                "probability": probability,
                "reasoning": f"Forecast {i}: base rate and the news of the week.",
                "created_at": created + timedelta(days=1),
            }
        )
        brier_sum += (probability - (1 if outcome == "YES" else 0)) ** 2
    with transaction.atomic():
        seed.copy_rows(Market, markets)
        seed.copy_rows(Forecast, forecasts)
        # What trading.resolution leaves on the agent after scoring these forecasts (DESIGN section 4a).
        Agent.objects.filter(id=agent.id).update(
            brier_sum=brier_sum,
            brier_count=count,
            brier_score=(brier_sum / count).quantize(Decimal("0.000001")),
        )
    return agent.name


def reliability_in_process(name: str, runs: int) -> tuple[float, list[dict[str, Any]]]:
    """The median ms of reading the agent's scored forecasts (the last one per resolved YES/NO market, made before
    it closed: one query) and binning them (``metrics.reliability``); and the diagram."""
    from django.db.models import F
    from moltstreet_client import metrics

    from agents.models import Agent
    from markets.models import Forecast

    agent = Agent.objects.get(name=name)
    times, bins = [], []
    for _ in range(runs + 1):
        began = time.perf_counter()
        rows = (
            Forecast.objects.filter(
                agent=agent,
                market__status="resolved",
                market__outcome__in=("YES", "NO"),
                created_at__lt=F("market__closed_at"),
            )
            .order_by("market_id", "-created_at", "-id")
            .distinct("market_id")
            .values_list("probability", "market__outcome")
        )
        bins = metrics.reliability((p, 1 if outcome == "YES" else 0) for p, outcome in rows)
        times.append((time.perf_counter() - began) * 1000)
    return median(times[1:]), bins


def time_page(url: str, path: str, requests: int, warmup: int) -> tuple[float, float, int]:
    """Median server and client ms of ``requests`` GETs of ``path`` after ``warmup``, and the page's size."""
    return asyncio.run(_time_page(url, path, requests, warmup))


async def _time_page(url: str, path: str, requests: int, warmup: int) -> tuple[float, float, int]:
    parts = urlsplit(url)
    conn = harness.HttpConnection(parts.hostname, parts.port)
    server, client, size = [], [], 0
    try:
        for i in range(warmup + requests):
            began = time.perf_counter()
            status, content, headers = await conn.request("GET", path, headers={"Accept-Encoding": "identity"})
            elapsed = (time.perf_counter() - began) * 1000
            if status != 200:
                raise SystemExit(f"GET {path} answered {status}: {content[:500]!r}")
            if i >= warmup:
                server_ms = harness.server_time_ms(headers)
                if server_ms is None:
                    raise SystemExit("the server sent no Server-Timing header")
                server.append(server_ms)
                client.append(elapsed)
                size = len(content)
    finally:
        conn.close()
    return median(server), median(client), size


def bench_profile(args) -> list[str]:
    harness.setup()
    import seed

    from agents.models import Agent
    from markets.models import Forecast, Market

    began = time.perf_counter()
    name = seed_forecasts(args.forecasts, random.Random(11))
    say(f"seeded {args.forecasts:,} resolved markets with a forecast each in {time.perf_counter() - began:.1f} s")
    say(f"vacuum analyze {seed.vacuum_analyze_models(Market, Forecast, Agent):.1f} s")
    diagram_ms, bins = reliability_in_process(name, args.runs)
    scored = sum(b["count"] for b in bins)
    if scored != args.forecasts:
        raise SystemExit(f"the diagram holds {scored} forecasts, not {args.forecasts}")
    say("reliability: " + ", ".join(f"{b['lower']}-{b['upper']}: {b['count']} obs {b['observed']}" for b in bins))
    path = f"/agents/{name}/"
    with harness.running_server(args.server) as server:
        server_ms, client_ms, size = time_page(server.url, path, args.requests, args.warmup)
    lines = [
        f"profile: reliability diagram of {scored:,} scored forecasts in process (one query + binning): "
        f"{diagram_ms:.1f} ms (median of {args.runs})",
        f"profile: GET /agents/<name>/ with {scored:,} scored forecasts: {server_ms:.1f} ms server, "
        f"{client_ms:.1f} ms client (median of {args.requests}), {size:,} bytes",
    ]
    for line in lines:
        say(line)
    say(harness.audit_line())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["backtest", "profile", "all"], default="all")
    parser.add_argument("--trades", type=int, default=10_000, help="Trades in the history (default 10,000).")
    parser.add_argument("--snapshots", type=int, default=1_000, help="Source snapshots in it (default 1,000).")
    parser.add_argument("--runs", type=int, default=3, help="Runs of each backtest; medians are printed.")
    parser.add_argument("--forecasts", type=int, default=10_000, help="Scored forecasts of the agent (default 10,000).")
    parser.add_argument("--requests", type=int, default=10, help="Measured GETs of the profile page.")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured GETs first.")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    args = parser.parse_args()
    began = time.perf_counter()
    lines = []
    if args.case in ("backtest", "all"):
        lines += bench_backtests(args)
    if args.case in ("profile", "all"):
        lines += bench_profile(args)
    lines.append(f"backtest: whole benchmark took {time.perf_counter() - began:.0f} s")
    say("== backtest ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
