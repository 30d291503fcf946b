"""Benchmark 2: how the depth of the book costs a crossing order and the order-book read (bench/README.md).

One market, its book seeded in bulk (bench/seed.py, audit-consistent) with resting BUY orders over every price level:
YES bids at 0.01-0.49 and NO bids at 0.01-0.49 (YES asks at 0.51-0.99), from ``--makers`` maker agents, 500-1000
contracts each. First with ``--small`` (100) resting orders, then the same market grown to ``--large`` (100,000).
In each state, after a short warm-up, each of ``--runs`` runs sends ``--requests`` (50) crossing orders one after the
other on one keep-alive connection (a separate taker: BUY NO 1 @ 0.60, which fills 1 contract against the best YES
bid 0.49 and leaves the book as deep as it was), then as many ``GET /api/v1/markets/{id}/orderbook/`` (the full book,
no ``depth``). The figure is the app's own time (``Server-Timing``), the median over the runs of each run's median;
the ratio is the large book's over the small one's. The seeded tables are vacuumed and analysed before measuring
(as autovacuum soon would in a live exchange; ``--no-vacuum`` measures straight after the bulk load).

    .venv/bin/python bench/book_depth.py               # daphne as make run serves, 3 runs
    .venv/bin/python bench/book_depth.py --runs 5 --large 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import harness
from harness import median, say

CROSSING_PRICE = "0.60"  # BUY NO at 0.60 crosses every YES bid at 0.40 or more; it fills at the best one, 0.49


def measure(url: str, market: str, key: str, requests: int) -> dict[str, list[float]]:
    """``requests`` crossing orders, then ``requests`` full order-book reads, one after the other on one
    keep-alive connection each; server (``Server-Timing``) and client times in ms, per request."""
    return asyncio.run(_measure(url, market, key, requests))


async def _measure(url: str, market: str, key: str, requests: int) -> dict[str, list[float]]:
    parts = urlsplit(url)
    out: dict[str, list[float]] = {"order": [], "order_client": [], "book": [], "book_client": []}
    body = harness.order_body(market, "NO", CROSSING_PRICE, 1)
    auth = {"Authorization": f"Bearer {key}"}
    conn = harness.HttpConnection(parts.hostname, parts.port)
    try:
        for _ in range(requests):
            started = time.perf_counter()
            status, content, headers = await conn.request("POST", "/api/v1/orders/", body, auth)
            out["order_client"].append((time.perf_counter() - started) * 1000)
            answer = json.loads(content)
            if status != 201 or len(answer.get("trades", [])) != 1 or answer["order"]["status"] != "filled":
                raise SystemExit(f"the crossing order did not fill 1 contract: {status} {content[:500]!r}")
            out["order"].append(harness.server_time_ms(headers))
        for _ in range(requests):
            started = time.perf_counter()
            status, content, headers = await conn.request("GET", f"/api/v1/markets/{market}/orderbook/")
            out["book_client"].append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise SystemExit(f"the order book answered {status}: {content[:500]!r}")
            out["book"].append(harness.server_time_ms(headers))
    finally:
        conn.close()
    if None in out["order"] or None in out["book"]:
        raise SystemExit("the server sent no Server-Timing header")
    return out


def book_shape(url: str, market: str) -> str:
    """Levels per side and the size of the full book's JSON, from one read through the SDK (not timed)."""
    from moltstreet_client import Client

    with Client(url) as client:
        book = client.orderbook(market)
    size = len(json.dumps(book.to_dict(), separators=(",", ":")))
    return (
        f"{len(book.yes)} YES levels {book.yes[0].price}..{book.yes[-1].price}, "
        f"{len(book.no)} NO levels, best bid {book.best_bid}, best ask {book.best_ask}, about {size:,} bytes"
    )


def run_state(label: str, args, server, market: str, key: str) -> dict[str, float]:
    import seed

    say(f"[{label}] {seed.resting_count(market):,} resting orders; book: {book_shape(server.url, market)}")
    measure(server.url, market, key, args.warmup)
    runs = []
    for i in range(args.runs):
        r = measure(server.url, market, key, args.requests)
        runs.append(r)
        say(
            f"[{label}] run {i + 1}: crossing order server p50 {median(r['order']):.2f} ms "
            f"(client {median(r['order_client']):.2f} ms, max {max(r['order']):.2f}); "
            f"order book GET server p50 {median(r['book']):.2f} ms "
            f"(client {median(r['book_client']):.2f} ms, max {max(r['book']):.2f})"
        )
    say(f"[{label}] {seed.resting_count(market):,} resting orders after the runs")
    return {
        "order": median([median(r["order"]) for r in runs]),
        "book": median([median(r["book"]) for r in runs]),
        "order_client": median([median(r["order_client"]) for r in runs]),
        "book_client": median([median(r["book_client"]) for r in runs]),
    }


def grow(market: str, makers: list, count: int, start: int, vacuum: bool) -> int:
    """Seed ``count`` more resting orders (continuing the pattern at ``start``); returns the next start."""
    import seed

    started = time.perf_counter()
    plan = seed.resting_plan(count, [m.id for m in makers], start=start)
    seed.grant(seed.resting_needs(plan))
    seed.seed_resting(market, plan)
    took = time.perf_counter() - started
    vacuumed = f"; vacuum analyze {seed.vacuum_analyze():.1f} s" if vacuum else ""
    say(f"seeded {count:,} resting orders in {took:.1f} s{vacuumed}")
    return start + count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="Runs per state; medians are printed (default 3).")
    parser.add_argument("--requests", type=int, default=50, help="Crossing orders and book reads per run.")
    parser.add_argument("--warmup", type=int, default=5, help="Unmeasured requests of each kind per state.")
    parser.add_argument("--small", type=int, default=100, help="Resting orders in the small book (default 100).")
    parser.add_argument("--large", type=int, default=100_000, help="Resting orders in the large book.")
    parser.add_argument("--makers", type=int, default=10, help="Maker agents sharing the resting orders.")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    parser.add_argument("--no-vacuum", action="store_true", help="Measure right after the bulk load.")
    args = parser.parse_args()
    began = time.perf_counter()

    harness.setup()
    import seed

    makers = seed.register_agents(args.makers, "depth-maker")
    (taker,) = seed.register_agents(1, "depth-taker")
    (market,) = harness.make_markets(1, makers[0], "book depth")

    start = grow(market, makers, args.small, 0, not args.no_vacuum)
    small_label, large_label = f"{args.small:,} resting", f"{args.large:,} resting"
    with harness.running_server(args.server) as server:
        small = run_state(small_label, args, server, market, taker.key)
        # Grow the same book (the server idles meanwhile): top it up to exactly --large resting orders.
        grow(market, makers, args.large - seed.resting_count(market), start, not args.no_vacuum)
        large = run_state(large_label, args, server, market, taker.key)
    say(harness.audit_line())

    n = f"median of {args.runs}"
    lines = [
        f"book depth: crossing order, {small_label}: {small['order']:.2f} ms server ({n})",
        f"book depth: crossing order, {large_label}: {large['order']:.2f} ms server ({n})",
        f"book depth: crossing order, ratio {args.large:,} / {args.small:,}: {large['order'] / small['order']:.2f}x",
        f"book depth: order book GET, {small_label}: {small['book']:.2f} ms server ({n})",
        f"book depth: order book GET, {large_label}: {large['book']:.2f} ms server ({n})",
        f"book depth: order book GET, ratio {args.large:,} / {args.small:,}: {large['book'] / small['book']:.2f}x",
        f"book depth: client side (for reference): crossing order {small['order_client']:.2f} -> "
        f"{large['order_client']:.2f} ms, order book GET {small['book_client']:.2f} -> {large['book_client']:.2f} ms",
        f"book depth: whole benchmark took {time.perf_counter() - began:.0f} s ({args.server})",
    ]
    for line in lines[:6]:
        say(line)
    say("== book depth ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
