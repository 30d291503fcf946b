"""Benchmark 4: the spectator pages ``/`` and ``/markets/{id}/`` on a big market (bench/README.md).

One market with ``--trades`` (100,000) mint trades spread over the last 30 days (a bounded random walk of the YES
price, 50 YES buyers against 50 other NO buyers, 1-10 contracts each) and then ``--orders`` (10,000) resting BUY
orders over every price level (YES bids 0.01-0.49, NO bids 0.01-0.49) from 10 makers; beside it ``--markets`` (300)
other markets with 0-60 trades and 0-40 resting orders each, so the list page shows a realistic mix. Everything is
seeded in bulk by bench/seed.py, audit-consistent (orders, trades, ledger rows, positions, events, sequence), and
the tables are vacuumed and analysed before measuring (``--no-vacuum`` measures straight after the bulk load).

Each of ``--runs`` runs sends ``--requests`` (10) ``GET /`` and then as many ``GET /markets/{id}/`` of the big
market, one after the other on one keep-alive connection, after a short warm-up. Printed per page: the app's own
time (``Server-Timing``) and the client's time to the last byte, each the median over the runs of each run's median.
Then the audit of DESIGN section 5.

    .venv/bin/python bench/pages.py                    # daphne as make run serves, 3 runs
    .venv/bin/python bench/pages.py --runs 5 --trades 20000 --markets 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from urllib.parse import urlsplit

import harness
from harness import median, say


def measure(url: str, paths: dict[str, str], requests: int) -> dict[str, dict[str, list[float]]]:
    """``requests`` GETs of each path in turn on one keep-alive connection: server and client ms per request."""
    return asyncio.run(_measure(url, paths, requests))


async def _measure(url: str, paths: dict[str, str], requests: int) -> dict[str, dict[str, list[float]]]:
    parts = urlsplit(url)
    out: dict[str, dict[str, list[float]]] = {}
    conn = harness.HttpConnection(parts.hostname, parts.port)
    try:
        for name, path in paths.items():
            server, client, sizes = [], [], []
            for _ in range(requests):
                started = time.perf_counter()
                status, content, headers = await conn.request("GET", path, headers={"Accept-Encoding": "identity"})
                client.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise SystemExit(f"GET {path} answered {status}: {content[:500]!r}")
                server_ms = harness.server_time_ms(headers)
                if server_ms is None:
                    raise SystemExit("the server sent no Server-Timing header")
                server.append(server_ms)
                sizes.append(len(content))
            out[name] = {"server": server, "client": client, "bytes": sizes}
    finally:
        conn.close()
    return out


def seed_exchange(args) -> str:
    """The big market and the others, seeded in bulk; returns the big market's id."""
    import seed

    rng = random.Random(4)
    started = time.perf_counter()
    creator, *_ = seed.register_agents(1, "pages-creator")
    makers = seed.register_agents(10, "pages-maker")
    yes_buyers = seed.register_agents(50, "pages-yes")
    no_buyers = seed.register_agents(50, "pages-no")
    # The creator pays the creation fee of every market (10.00 each) on top of its 1000.00.
    seed.grant({creator.id: 10 * (args.markets + 1)})
    big, *others = harness.make_markets(args.markets + 1, creator, "pages")
    say(
        f"registered {1 + 10 + 100} agents and created {args.markets + 1} markets in {time.perf_counter() - started:.1f} s"
    )

    yes_ids, no_ids, maker_ids = [a.id for a in yes_buyers], [a.id for a in no_buyers], [a.id for a in makers]
    start, end = seed.history_window(30)
    plans = {
        big: (
            seed.trade_plan(args.trades, yes_ids, no_ids, start=start, end=end, rng=rng),
            seed.resting_plan(args.orders, maker_ids),
        )
    }
    for market in others:
        first = seed.history_window(rng.uniform(0.5, 30))[0]
        trades = seed.trade_plan(
            rng.randint(0, 60),
            yes_ids,
            no_ids,
            start=first,
            end=end,
            rng=rng,
            first_price=rng.randint(10, 90),
            bounds=(5, 95),
        )
        plans[market] = (trades, seed.resting_plan(rng.randint(0, 40), maker_ids, start=rng.randint(0, 97)))
    needs: dict = {}
    for trades, resting in plans.values():
        for part in (seed.trade_needs(trades), seed.resting_needs(resting)):
            for agent_id, amount in part.items():
                needs[agent_id] = needs.get(agent_id, 0) + amount
    seed.grant(needs)

    # Trades first, then the book: the book rests after the history (a resting YES bid at 0.49 placed before a
    # trade at 0.40 would have been hit by that trade's taker).
    step = time.perf_counter()
    seed.seed_trades(big, plans[big][0])
    say(f"seeded {args.trades:,} trades in the big market in {time.perf_counter() - step:.1f} s")
    step = time.perf_counter()
    seed.seed_resting(big, plans[big][1])
    say(f"seeded {args.orders:,} resting orders in the big market in {time.perf_counter() - step:.1f} s")
    step = time.perf_counter()
    for market in others:
        seed.seed_trades(market, plans[market][0])
        seed.seed_resting(market, plans[market][1])
    counts = [(len(t), len(r)) for m, (t, r) in plans.items() if m != big]
    say(
        f"seeded {sum(t for t, _ in counts):,} trades and {sum(r for _, r in counts):,} resting orders in "
        f"{len(others)} other markets in {time.perf_counter() - step:.1f} s"
    )
    if not args.no_vacuum:
        say(f"vacuum analyze {seed.vacuum_analyze():.1f} s")
    say(f"seeding took {time.perf_counter() - started:.1f} s")
    return big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="Runs; medians are printed (default 3).")
    parser.add_argument("--requests", type=int, default=10, help="Requests of each page per run (default 10).")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured requests of each page first.")
    parser.add_argument("--trades", type=int, default=100_000, help="Trades in the big market.")
    parser.add_argument("--orders", type=int, default=10_000, help="Resting orders in the big market.")
    parser.add_argument("--markets", type=int, default=300, help="Other markets beside the big one.")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    parser.add_argument("--no-vacuum", action="store_true", help="Measure right after the bulk load.")
    args = parser.parse_args()
    began = time.perf_counter()

    harness.setup()

    big = seed_exchange(args)
    paths = {"/": "/", "/markets/{id}/": f"/markets/{big}/"}
    runs = []
    with harness.running_server(args.server) as server:
        measure(server.url, paths, args.warmup)
        for i in range(args.runs):
            r = measure(server.url, paths, args.requests)
            runs.append(r)
            say(
                f"run {i + 1}: "
                + "; ".join(
                    f"{name} server p50 {median(v['server']):.1f} ms (max {max(v['server']):.1f}), "
                    f"client p50 {median(v['client']):.1f} ms, {v['bytes'][-1]:,} bytes"
                    for name, v in r.items()
                )
            )
    say(harness.audit_line())

    what = f"{args.orders:,} resting orders and {args.trades:,} trades, {args.markets + 1} markets"
    lines = []
    for name in paths:
        server_ms = median([median(r[name]["server"]) for r in runs])
        client_ms = median([median(r[name]["client"]) for r in runs])
        lines.append(f"pages: GET {name}, {what}: {server_ms:.1f} ms server (median of {args.runs})")
        lines.append(f"pages: GET {name}, {what}: {client_ms:.1f} ms client (median of {args.runs})")
    lines.append(f"pages: whole benchmark took {time.perf_counter() - began:.0f} s ({args.server})")
    for line in lines[:-1]:
        say(line)
    say("== pages ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
