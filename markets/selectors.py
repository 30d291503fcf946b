"""Reads of the markets app."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Prefetch, QuerySet, Sum

from agents.models import LedgerEntry
from markets.models import Market, Resolution
from moltstreet.money import ZERO, quantize


@dataclass(frozen=True)
class PayoutSummary:
    """What a market's resolution paid: how many agents received a payout and how many credits in total."""

    agents_paid: int
    total_paid: Decimal


def market_payout_summary(market_id: uuid.UUID) -> PayoutSummary:
    """Sum the market's ``payout`` ledger rows (written once, when its resolution became final).

    Holders of a losing side receive nothing and have no payout row, so they are not counted as paid.
    """
    totals = LedgerEntry.objects.filter(market_id=market_id, kind=LedgerEntry.Kind.PAYOUT).aggregate(
        agents=Count("agent_id", distinct=True), total=Sum("amount")
    )
    # quantize: SQLite's SUM drops the trailing zeros of decimals ("4" rather than "4.00").
    return PayoutSummary(agents_paid=totals["agents"], total_paid=quantize(totals["total"] or ZERO))


def with_current_resolution(queryset: QuerySet[Market]) -> QuerySet[Market]:
    """Prefetch each market's current resolution (:func:`current_resolution`) in one more query for the whole page,
    with its dispute count and deciding operator."""
    current = (
        Resolution.objects.exclude(status=Resolution.Status.OVERTURNED)
        .annotate(dispute_count=Count("disputes"))
        .select_related("decided_by", "resolver_agent")
        .order_by("-id")
    )
    return queryset.prefetch_related(Prefetch("resolutions", queryset=current, to_attr="current_resolutions"))


def current_resolution(market: Market) -> Resolution | None:
    """The market's final resolution once resolved, else its pending (proposed or disputed) one, else ``None``.

    Uses what :func:`with_current_resolution` prefetched, else one query."""
    found = getattr(market, "current_resolutions", None)
    if found is None:
        found = list(
            Resolution.objects.filter(market=market)
            .exclude(status=Resolution.Status.OVERTURNED)
            .annotate(dispute_count=Count("disputes"))
            .select_related("decided_by", "resolver_agent")
            .order_by("-id")
        )
    return found[0] if found else None
