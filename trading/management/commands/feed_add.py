"""``python manage.py feed_add SOURCE [--query TEXT] [--status open|any] [--max-markets N] [--interval SECONDS]``:
add a feed, as an operator does in the admin (DESIGN section 10)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from markets.models import Feed
from markets.sources import SOURCES


class Command(BaseCommand):
    help = (
        "Add a feed: the poller (manage.py run_poller) will import up to --max-markets of SOURCE's binary markets "
        "whose question contains --query, keep their prices as snapshots every --interval seconds, and close and "
        "resolve them as the source does."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", choices=SOURCES, help="kalshi, polymarket or manifold.")
        parser.add_argument("--query", default="", help="Words the question (or ticker) must contain (default: any).")
        parser.add_argument(
            "--status", choices=Feed.Listing.values, default=Feed.Listing.OPEN, help="open (default) or any."
        )
        parser.add_argument("--max-markets", type=int, default=20, help="Most markets to import (1-1000, default 20).")
        parser.add_argument("--interval", type=int, default=300, help="Seconds between passes (at least 10).")

    def handle(self, *args, source: str, query: str, status: str, max_markets: int, interval: int, **options) -> None:
        feed = Feed(
            source=source, query=query.strip(), status=status, max_markets=max_markets, interval_seconds=interval
        )
        try:
            feed.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        feed.save()
        self.stdout.write(
            self.style.SUCCESS(f"Added feed {feed.pk}: {feed}, every {interval} s.")
            + " manage.py run_poller (or --once) runs it."
        )
