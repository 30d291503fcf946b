"""Benchmark 8: a page of a market's source snapshots when the market has 1,000,000 of them (bench/README.md).

``GET /api/v1/markets/{id}/snapshots/`` (markets/api.py ``MarketViewSet.snapshots``: cursor pages ordered by
``(taken_at, id)``, 100 a page by default) reads one market's snapshots through the index ``markets_snapshot_time`` on
``(market_id, taken_at, id)``. Seeded in bulk by bench/seed.py (``COPY``): one Kalshi market with ``--snapshots``
(1,000,000) snapshots over ``--days`` (365) days (one every 32 s), ``--others`` (9) other mirrored markets (Kalshi,
Polymarket and Manifold in turn) with ``--other-snapshots`` (100,000) each over the same days, and one small Kalshi
market with ``--small`` (1,000), the markets' rows interleaved in time order as the poller writes them; the markets
are imported through ``market_import`` (mirrored markets, no creator), their reference price the newest snapshot's.
No ``reference`` events are seeded: the audit checks each market's events against its ``seq``, which is left alone,
and does not read snapshots (bench/seed.py ``seed_snapshots``).

1. Through the real server (daphne as ``make run`` serves): ``--requests`` (10) GETs of each case on one keep-alive
   connection after ``--warmup`` (3); printed: the median server time (``Server-Timing``) of each:
   the first page (100, and 1,000 with ``page_size=1000``), a page deep in the cursor (the cursor as DRF encodes
   it, at the snapshot 90 % of the way through), a one-day ``since``/``until`` window in the middle, ``?source=``
   the market's own source (every snapshot matches) and ``?source=`` a source it has none of (none matches), and
   the first page of the small market, for the ratio of the two.
2. In this process: each case's page query, as the view sends it (captured with ``CaptureQueriesContext``), under
   ``EXPLAIN (ANALYZE, BUFFERS)``: printed, the whole plan of the first and the deep page and of ``?source=`` with no
   match (``--plans``: every case), and for each case whether it is an index range scan bounded by the LIMIT (no
   rows read and thrown away by a filter beyond the page).
3. Unless ``--no-compare``: the ``?source=`` cases again without the index ``markets_snapshot_source_time`` on
   ``(market_id, source, taken_at, id)`` (migration markets 0006), dropped here and created again after: what the
   index saves, through the server and under EXPLAIN.

    .venv/bin/python bench/snapshots.py                        # about 1 minute
    .venv/bin/python bench/snapshots.py --snapshots 100000 --other-snapshots 10000 --plans
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import re
import time
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

import harness
from harness import median, say

SOURCE_INDEX_NAME = "markets_snapshot_source_time"
SOURCE_INDEX = f"CREATE INDEX {SOURCE_INDEX_NAME} ON markets_marketsnapshot (market_id, source, taken_at, id)"
SOURCES = ("kalshi", "polymarket", "manifold")
SHOWN = ("first page", "deep page", "source=polymarket (none)")  # whole plans printed without --plans


def seed_markets(args: argparse.Namespace) -> dict[str, str]:
    """The markets and their snapshots; the ids of ``big`` and ``small``."""
    import seed as bulk
    from django.utils import timezone

    from markets.models import MarketSnapshot
    from markets.services import market_import

    started = time.perf_counter()
    end = timezone.now().replace(microsecond=0)
    start = end - timedelta(days=args.days)
    deadline = end + timedelta(days=30)

    def imported(source: str, name: str):
        return market_import(
            question=f"Benchmark snapshots market {name}?", deadline=deadline, source=source, external_id=name
        )

    big, small = imported("kalshi", "SNAP-BIG"), imported("kalshi", "SNAP-SMALL")
    specs = [
        bulk.SnapshotSpec(big.id, "kalshi", args.snapshots, start, end),
        bulk.SnapshotSpec(small.id, "kalshi", args.small, start, end),
    ]
    for i in range(args.others):
        source = SOURCES[i % len(SOURCES)]
        other = imported(source, f"SNAP-OTHER-{i}")
        specs.append(bulk.SnapshotSpec(other.id, source, args.other_snapshots, start, end))
    count = bulk.seed_snapshots(specs, random.Random(8))
    say(f"seeded {count:,} snapshots of {len(specs)} markets in {time.perf_counter() - started:.1f} s")
    say(f"vacuum analyze {bulk.vacuum_analyze_models(MarketSnapshot):.1f} s")
    return {"big": str(big.id), "small": str(small.id)}


def cases(markets: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
    """Per case: the market and the query string."""
    from markets.models import MarketSnapshot

    big = markets["big"]
    times = MarketSnapshot.objects.filter(market_id=big).order_by("taken_at", "id").values_list("taken_at", flat=True)
    count = MarketSnapshot.objects.filter(market_id=big).count()
    deep = times[int(count * 0.9)]
    middle = times[count // 2]
    # The cursor as DRF's CursorPagination encodes it: the position (str() of the first ordering field), no offset.
    cursor = base64.b64encode(urlencode({"p": str(deep)}).encode()).decode()
    return {
        "first page": (big, {}),
        "first page, page_size=1000": (big, {"page_size": "1000"}),
        "deep page": (big, {"cursor": cursor}),
        "since/until, one day": (
            big,
            {"since": middle.isoformat(), "until": (middle + timedelta(days=1)).isoformat()},
        ),
        "source=kalshi (all)": (big, {"source": "kalshi"}),
        "source=polymarket (none)": (big, {"source": "polymarket"}),
        "small market, first page": (markets["small"], {}),
    }


def path(market: str, query: dict[str, str]) -> str:
    return f"/api/v1/markets/{market}/snapshots/" + (f"?{urlencode(query)}" if query else "")


# --------------------------------------------------------------------------------------------------------------------
# 1. Through the server


def time_http(url: str, todo: dict[str, tuple[str, dict[str, str]]], requests: int, warmup: int) -> dict[str, float]:
    """Per case: the median server time (``Server-Timing``, ms) of its GET. The cases take turns (one GET of each a
    round), so that a noisy moment spreads over all of them."""
    return asyncio.run(_time_http(url, todo, requests, warmup))


async def _time_http(url, todo, requests, warmup) -> dict[str, float]:
    parts = urlsplit(url)
    conn = harness.HttpConnection(parts.hostname, parts.port)
    server: dict[str, list[float]] = {name: [] for name in todo}
    try:
        for i in range(warmup + requests):
            for name, (market, query) in todo.items():
                target = path(market, query)
                status, content, headers = await conn.request("GET", target, headers={"Accept-Encoding": "identity"})
                if status != 200:
                    raise SystemExit(f"GET {target} answered {status}: {content[:500]!r}")
                if i >= warmup:
                    server[name].append(harness.server_time_ms(headers))
    finally:
        conn.close()
    return {name: median(values) for name, values in server.items()}


# --------------------------------------------------------------------------------------------------------------------
# 2. The plans


def page_query(market: str, query: dict[str, str]) -> tuple[str, int]:
    """The snapshot query the view sends for this page, as Django logs it (parameters bound), and the page's size."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = Client().get(path(market, query))
    if response.status_code != 200:
        raise SystemExit(f"GET {path(market, query)} answered {response.status_code}: {response.content[:500]!r}")
    found = [q["sql"] for q in captured.captured_queries if 'FROM "markets_marketsnapshot"' in q["sql"]]
    if len(found) != 1:
        raise SystemExit(f"expected one snapshot query, got {len(found)}: {found}")
    return found[0], len(response.json()["results"])


def explain(statement: str) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement)
        return [row[0] for row in cursor.fetchall()]


def verdict(plan: list[str]) -> str:
    """``index range scan bounded by the LIMIT`` when the plan is a Limit over one index scan that threw nothing away;
    otherwise what it is (a bitmap scan of a range the planner thinks smaller than a page, or not bounded)."""
    text = "\n".join(plan)
    scans = re.findall(r"(Index Only Scan|Index Scan(?: Backward)?|Bitmap Heap Scan|Seq Scan)[^\n]*? on (\w+)", text)
    index = re.search(r"Index (?:Only )?Scan(?: Backward)? using (\w+)", text)
    bitmaps = re.findall(r"Bitmap Index Scan on (\w+)", text)
    removed = sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", text))
    buffers = re.search(r"Buffers: shared (?:hit=(\d+))?\s*(?:read=(\d+))?", text)
    pages = sum(int(n) for n in (buffers.groups() if buffers else ()) if n)
    execution = re.search(r"Execution Time: ([0-9.]+) ms", text)
    if index is not None:
        shape = f"{scans[0][0]} using {index.group(1)}"
    elif bitmaps:
        shape = "Bitmap Index Scan using " + ", ".join(bitmaps)
    else:
        shape = ", ".join(f"{kind} on {table}" for kind, table in scans)
    if plan[0].lstrip().startswith("Limit") and index is not None and removed == 0 and len(scans) == 1:
        what = "index range scan bounded by the LIMIT"
    elif bitmaps and removed == 0 and "Seq Scan" not in text:
        # A narrow since/until window: the planner reads the whole range through a bitmap, bounded by the range.
        what = "bitmap scan of the index range (the planner expects fewer rows than a page)"
    else:
        what = "NOT bounded by the LIMIT"
    ms = float(execution.group(1)) if execution else 0.0
    return f"{what} ({shape}; {removed:,} rows removed by filter, {pages:,} buffers, {ms:.2f} ms)"


def plans(todo: dict[str, tuple[str, dict[str, str]]], show_all: bool, label: str = "") -> dict[str, str]:
    """Per case: the plan's verdict; prints the plans of ``SHOWN`` (or all)."""
    out = {}
    for name, (market, query) in todo.items():
        statement, size = page_query(market, query)
        explain(statement)  # warm
        plan = explain(statement)
        out[name] = verdict(plan)
        say(f"  {name}{label} ({size} rows): {out[name]}")
        if show_all or name in SHOWN:
            say(f"    {statement}")
            say("\n".join("      " + line for line in plan))
    return out


def index_sizes() -> list[tuple[str, int]]:
    """The snapshot table's and each of its indexes' size in bytes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'table', pg_relation_size('markets_marketsnapshot') UNION ALL "
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'markets_marketsnapshot'::regclass ORDER BY 1"
        )
        return cursor.fetchall()


def render_costs(market: str, size: int, runs: int) -> dict[str, float]:
    """In this process, for a page of ``size``: the median ms of the query alone, of rendering it with the view's
    serializer (``SnapshotSerializer``) and of rendering it with ``MarketSnapshot.public`` (the live feed's shape)."""
    from markets.api import SnapshotSerializer
    from markets.models import MarketSnapshot

    queryset = MarketSnapshot.objects.filter(market_id=market).order_by("taken_at", "id")[: size + 1]
    rows = list(queryset)[:size]
    steps = {
        "query": lambda: list(queryset.all()),  # .all(): a new query each time, not the cached rows
        "SnapshotSerializer": lambda: SnapshotSerializer(rows, many=True).data,
        "public()": lambda: [row.public() for row in rows],
    }
    out = {}
    for name, step in steps.items():
        step()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            step()
            times.append((time.perf_counter() - started) * 1000)
        out[name] = median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshots", type=int, default=1_000_000, help="Snapshots of the big market.")
    parser.add_argument("--others", type=int, default=9, help="Other markets with snapshots (default 9).")
    parser.add_argument("--other-snapshots", type=int, default=100_000, help="Snapshots of each other market.")
    parser.add_argument("--small", type=int, default=1000, help="Snapshots of the small market (default 1,000).")
    parser.add_argument("--days", type=float, default=365, help="Days the snapshots span (default 365).")
    parser.add_argument("--requests", type=int, default=10, help="GETs per case through the server.")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured GETs per case first.")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    parser.add_argument(
        "--no-compare", action="store_true", help="Skip the ?source= cases without the (market, source, time) index."
    )
    parser.add_argument("--plans", action="store_true", help="Print every case's whole plan.")
    args = parser.parse_args()
    began = time.perf_counter()

    harness.setup()
    markets = seed_markets(args)
    todo = cases(markets)
    what = f"{args.snapshots:,} snapshots"
    lines = []

    with harness.running_server(args.server) as server:
        served = time_http(server.url, todo, args.requests, args.warmup)
    say("plans of the page queries:")
    verdicts = plans(todo, args.plans)
    for name, ms in served.items():
        market = f"{args.small:,} snapshots" if name.startswith("small") else what
        lines.append(
            f"snapshots: GET snapshots/ {name}, {market}: {ms:.1f} ms server (median of {args.requests}); "
            f"{verdicts[name]}"
        )
    lines.append(
        f"snapshots: first page, {what} / {args.small:,}: "
        f"{served['first page'] / served['small market, first page']:.2f}x server time"
    )
    costs = render_costs(markets["big"], 1000, args.requests)
    lines.append(
        "snapshots: a page of 1,000 in process: "
        + ", ".join(f"{name} {ms:.1f} ms" for name, ms in costs.items())
        + f" (median of {args.requests})"
    )

    sizes = dict(index_sizes())
    lines.append(f"snapshots: {SOURCE_INDEX_NAME} takes {sizes[SOURCE_INDEX_NAME] / 2**20:.0f} MB")
    if not args.no_compare:
        import seed as bulk
        from django.db import connection

        from markets.models import MarketSnapshot

        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX {SOURCE_INDEX_NAME}")
        say(f"dropped {SOURCE_INDEX_NAME}; vacuum analyze {bulk.vacuum_analyze_models(MarketSnapshot):.1f} s")
        filtered = {name: case for name, case in todo.items() if name.startswith("source=")}
        with harness.running_server(args.server) as server:
            without = time_http(server.url, filtered, args.requests, args.warmup)
        say(f"plans without {SOURCE_INDEX_NAME}:")
        verdicts = plans(filtered, True, label=" (without the index)")
        for name, ms in without.items():
            lines.append(
                f"snapshots: GET snapshots/ {name}, {what}, without {SOURCE_INDEX_NAME}: {ms:.1f} ms server "
                f"(median of {args.requests}); {verdicts[name]}"
            )
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(SOURCE_INDEX)
        say(f"created {SOURCE_INDEX_NAME} again in {time.perf_counter() - started:.1f} s")

    sizes = ", ".join(f"{name} {size / 2**20:.0f} MB" for name, size in index_sizes())
    lines.append(f"snapshots: sizes: {sizes}")
    say(harness.audit_line())
    lines.append(f"snapshots: whole benchmark took {time.perf_counter() - began:.0f} s")
    say("== snapshots ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
