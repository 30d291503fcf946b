"""Framework entry points: each override of Django's or channels' own entry point against the stock one, served by
the real server (daphne) in one run (bench/README.md, docs/performance.md "Framework entry points").

Two servers run side by side on the same database, one per variant (bench/variant_asgi.py), and the load takes
turns between them, A B then B A each round, so both see the same machine state; the ratios of one round are the
firm figures on a shared machine, the spread over rounds says how firm.

* ``--what asgi``: ``BENCH_ASGI=stock`` (``get_asgi_application()``) against ``sync-chain`` (the middleware chain
  built synchronous and entered once). Per variant and round: crossing 1-contract orders on one market from 16
  agents, closed loop (each agent's next order as soon as the last is answered) for ``--duration`` s: orders/s
  and the server's CPU per order; the same with ``GET /api/v1/markets/{id}/`` (a cheap read, where the
  framework's share is largest); then open loop at ``--rate`` orders/s: p50 and p99 from the due time, and the
  server's CPU per order.
* ``--what dispatch``: ``BENCH_DISPATCH=channels`` (channels' ``AsyncConsumer.dispatch``) against ``skip-close``
  (without its ``aclose_old_connections()`` hop per message). Per variant and round, one bench/fanout.py run:
  ``--spectators`` websocket spectators of one market while ``--trades-per-second`` trades are committed by a
  process of their own for ``--duration`` s: delivery latency p50/p99, messages lost, messages/s delivered and
  the server's CPU per delivered message.

    .venv/bin/python bench/entry_points.py                                  # both, 3 rounds (about 8 minutes)
    .venv/bin/python bench/entry_points.py --what asgi --rounds 2 --duration 10
    .venv/bin/python bench/entry_points.py --what dispatch --spectators 200 --duration 10
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from typing import Any

import harness
from fanout import AGENTS, WEBSOCKET_LIMITS, process_cpu, run_once, settle
from harness import Call, median, order_body, say

ASGI_VARIANTS = ("stock", "sync-chain")
DISPATCH_VARIANTS = ("channels", "skip-close")


def measure_asgi(args, server, keys: list[str], market: str) -> dict[str, float]:
    """One round of the ASGI figures against one server."""
    pid = server.process.pid

    def order(i: int) -> Call:
        return Call(i % len(keys), "POST", "/api/v1/orders/", order_body(market, "YES" if i % 2 == 0 else "NO"))

    def read(i: int) -> Call:
        return Call(i % len(keys), "GET", f"/api/v1/markets/{market}/")

    figures: dict[str, float] = {}
    for name, call in (("order", order), ("read", read)):  # closed loop: as fast as the server answers
        settle(pid)
        cpu0 = process_cpu(pid)
        result = harness.closed_loop(server.url, keys, call, duration=args.duration)
        ok, bad = result.ok, result.errors
        figures[f"{name}s_per_s"] = ok / args.duration
        figures[f"cpu_ms_per_{name}"] = (process_cpu(pid) - cpu0) * 1000 / max(ok + bad, 1)
        figures[f"{name}_errors"] = bad
    settle(pid)
    cpu0 = process_cpu(pid)
    load = harness.open_loop(server.url, keys, order, rate=args.rate, duration=args.duration)
    figures["p50"] = load.pct(50)
    figures["p99"] = load.pct(99)
    figures["open_cpu_ms_per_order"] = (process_cpu(pid) - cpu0) * 1000 / max(load.answered, 1)
    figures["open_errors"] = load.errors
    return figures


ASGI_FIGURES = [
    ("orders_per_s", "orders/s closed loop", "{:.1f}"),
    ("cpu_ms_per_order", "server CPU ms/order (closed loop)", "{:.2f}"),
    ("reads_per_s", "GET market/s closed loop", "{:.1f}"),
    ("cpu_ms_per_read", "server CPU ms/GET", "{:.2f}"),
    ("p50", "p50 ms at the open-loop rate", "{:.1f}"),
    ("p99", "p99 ms at the open-loop rate", "{:.1f}"),
    ("open_cpu_ms_per_order", "server CPU ms/order (open loop)", "{:.2f}"),
]

DISPATCH_FIGURES = [
    ("p50", "delivery p50 ms", "{:.1f}"),
    ("p99", "delivery p99 ms", "{:.1f}"),
    ("messages_per_s", "messages/s delivered", "{:.0f}"),
    ("server_cpu", "server CPU % of a core", "{:.0f}"),
    ("cpu_us_per_message", "server CPU us/message", "{:.1f}"),
    ("lost", "lost", "{:.0f}"),
    ("trades_per_s", "trades/s committed", "{:.1f}"),
]


def report(title: str, variants: tuple[str, str], rounds: list[dict[str, dict[str, float]]], figures) -> None:
    """Per figure: each variant's median over the rounds and its range, and the ratio B/A per round."""
    a, b = variants
    say(f"== {title}: {b} against {a}, {len(rounds)} rounds ==")
    for key, label, fmt in figures:
        values = {v: [r[v][key] for r in rounds] for v in variants}
        ratios = [r[b][key] / r[a][key] if r[a][key] else float("nan") for r in rounds]
        spread = {v: f"{fmt.format(min(values[v]))}-{fmt.format(max(values[v]))}" for v in variants}
        say(
            f"{label}: {a} {fmt.format(median(values[a]))} ({spread[a]}), {b} {fmt.format(median(values[b]))} "
            f"({spread[b]}); {b}/{a} per round {', '.join(f'{x:.2f}' for x in ratios)}, median "
            f"{median(ratios):.2f}"
        )


def turns(number: int, variants: tuple[str, str]) -> tuple[str, str]:
    """A B in odd rounds, B A in even ones, so neither variant always goes first."""
    return variants if number % 2 else variants[::-1]


def run_asgi(args, agents, market: str) -> None:
    keys = [a.key for a in agents]
    rounds: list[dict[str, dict[str, float]]] = []
    with ExitStack() as stack:
        servers = {
            v: stack.enter_context(harness.running_server(app=harness.VARIANT_APP, BENCH_ASGI=v)) for v in ASGI_VARIANTS
        }
        for v, server in servers.items():  # a fresh server's first requests are slow (connections, caches)
            warm = harness.open_loop(
                server.url,
                keys,
                lambda i: Call(i % len(keys), "POST", "/api/v1/orders/", order_body(market, "YES" if i % 2 else "NO")),
                rate=25,
                duration=3,
            )
            say(f"[asgi {v}] warm-up: {warm.describe()}")
        for number in range(1, args.rounds + 1):
            row = {}
            for v in turns(number, ASGI_VARIANTS):
                row[v] = measure_asgi(args, servers[v], keys, market)
                say(
                    f"[asgi round {number} {v}] "
                    + ", ".join(f"{label} {fmt.format(row[v][key])}" for key, label, fmt in ASGI_FIGURES)
                    + f"; errors {row[v]['order_errors']:.0f}/{row[v]['read_errors']:.0f}/{row[v]['open_errors']:.0f}"
                )
            rounds.append(row)
    report(
        f"ASGI handler (16 agents, one market, {args.duration:g} s a load, open loop at {args.rate:g}/s)",
        ASGI_VARIANTS,
        rounds,
        ASGI_FIGURES,
    )


def run_dispatch(args, agents, market: str) -> None:
    keys = [a.key for a in agents]
    fan = argparse.Namespace(
        spectators=args.spectators,
        trades_per_second=args.trades_per_second,
        duration=args.duration,
        client_processes=args.client_processes,
        client="raw",
        connect_concurrency=16,
        connect_timeout=60.0,
        drain_timeout=args.drain_timeout,
        load="services",
        agent_ids=[str(a.id) for a in agents],
    )
    rounds: list[dict[str, dict[str, float]]] = []
    with ExitStack() as stack:
        servers = {
            v: stack.enter_context(
                harness.running_server(app=harness.VARIANT_APP, BENCH_DISPATCH=v, **WEBSOCKET_LIMITS)
            )
            for v in DISPATCH_VARIANTS
        }
        for v, server in servers.items():
            warm = harness.open_loop(
                server.url,
                keys,
                lambda i: Call(i % AGENTS, "POST", "/api/v1/orders/", order_body(market, "YES" if i % 2 else "NO")),
                rate=25,
                duration=3,
            )
            say(f"[dispatch {v}] warm-up, no spectators: {warm.describe()}")
        for number in range(1, args.rounds + 1):
            row: dict[str, dict[str, Any]] = {}
            for v in turns(number, DISPATCH_VARIANTS):
                say(f"[dispatch round {number} {v}]")
                figures = run_once(fan, servers[v], keys, market, number)
                busy = figures["server_cpu"] / 100 * figures["wall_s"]
                figures["cpu_us_per_message"] = busy * 1e6 / max(figures["messages_per_s"] * figures["wall_s"], 1)
                row[v] = figures
            rounds.append(row)
    report(
        f"live feed dispatch ({args.spectators} spectators, {args.trades_per_second:g} trades/s, {args.duration:g} s)",
        DISPATCH_VARIANTS,
        rounds,
        DISPATCH_FIGURES,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=["asgi", "dispatch", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; each measures both variants (A B, then B A).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per load (default 10).")
    parser.add_argument("--rate", type=float, default=20.0, help="Open-loop orders/s for the latency (default 20).")
    parser.add_argument("--spectators", type=int, default=200)
    parser.add_argument("--trades-per-second", type=float, default=50.0)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args()

    started = time.perf_counter()
    harness.setup()
    agents = harness.make_agents(AGENTS, "bench-entry")
    if args.what in ("asgi", "both"):
        run_asgi(args, agents, harness.make_markets(1, agents[0], "asgi")[0])
    if args.what in ("dispatch", "both"):
        run_dispatch(args, agents, harness.make_markets(1, agents[0], "dispatch")[0])
    say(harness.audit_line())
    say(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
