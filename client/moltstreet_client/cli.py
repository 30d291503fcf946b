"""The strategy commands: ``moltstreet-backtest`` (a strategy on recorded history, on this machine) and
``moltstreet-run`` (the same strategy live). DESIGN section 11.

::

    moltstreet-backtest my_bots:Leaner --url http://127.0.0.1:8000 --market <id> [--market <id> ...]
        [--start 2026-01-01T00:00Z] [--end ...] [--cash 1000] [--param edge=0.04 ...]
        [--executions out.csv | out.json] [--json] [--upload --key <api key>]
    moltstreet-run my_bots:Leaner --url http://127.0.0.1:8000 --key <api key> --market <id> [--param k=v ...]
        [--duration S] [--keep-orders] [--heartbeat S]

The strategy is ``module:Class`` (imported from the current directory or the Python path) or a built-in's name
(``market_maker``, ``momentum``, ``reference_leaner``, ``noise``). ``--url`` and ``--key`` default to the environment's
``MOLTSTREET_URL`` and ``MOLTSTREET_API_KEY``. Both also run as ``python -m moltstreet_client.cli backtest|run ...``.
Errors are printed on one line to stderr; the exit status is 1 for an error of the exchange, the network or the
strategy's parameters, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from moltstreet_client.backtest import DEFAULT_CASH, BacktestResult, MarketHistory, parse_time, run_backtest
from moltstreet_client.client import Client
from moltstreet_client.errors import MoltStreetError, TransportError
from moltstreet_client.strategy import Strategy, StrategyError, load_strategy

DEFAULT_URL = "http://127.0.0.1:8000"
EXECUTION_FIELDS = ("time", "market", "side", "action", "price", "size", "reason", "cash", "order")


class CommandError(Exception):
    """What a command prints before exiting with status 1."""


# --------------------------------------------------------------------------------------------------------------------
# Arguments


def _time_arg(value: str):
    try:
        return parse_time(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r} (e.g. 2026-01-31T12:00Z)") from None


def _param_arg(value: str) -> tuple[str, str]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"a parameter is name=value, not {value!r}")
    return key.strip(), raw.strip()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "strategy", help="module:Class of a Strategy subclass, or a built-in's name (market_maker, momentum, ...)."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("MOLTSTREET_URL") or DEFAULT_URL,
        help="The exchange's root URL (default: $MOLTSTREET_URL, else %(default)s).",
    )
    parser.add_argument(
        "--market",
        dest="markets",
        action="append",
        required=True,
        metavar="ID",
        help="A market's id; repeat for several (they share one cash balance).",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        type=_param_arg,
        metavar="NAME=VALUE",
        help="A strategy parameter (its units: the strategy's Param); repeat for several.",
    )


def backtest_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moltstreet-backtest",
        description="Backtest a strategy on markets' recorded history fetched from the exchange "
        "(GET /api/v1/markets/{id}/events/), print its metrics and optionally write its executions and upload "
        "the result (marked as reported by the agent).",
    )
    _common(parser)
    parser.add_argument("--start", type=_time_arg, help="Replay from this time (ISO 8601; default: the start).")
    parser.add_argument("--end", type=_time_arg, help="Replay until this time (ISO 8601; default: the last event).")
    parser.add_argument("--cash", default=str(DEFAULT_CASH), help="Starting credits (default %(default)s).")
    parser.add_argument("--executions", type=Path, metavar="FILE", help="Write every execution to FILE: .csv or .json.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON instead of a table.")
    parser.add_argument(
        "--upload",
        action="store_true",
        help="Store the result on the exchange (POST /api/v1/backtests/; a large one in parts).",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("MOLTSTREET_API_KEY") or None,
        help="The agent's API key, for --upload (default: $MOLTSTREET_API_KEY).",
    )
    return parser


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moltstreet-run",
        description="Run a strategy live on the exchange, as the agent whose key is given: the same class that "
        "moltstreet-backtest runs. Ctrl-C stops it; its resting orders are then cancelled.",
    )
    _common(parser)
    parser.add_argument(
        "--key",
        default=os.environ.get("MOLTSTREET_API_KEY") or None,
        help="The agent's API key (default: $MOLTSTREET_API_KEY).",
    )
    parser.add_argument("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
    parser.add_argument(
        "--keep-orders", action="store_true", help="Leave the strategy's resting orders in the book when it stops."
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        help="Arm the agent's dead-man's switch with this timeout (5-300) while it runs: if the runner dies or "
        "stalls that long, the server cancels its resting orders (default: off).",
    )
    return parser


def _strategy(spec: str, params: Sequence[tuple[str, str]]) -> Strategy:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # module:Class of the user's own directory, as `python -m` would find it
    cls = load_strategy(spec)
    return cls(**dict(params))


# --------------------------------------------------------------------------------------------------------------------
# moltstreet-backtest


def _percent(value: Any) -> str:
    return "-" if value is None else f"{Decimal(value) * 100:.2f}%"


def metrics_table(result: BacktestResult) -> str:
    """The metrics as a readable table (credits, percentages; ``-`` where undefined)."""
    m = result.metrics
    rows = [
        ("P&L", f"{m['pnl']:.2f} credits"),
        ("Return", _percent(m["return"])),
        ("Sharpe", "-" if m["sharpe"] is None else str(m["sharpe"])),
        ("Max drawdown", _percent(m["max_drawdown"])),
        ("Win rate", _percent(m["win_rate"])),
        ("Trades", str(m["trades"])),
        ("Brier", "-" if m["brier"] is None else str(m["brier"])),
    ]
    markets = ", ".join(result.markets)
    head = [
        f"Backtest of {result.strategy}{' v' + result.version if result.version else ''} on {markets}",
        f"{_iso(result.start)} to {_iso(result.end)}, starting with {result.cash} credits",
        "",
    ]
    width = max(len(name) for name, _ in rows)
    lines = head + [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(f"  {'Final equity':<{width}}  {result.final_equity:.2f} credits")
    if result.refusals:
        refused = ", ".join(f"{code} {count}" for code, count in sorted(result.refusals.items()))
        lines.append(f"  {'Refused':<{width}}  {refused}")
    return "\n".join(lines)


def _iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def write_executions(result: BacktestResult, path: Path) -> None:
    """``path`` ``.csv`` (a header, one row per execution) or ``.json`` (a list of ``Execution.as_dict()``)."""
    rows = [execution.as_dict() for execution in result.executions]
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(rows, indent=1) + "\n")
    elif suffix == ".csv":
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=EXECUTION_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise CommandError(f"--executions must end in .csv or .json, not {path.name!r}")


def backtest_command(args: argparse.Namespace) -> int:
    if args.upload and not args.key:
        raise CommandError("--upload needs the agent's API key: --key, or MOLTSTREET_API_KEY")
    if args.executions is not None and args.executions.suffix.lower() not in (".csv", ".json"):
        raise CommandError(f"--executions must end in .csv or .json, not {args.executions.name!r}")
    strategy = _strategy(args.strategy, args.params)
    with Client(args.url, api_key=args.key) as client:
        histories = [MarketHistory.fetch(client, market, end=args.end) for market in args.markets]
        result = run_backtest(strategy, histories, cash=args.cash, start=args.start, end=args.end)
        if args.executions is not None:
            write_executions(result, args.executions)
        uploaded = client.upload_backtest(result) if args.upload else None
    if args.json:
        data = result.as_dict(executions=False)
        if uploaded is not None:
            data["uploaded"] = uploaded
        print(json.dumps(data, indent=1))
        return 0
    print(metrics_table(result))
    if args.executions is not None:
        print(f"\n{len(result.executions)} executions written to {args.executions}")
    if uploaded is not None:
        backtest_id = uploaded.get("id")
        print(f"Uploaded as backtest {backtest_id}: {client.base_url}/backtests/{backtest_id}/")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# moltstreet-run


def run_command(args: argparse.Namespace) -> int:
    from moltstreet_client.runner import HEARTBEAT_MAX, HEARTBEAT_MIN, run_live

    if not args.key:
        raise CommandError("moltstreet-run needs the agent's API key: --key, or MOLTSTREET_API_KEY")
    if args.heartbeat is not None and not HEARTBEAT_MIN <= args.heartbeat <= HEARTBEAT_MAX:
        raise CommandError(f"--heartbeat must be from {HEARTBEAT_MIN} to {HEARTBEAT_MAX} seconds")
    strategy = _strategy(args.strategy, args.params)
    with Client(args.url, api_key=args.key) as client:
        agent = client.me()
        print(
            f"Running {strategy.label()} as {agent.name} in {len(args.markets)} market(s) at {client.base_url}; "
            "Ctrl-C stops it.",
            flush=True,
        )
        result = run_live(
            strategy,
            client,
            args.markets,
            duration=args.duration,
            cancel_on_exit=not args.keep_orders,
            report=lambda line: print(line, file=sys.stderr, flush=True),
            heartbeat_seconds=args.heartbeat,
        )
    print(f"Stopped: {result.summary()}")
    if result.withdrawn is False:
        print("The resting orders could not be cancelled: cancel them with POST /api/v1/orders/cancel-all/.")
        return 1
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Entry points


def _main(parser: argparse.ArgumentParser, command, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return command(args)
    except (CommandError, StrategyError, MoltStreetError, TransportError, ValueError, OSError) as exc:
        text = exc.message if isinstance(exc, (StrategyError,)) else str(exc)
        print(f"{parser.prog}: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def backtest_main(argv: Sequence[str] | None = None) -> int:
    """``moltstreet-backtest``: see the module's doc (``--help``)."""
    return _main(backtest_parser(), backtest_command, argv)


def run_main(argv: Sequence[str] | None = None) -> int:
    """``moltstreet-run``: see the module's doc (``--help``)."""
    return _main(run_parser(), run_command, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m moltstreet_client.cli backtest|run ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"backtest": backtest_main, "run": run_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m moltstreet_client.cli {backtest,run} ... (--help for each)", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
