"""``python manage.py replay_trades <csv> [--scale S] [--url http://host:port] [--limit N]``."""

import time
from collections.abc import Mapping

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trading import replay
from trading.audit import run_audit


class Command(BaseCommand):
    help = (
        "Replay real Polymarket executions (CSV of ylcoder/random-walk, newest first) oldest first through the "
        "exchange's services: one agent per real trader (pm-<user_id>), one market per question (imported, open for "
        "--market-days days), and each execution as a resting order of the liquidity agent pm-liquidity crossed by "
        "the trader's IOC order at the real price on the 0.01 tick (clamped to 0.01-0.99), for "
        "max(1, round(shares x scale)) contracts. Sells of contracts the trader does not hold become the equivalent "
        "buy of the other side; buys beyond the trader's balance are trimmed. Re-running skips replayed rows. "
        "Prints per market the trades, the volume and our last price next to the real one, then the audit. "
        "With --url, replays through a running server's API instead (its markets must exist: run the local replay "
        "or `manage.py bootstrap` on the server first, or `replay_trades <csv> --markets-only`)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csv", help="Trades CSV, e.g. ../shared/data/polymarket/fed-march-2026-trades.csv")
        parser.add_argument(
            "--scale",
            type=replay.parse_scale,
            default=replay.DEFAULT_SCALE,
            help=f"Contracts per real share (default {replay.DEFAULT_SCALE}).",
        )
        parser.add_argument("--limit", type=int, help="Replay only the N oldest rows.")
        parser.add_argument("--url", help="Base URL of a running server, e.g. http://127.0.0.1:8000.")
        parser.add_argument(
            "--prefix",
            help="Agent name prefix (default pm- locally, a fresh pmXXXX- over --url so earlier runs do not collide).",
        )
        parser.add_argument(
            "--market-days",
            type=int,
            default=replay.DEFAULT_MARKET_DAYS,
            help="Days until the deadline of markets the replay creates (default %(default)s).",
        )
        parser.add_argument(
            "--markets-only", action="store_true", help="Only create the markets (locally), replay nothing."
        )

    def handle(self, *args, **options) -> None:
        started = time.monotonic()
        try:
            rows, malformed = replay.read_trades(options["csv"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        limit = options["limit"]
        if limit is not None and limit < 0:
            raise CommandError("--limit must not be negative.")
        if not 1 <= options["market_days"] <= 3650:
            raise CommandError("--market-days must be between 1 and 3650.")
        scale, url = options["scale"], options["url"]
        self.stdout.write(f"{len(rows)} valid rows, {len(malformed)} malformed, in {options['csv']}")
        exchange: replay.Exchange
        market_ids: Mapping[str, str | None]
        if url:
            if options["markets_only"]:
                raise CommandError("--markets-only creates markets locally; it cannot be combined with --url.")
            prefix = options["prefix"] or replay.default_http_prefix()
            exchange = http_exchange = replay.HttpExchange(url)
            try:
                market_ids = replay.find_markets_http(http_exchange, rows)
            except (replay.ApiError, replay.ReplayStop) as exc:
                raise CommandError(f"cannot list the markets of {url}: {exc}") from exc
            missing = [q for q, market_id in market_ids.items() if market_id is None]
            if missing:
                raise CommandError(
                    f"{url} has no market for {len(missing)} question(s), e.g. {missing[0]!r}. Creating markets over "
                    "the API costs a fee and needs an agent: on the server, run `python manage.py replay_trades "
                    f"{options['csv']} --markets-only` (or `python manage.py bootstrap`) first."
                )
            self.stdout.write(f"Replaying through {url} with agents named {prefix}<user_id>")
        else:
            prefix = options["prefix"] or replay.LOCAL_PREFIX
            market_ids, created = replay.ensure_markets_local(rows, scale=scale, days=options["market_days"])
            self.stdout.write(f"{len(market_ids)} markets ({created} created)")
            if options["markets_only"]:
                return
            exchange = replay.LocalExchange()
        report = replay.replay(
            rows,
            exchange,
            market_ids=market_ids,
            scale=scale,
            prefix=prefix,
            limit=limit,
            progress=self.stderr.write,
        )
        report.malformed = malformed
        self.stdout.write(report.render())
        self.stdout.write(
            f"Replay done in {time.monotonic() - started:.0f} s: {report.replayed:,} of {report.rows:,} rows "
            f"replayed, {report.already:,} already, {len(report.failed):,} failed."
        )
        if url:
            return
        audit = run_audit(progress=self.stderr.write)
        self.stdout.write(audit.render())
        if not audit.ok:
            raise CommandError(f"audit found {len(audit.breaches)} breach(es)")
        self.stdout.write(self.style.SUCCESS("audit clean"))
