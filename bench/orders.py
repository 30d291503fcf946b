"""Benchmark 1: order throughput and latency through the HTTP API (bench/README.md).

Crossing 1-contract orders (BUY YES 0.50 and BUY NO 0.50 in turn, so every second order trades) from 16 agents on
one hot market, and from 64 agents over 50 markets (each pair of consecutive orders in the same market). For each
case it searches the highest offered rate the server sustains with p99 <= 100 ms, every request answered 2xx and
at least 95 % of the offer answered in time; then at that rate it runs ``--runs`` times and prints the medians of
orders/s, p50, p99 and p99.9, and the p50 at half that rate. pgbench (tpcb-like, the same client count, scale 1 for
the hot case and 50 for the spread case) runs right before each case; the ratio is orders/s over pgbench TPS.

    .venv/bin/python bench/orders.py                    # both cases, daphne as make run serves
    .venv/bin/python bench/orders.py --case hot --server uvicorn --workers 2
"""

from __future__ import annotations

import argparse

import harness
from harness import Call, median, order_body, say

P99_LIMIT_MS = 100.0
RATES = [5, 10, 15, 20, 25, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000]

CASES = {
    "hot": {"agents": 16, "markets": 1, "scale": 1},
    "spread": {"agents": 64, "markets": 50, "scale": 50},
}


def passes(result: harness.LoadResult) -> bool:
    return result.errors == 0 and result.pct(99) <= P99_LIMIT_MS and result.achieved >= 0.95 * result.rate


def make_calls(markets: list[str], agents: int):
    def call(i: int) -> Call:
        market = markets[(i // 2) % len(markets)]
        return Call(i % agents, "POST", "/api/v1/orders/", order_body(market, "YES" if i % 2 == 0 else "NO"))

    return call


def run_case(name: str, args, server, keys, markets) -> dict[str, float]:
    spec = CASES[name]
    load = make_calls(markets, spec["agents"])

    def run(rate: float, duration: float | None = None) -> harness.LoadResult:
        return harness.open_loop(server.url, keys, load, rate=rate, duration=duration or args.duration)

    say(f"[{name}] warm-up: {run(min(RATES[0], 25), 3).describe()}")
    best, failed_at = None, None
    for rate in RATES:
        if rate > args.max_rate:
            break
        result = run(rate)
        ok = passes(result)
        say(f"[{name}] search {'pass' if ok else 'FAIL'}: {result.describe()}")
        if not ok:  # confirm once: the machine is shared and a single run can be unlucky
            result = run(rate)
            ok = passes(result)
            say(f"[{name}] search {'pass' if ok else 'FAIL'} (again): {result.describe()}")
        if not ok:
            failed_at = rate
            break
        best = rate
    if best is not None and failed_at is not None:  # one bisection step between the last pass and the first fail
        middle = (best + failed_at) / 2
        result = run(middle)
        say(f"[{name}] refine {'pass' if passes(result) else 'FAIL'}: {result.describe()}")
        if passes(result):
            best = middle
    if best is None:
        say(f"[{name}] not even {RATES[0]} orders/s met p99 <= {P99_LIMIT_MS:.0f} ms")
        return {}

    runs = [run(best) for _ in range(args.runs)]
    half = [run(best / 2) for _ in range(args.runs)]
    for r in runs:
        say(f"[{name}] at the sustained rate: {r.describe()}")
    for r in half:
        say(f"[{name}] at half that rate: {r.describe()}")
    return {
        "rate": best,
        "achieved": median([r.achieved for r in runs]),
        "p50": median([r.pct(50) for r in runs]),
        "p99": median([r.pct(99) for r in runs]),
        "p999": median([r.pct(99.9) for r in runs]),
        "server_p50": median([harness.percentile(r.server_ms, 50) for r in runs]),
        "half_p50": median([r.pct(50) for r in half]),
        "half_p99": median([r.pct(99) for r in half]),
        "all_ok": all(passes(r) for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=[*CASES, "both"], default="both")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per load run (default 5).")
    parser.add_argument("--runs", type=int, default=3, help="Runs at the found rate; medians are printed.")
    parser.add_argument("--max-rate", type=float, default=RATES[-1], help="Stop the search here.")
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--no-pgbench", action="store_true", help="Skip the pgbench reference.")
    args = parser.parse_args()

    harness.setup()
    cases = list(CASES) if args.case == "both" else [args.case]
    lines = []
    for name in cases:
        spec = CASES[name]
        tps = None
        if not args.no_pgbench:
            tps = harness.pgbench_tps(clients=spec["agents"], scale=spec["scale"], seconds=args.pgbench_seconds)
            say(f"[{name}] pgbench tpcb-like scale {spec['scale']}, {spec['agents']} clients: {tps:.0f} TPS")
        agents = harness.make_agents(spec["agents"], f"bench-{name}")
        markets = harness.make_markets(spec["markets"], agents[0], name)
        with harness.running_server(args.server, args.workers) as server:
            figures = run_case(name, args, server, [a.key for a in agents], markets)
        label = (
            f"{name} ({spec['agents']} agents, {spec['markets']} market{'s' if spec['markets'] > 1 else ''}, "
            f"{args.server} x{args.workers})"
        )
        if not figures:
            lines.append(f"{label}: no sustainable rate")
            continue
        ratio = f"; ratio to pgbench {figures['achieved'] / tps:.3f} ({tps:.0f} TPS)" if tps else ""
        lines.append(
            f"{label}: {figures['achieved']:.0f} orders/s sustained at p99 <= {P99_LIMIT_MS:.0f} ms "
            f"(offered {figures['rate']:.0f}/s; p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms, "
            f"p99.9 {figures['p999']:.1f} ms, server p50 {figures['server_p50']:.1f} ms; median of {args.runs}"
            f"{'' if figures['all_ok'] else '; NOT every run passed'}){ratio}"
        )
        lines.append(
            f"{label}: p50 {figures['half_p50']:.1f} ms, p99 {figures['half_p99']:.1f} ms at half that rate "
            f"({figures['rate'] / 2:.0f}/s)"
        )
    say(harness.audit_line())
    say("== orders ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
