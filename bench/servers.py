"""Benchmark 5: the order benchmark's hot-market case served by daphne, by uvicorn workers and by gunicorn with
uvicorn workers, at 1, 2 and 4 worker processes (bench/README.md).

For each server it runs the same search as ``bench/orders.py --case hot`` (16 agents crossing 1-contract orders on
one market, open loop; the highest offered rate with p99 <= 100 ms and no errors), then prints one line per server
with the medians of ``--runs`` runs at that rate, and the ratio of each to daphne's. The README's production command
follows the winner.

    .venv/bin/python bench/servers.py
    .venv/bin/python bench/servers.py --servers daphne:1 uvicorn:2 --runs 3
"""

from __future__ import annotations

import argparse

import harness
import orders
from harness import say

DEFAULT = ["daphne:1", "uvicorn:1", "uvicorn:2", "uvicorn:4", "gunicorn:1", "gunicorn:2", "gunicorn:4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", default=DEFAULT, help="kind:workers, e.g. uvicorn:2")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per load run (default 5).")
    parser.add_argument("--runs", type=int, default=3, help="Runs at the found rate; medians are printed.")
    parser.add_argument("--max-rate", type=float, default=orders.RATES[-1])
    args = parser.parse_args()

    harness.setup()
    results: dict[str, dict] = {}
    for spec in args.servers:
        kind, _, workers = spec.partition(":")
        workers = int(workers or 1)
        agents = harness.make_agents(orders.CASES["hot"]["agents"], f"bench-{kind}-{workers}")
        markets = harness.make_markets(1, agents[0], f"{kind} x{workers}")
        with harness.running_server(kind, workers) as server:
            say(f"== {kind} x{workers} ==")
            results[spec] = orders.run_case("hot", args, server, [a.key for a in agents], markets)
    say(harness.audit_line())
    say("== servers ==")
    reference = results.get("daphne:1", {}).get("achieved")
    for spec, figures in results.items():
        kind, _, workers = spec.partition(":")
        if not figures:
            say(f"{kind} x{workers}: no sustainable rate")
            continue
        ratio = f"; {figures['achieved'] / reference:.2f}x daphne" if reference else ""
        say(
            f"{kind} x{workers}: {figures['achieved']:.0f} orders/s at p99 <= {orders.P99_LIMIT_MS:.0f} ms "
            f"(p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms, p99.9 {figures['p999']:.1f} ms; "
            f"p50 at half the rate {figures['half_p50']:.1f} ms; median of {args.runs}){ratio}"
        )


if __name__ == "__main__":
    main()
