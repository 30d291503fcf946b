"""``python manage.py resolve_market <market-id> YES|NO|VOID [--operator NAME]``: resolve a market from the shell
(DESIGN section 7), as an operator: final at once, the resolver recorded on the resolution."""

from __future__ import annotations

import getpass
import uuid

from django.core.management.base import BaseCommand, CommandError, CommandParser

from markets.models import Outcome, Resolver
from markets.selectors import market_payout_summary
from moltstreet.errors import MoltStreetError
from trading.resolution import market_resolve


class Command(BaseCommand):
    help = (
        "Resolve a market YES, NO or VOID: cancel its resting orders, pay the winning contracts (VOID: 0.50 per "
        "contract) and update reputations. An operator's resolution: final at once, settling a pending oracle "
        "proposal (confirmed if the outcome agrees, overturned if not). The resolver recorded is --operator, "
        "default the shell user. Exits 1 with the error code if the service refuses (e.g. already resolved)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # argparse rejects a malformed id or outcome with exit status 2 before anything touches the database.
        parser.add_argument("market_id", type=uuid.UUID, help="The market's id (a UUID).")
        parser.add_argument("outcome", type=str.upper, choices=Outcome.values, help="YES, NO or VOID.")
        parser.add_argument(
            "--operator", default=None, help="Who resolves, as recorded and shown (default: the shell user)."
        )

    def handle(self, *args, market_id: uuid.UUID, outcome: str, operator: str | None, **options) -> None:
        name = operator or f"{getpass.getuser()} (shell)"
        try:
            market = market_resolve(market_id=market_id, outcome=outcome, resolver=Resolver.operator(None, name))
        except MoltStreetError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        summary = market_payout_summary(market.id)
        self.stdout.write(
            self.style.SUCCESS(f"Resolved {market.outcome}: {market.question} ({market.id})")
            + f"\nholders paid: {summary.agents_paid}\ntotal paid: {summary.total_paid} credits"
        )
