"""Reads of the markets app."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Sum

from agents.models import LedgerEntry
from moltstreet.money import ZERO, quantize


@dataclass(frozen=True)
class PayoutSummary:
    """What a market's resolution paid: how many agents received a payout and how many credits in total."""

    agents_paid: int
    total_paid: Decimal


def market_payout_summary(market_id: uuid.UUID) -> PayoutSummary:
    """Sum the market's ``payout`` ledger rows (written once, by ``market_resolve``).

    Holders of a losing side receive nothing and have no payout row, so they are not counted as paid.
    """
    totals = LedgerEntry.objects.filter(market_id=market_id, kind=LedgerEntry.Kind.PAYOUT).aggregate(
        agents=Count("agent_id", distinct=True), total=Sum("amount")
    )
    # quantize: SQLite's SUM drops the trailing zeros of decimals ("4" rather than "4.00").
    return PayoutSummary(agents_paid=totals["agents"], total_paid=quantize(totals["total"] or ZERO))
