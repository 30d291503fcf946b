"""Benchmark 6: the price history of a market with many trades (bench/README.md).

One market with ``--trades`` (300,000) mint trades spread over the last ``--days`` (30) days (a bounded random walk of
the YES price, 50 YES buyers against 50 other NO buyers, 1-10 contracts each), seeded in bulk by bench/seed.py
(audit-consistent), vacuumed and analysed. With 30 days of trades, the windows of both intervals measured (1000 days
at 1d, 1000 hours at 1h) hold every trade: the worst case of ``GET /api/v1/markets/{id}/history/``.

1. In this process, for 1d and 1h: ``trading.selectors.candles`` (aggregated in SQL) and the Python loop it replaced
   (kept as the reference in trading/tests/test_candles.py), alternately, ``--runs`` (5) times each after a warm-up
   call; printed: the median of each and their ratio, measured in one run. Both must give the same candles.
2. Through the real server (daphne as ``make run`` serves): ``--requests`` (10) history GETs per interval on one
   keep-alive connection after ``--warmup`` (3); printed: the median server time (``Server-Timing``).
3. Unless ``--no-index``: the covering index (``COVERING_INDEX``, created by hand here: what a migration would add;
   then a vacuum, so that the visibility map allows index-only scans). The grouped query alone, as ``candles()``
   sends it, executed ``--runs`` times (median), for each path PostgreSQL can read the market's trades by: a
   sequential scan (the planner's choice here, where the market is the whole table), an index scan of
   ``(market_id, created_at)`` and an index-only scan of the covering index (each forced in a transaction that
   drops the other indexes on ``market_id`` and is rolled back). First with the heap in time order, as seeded, then
   shuffled (the table rewritten in random order, as the trades of many markets interleave in a live exchange, where
   one market is a small part of the table and the planner reads it through an index). The index is dropped at the
   end (and the database recreated at every start anyway).

    .venv/bin/python bench/history.py                  # about 4 minutes
    .venv/bin/python bench/history.py --trades 20000 --runs 3 --plans
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from urllib.parse import urlsplit

import harness
from harness import median, say

INTERVALS = ("1d", "1h")
# The covering index the schema has (trading migration 0006), and, for comparison, the plain one it replaced, which
# the benchmark creates by hand for its run.
COVERING_INDEX_NAME = "trading_trade_market_time"
PLAIN_INDEX_NAME = "history_bench_market_created"
PLAIN_INDEX = f"CREATE INDEX {PLAIN_INDEX_NAME} ON trading_trade (market_id, created_at)"
PATHS = {  # the path, and the one index on market_id left for it (None: none needed)
    "sequential scan": None,
    "index scan of (market_id, created_at)": PLAIN_INDEX_NAME,
    "index-only scan of the covering index": COVERING_INDEX_NAME,
}


def seed_history(trades: int, days: float) -> str:
    """One market with ``trades`` mint trades over the last ``days`` days, seeded in bulk; returns its id."""
    import seed

    rng = random.Random(6)
    started = time.perf_counter()
    (creator,) = seed.register_agents(1, "history-creator")
    yes_buyers = seed.register_agents(50, "history-yes")
    no_buyers = seed.register_agents(50, "history-no")
    (market,) = harness.make_markets(1, creator, "history")
    start, end = seed.history_window(days)
    plan = seed.trade_plan(trades, [a.id for a in yes_buyers], [a.id for a in no_buyers], start=start, end=end, rng=rng)
    seed.grant(seed.trade_needs(plan))
    seed.seed_trades(market, plan)
    say(f"seeded {trades:,} trades over {days:g} days in {time.perf_counter() - started:.1f} s")
    say(f"vacuum analyze {seed.vacuum_analyze():.1f} s")
    return market


# --------------------------------------------------------------------------------------------------------------------
# 1. In process


def time_in_process(market_id: str, runs: int) -> dict[str, dict[str, float]]:
    """Per interval: the median ms of ``candles()`` and of the reference loop (alternated), and the candle count;
    fails if they disagree."""
    from django.utils import timezone

    from markets.models import Market
    from trading.selectors import candles
    from trading.tests.test_candles import reference_candles

    market = Market.objects.get(id=market_id)
    end = timezone.now()  # one end for every call: the same window for both
    out: dict[str, dict[str, float]] = {}
    for interval in INTERVALS:
        implementations = {"sql": candles, "python": reference_candles}
        results = {name: fn(market, interval, end=end) for name, fn in implementations.items()}  # and warm-up
        if results["sql"] != results["python"]:
            raise SystemExit(f"candles() and the reference loop disagree at {interval}")
        times: dict[str, list[float]] = {name: [] for name in implementations}
        for _ in range(runs):
            for name, fn in implementations.items():
                started = time.perf_counter()
                fn(market, interval, end=end)
                times[name].append((time.perf_counter() - started) * 1000)
        out[interval] = {name: median(values) for name, values in times.items()}
        out[interval]["candles"] = len(results["sql"])
    return out


# --------------------------------------------------------------------------------------------------------------------
# 2. Through the server


def time_http(url: str, market_id: str, requests: int, warmup: int) -> dict[str, float]:
    """Per interval: the median server time (``Server-Timing``, ms) of the history GET."""
    return asyncio.run(_time_http(url, market_id, requests, warmup))


async def _time_http(url: str, market_id: str, requests: int, warmup: int) -> dict[str, float]:
    parts = urlsplit(url)
    conn = harness.HttpConnection(parts.hostname, parts.port)
    out = {}
    try:
        for interval in INTERVALS:
            path = f"/api/v1/markets/{market_id}/history/?interval={interval}"
            server = []
            for i in range(warmup + requests):
                status, content, headers = await conn.request("GET", path, headers={"Accept-Encoding": "identity"})
                if status != 200:
                    raise SystemExit(f"GET {path} answered {status}: {content[:500]!r}")
                if i >= warmup:
                    server.append(harness.server_time_ms(headers))
            out[interval] = median(server)
    finally:
        conn.close()
    return out


# --------------------------------------------------------------------------------------------------------------------
# 3. The covering index


def execute(statement, params: tuple | None = None) -> list[tuple]:
    """Run one statement (a string or a ``psycopg.sql`` composition) on Django's connection; its rows, if any."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def grouped_query(market_id: str, interval: str) -> str:
    """The grouped query ``candles()`` sends, as Django logs it (parameters bound)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from markets.models import Market
    from trading.selectors import candles

    market = Market.objects.get(id=market_id)
    with CaptureQueriesContext(connection) as captured:
        candles(market, interval, end=timezone.now())
    return captured.captured_queries[0]["sql"]


def time_paths(market_id: str, runs: int, show_plans: bool) -> dict[tuple[str, str], float]:
    """Per (path, interval): the median ms of the grouped query read by that path (``PATHS``), each forced in a
    transaction that is rolled back. Prints the scan each plan used."""
    from django.db import transaction
    from psycopg import sql

    queries = {interval: grouped_query(market_id, interval) for interval in INTERVALS}
    market_indexes = [
        name
        for (name,) in execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'trading_trade' AND indexdef LIKE '%(market_id%'"
        )
    ]
    out = {}
    for path, keep in PATHS.items():
        with transaction.atomic():
            if keep is None:
                execute("SET LOCAL enable_indexscan = off")  # also index-only scans
                execute("SET LOCAL enable_bitmapscan = off")
            else:
                execute("SET LOCAL enable_seqscan = off")
                execute("SET LOCAL enable_bitmapscan = off")
                unique = (
                    "SELECT conname FROM pg_constraint WHERE conrelid = 'trading_trade'::regclass AND contype = 'u'"
                )
                for (name,) in execute(unique):  # their indexes go with them
                    execute(sql.SQL("ALTER TABLE trading_trade DROP CONSTRAINT {}").format(sql.Identifier(name)))
                for name in market_indexes:
                    if name != keep and execute("SELECT to_regclass(%s)", (name,))[0][0]:
                        execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            for interval, query in queries.items():
                execute(query)  # warm-up
                times = []
                for _ in range(runs):
                    started = time.perf_counter()
                    execute(query)
                    times.append((time.perf_counter() - started) * 1000)
                out[(path, interval)] = median(times)
                plan = [row[0] for row in execute("EXPLAIN (ANALYZE, BUFFERS) " + query)]
                used = "; ".join(line.strip().lstrip("-> ").split("  (")[0] for line in plan if " Scan " in line)
                say(f"  {interval}, {path}: {out[(path, interval)]:.1f} ms ({used})")
                if show_plans:
                    say("\n".join("      " + line for line in plan))
            transaction.set_rollback(True)
    return out


def shuffle_trades() -> float:
    """Rewrite ``trading_trade`` in random order (the same rows); returns the seconds it took."""
    from django.db import transaction

    started = time.perf_counter()
    with transaction.atomic():
        execute("CREATE TEMPORARY TABLE shuffled ON COMMIT DROP AS SELECT * FROM trading_trade")
        execute("TRUNCATE trading_trade")
        execute("INSERT INTO trading_trade SELECT * FROM shuffled ORDER BY random()")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=300_000, help="Trades in the market (default 300,000).")
    parser.add_argument("--days", type=float, default=30, help="Days the trades span (default 30).")
    parser.add_argument("--runs", type=int, default=5, help="Measured calls of each kind; medians are printed.")
    parser.add_argument("--requests", type=int, default=10, help="History GETs per interval through the server.")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured GETs per interval first.")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    parser.add_argument("--no-index", action="store_true", help="Skip the measurements of the covering index.")
    parser.add_argument("--plans", action="store_true", help="Print the whole plans of step 3.")
    args = parser.parse_args()
    began = time.perf_counter()

    harness.setup()
    market = seed_history(args.trades, args.days)
    what = f"{args.trades:,} trades"
    lines = []

    for interval, m in time_in_process(market, args.runs).items():
        lines.append(
            f"history: candles() {interval}, {what} ({m['candles']:.0f} candles): SQL {m['sql']:.1f} ms, "
            f"Python loop {m['python']:.1f} ms, ratio {m['python'] / m['sql']:.1f}x (in process, median of {args.runs})"
        )
        say(lines[-1])

    with harness.running_server(args.server) as server:
        served = time_http(server.url, market, args.requests, args.warmup)
    for interval, ms in served.items():
        lines.append(
            f"history: GET history/?interval={interval}, {what}: {ms:.1f} ms server (median of {args.requests})"
        )
        say(lines[-1])

    if not args.no_index:
        import seed

        started = time.perf_counter()
        execute(PLAIN_INDEX)
        say(f"created the plain index in {time.perf_counter() - started:.1f} s; vacuum {seed.vacuum_analyze():.1f} s")
        figures = {}
        say("the grouped query by path, heap in time order:")
        figures["in time order"] = time_paths(market, args.runs, args.plans)
        say(f"shuffled the trades in {shuffle_trades():.1f} s; vacuum analyze {seed.vacuum_analyze():.1f} s")
        say("the grouped query by path, heap shuffled:")
        figures["shuffled"] = time_paths(market, args.runs, args.plans)
        execute(f"DROP INDEX {PLAIN_INDEX_NAME}")
        index_scan, index_only = list(PATHS)[1:]
        for heap, by_path in figures.items():
            for interval in INTERVALS:
                lines.append(
                    f"history: grouped query {interval}, {what}, heap {heap}: "
                    + ", ".join(f"{path} {by_path[(path, interval)]:.1f} ms" for path in PATHS)
                    + f"; index scan / index-only scan {by_path[(index_scan, interval)] / by_path[(index_only, interval)]:.2f}x"
                    f" (median of {args.runs})"
                )
        lines.append(
            f"history: the covering index {COVERING_INDEX_NAME}: (market_id, created_at) INCLUDE (seq, price, size)"
        )

    say(harness.audit_line())
    lines.append(f"history: whole benchmark took {time.perf_counter() - began:.0f} s")
    say("== history ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
