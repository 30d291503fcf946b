"""``python manage.py soak [--agents 50] [--minutes 5 | --seconds S] [--markets 20] [--url URL] [--servers N]
[--seed N]``: many agents trading through the HTTP API while markets close and resolve, then the audit.

Without ``--url`` it starts ``--servers`` daphne processes of its own on the database and Redis of its settings
(``DATABASE_URL``/``REDIS_URL``), rate limits raised; with ``--url`` it soaks that server (429s honoured and counted).
Agents register as ``soak-<run>-<n>`` and create the markets themselves (paying the fee); an operator thread closes
and resolves them through the services while the agents place, cross, repeat and cancel orders, read, and send bad
requests. Every ~10 s a progress line; at the end the figures (requests and requests per second, orders accepted,
trades and contracts, cancels, markets created, closed and resolved, every non-2xx by status and ``error.code``,
transport errors, p50/p99 latency per request type in milliseconds), the audit of DESIGN section 5 and a per-agent
ledger check. What it proves: under concurrent load through the real stack no request fails with a 5xx or goes
unanswered, every refusal is a well-formed 4xx, and the money, the books and the sequences still add up.

Exit status 1 on an audit breach, a ledger mismatch, any 5xx or unanswered request, a bad request accepted, or a
client-side check that did not hold (``trading/soak.py`` has the details).
"""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from moltstreet.serving import ServerError
from trading.soak import SoakAbort, SoakConfig, run_soak


class Command(BaseCommand):
    help = (
        "Soak the exchange: --agents agents (default 50) trade through the HTTP API for --minutes (default 5) or "
        "--seconds across --markets markets (default 20) that close and resolve meanwhile, then the audit runs. "
        "Starts its own daphne server(s) on this database and Redis unless --url names a running one. Prints "
        "requests/s, orders, trades, cancels, markets closed and resolved, errors by code, latency p50/p99 and the "
        "audit; exits 1 if the audit is not clean, any 5xx happened, or a client check failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agents", type=int, default=50, help="Concurrent agents (default %(default)s).")
        length = parser.add_mutually_exclusive_group()
        length.add_argument("--minutes", type=float, help="Minutes of trading (default 5).")
        length.add_argument("--seconds", type=float, help="Seconds of trading, for short runs.")
        parser.add_argument("--markets", type=int, default=20, help="Markets created at the start (default 20).")
        parser.add_argument("--url", help="Soak an already running server, e.g. http://127.0.0.1:8000.")
        parser.add_argument(
            "--servers",
            "--workers",
            dest="servers",
            type=int,
            default=1,
            help="Daphne processes to start without --url, agents spread over them (default %(default)s).",
        )
        parser.add_argument("--seed", type=int, help="Seed of the agents' choices (default: random, printed).")
        parser.add_argument(
            "--think", type=float, default=0.0, help="Mean pause between one agent's requests, seconds (default 0)."
        )
        parser.add_argument(
            "--timeout", type=float, default=30.0, help="Seconds one request may take (default %(default)s)."
        )
        parser.add_argument(
            "--oracle-key",
            help="With --url on another database: API key of an oracle agent there, to resolve markets through the API.",
        )

    def handle(self, *args, **options) -> None:
        if options["seconds"] is not None:
            duration = options["seconds"]
        else:
            duration = 60 * (options["minutes"] if options["minutes"] is not None else 5)
        if options["oracle_key"] and not options["url"]:
            raise CommandError("--oracle-key only applies with --url.")
        if options["timeout"] <= 0 or options["think"] < 0:
            raise CommandError("--timeout must be positive and --think not negative.")
        config = SoakConfig(
            agents=options["agents"],
            duration=duration,
            markets=options["markets"],
            url=options["url"],
            servers=options["servers"],
            seed=options["seed"],
            think=options["think"],
            timeout=options["timeout"],
            oracle_key=options["oracle_key"],
        )
        try:
            result = run_soak(config, self.stdout.write)
        except (ValueError, SoakAbort, ServerError) as exc:
            raise CommandError(str(exc)) from exc
        if not result.ok:
            raise CommandError("soak failed: " + "; ".join(result.failures))
        self.stdout.write(self.style.SUCCESS("soak passed"))
