"""The market lifecycle's write services: expiring GTD orders and closing markets, one at a time and as the
scheduler's passes (resolving them is ``trading.resolution``). Each is one transaction on one locked market."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from django.db import DatabaseError
from django.utils import timezone

from markets.models import Market, MarketEvent
from markets.services import (
    market_payload,
)
from moltstreet.db import (
    service_transaction,
)
from moltstreet.errors import (
    MarketAlreadyResolved,
    MoltStreetError,
)
from trading import book_store
from trading.market_tx import MarketTx
from trading.models import Order

logger = logging.getLogger(__name__)

RESTING = Order.RESTING

# --------------------------------------------------------------------------------------------------------------------
# Lifecycle: expiry, close, resolve.


def end_all_resting(tx: MarketTx, status: str, reason: str, extra_agents=()) -> None:
    """Take every resting order of the locked market out of the book (closing, resolving), locking their agents and
    ``extra_agents`` (ascending) and netting what the released reserves free up."""
    orders = book_store.resting_orders(tx.market.id)
    tx.prepare({o.agent_id for o in orders} | set(extra_agents))
    for order in orders:
        tx.end_order(order, status, reason, "cancelled")
    for agent_id in {o.agent_id for o in orders}:
        tx.net(agent_id)


@service_transaction
def orders_expire(*, market_id: uuid.UUID | str, now: datetime | None = None) -> int:
    """Expire the market's GTD orders whose ``expires_at`` has passed; returns how many."""
    now = now or timezone.now()
    market = book_store.lock_market(market_id)
    orders = book_store.resting_orders(market.id, expired_by=now)
    if not orders:
        return 0
    tx = MarketTx(market)
    tx.prepare({o.agent_id for o in orders})
    for order in orders:
        tx.end_order(order, Order.Status.EXPIRED, Order.CancelReason.EXPIRED, "expired")
    for agent_id in tx.agents:
        tx.net(agent_id)
    tx.flush()
    return len(orders)


@service_transaction
def market_close(*, market_id: uuid.UUID | str) -> Market:
    """Close a market: no new orders; every resting order is cancelled and its reserve released.

    Closing a closed market changes nothing. Raises :class:`MarketAlreadyResolved` for a resolved market.
    """
    market = book_store.lock_market(market_id)
    if market.status == Market.Status.RESOLVED:
        raise MarketAlreadyResolved(detail={"market": str(market.id)})
    if market.status == Market.Status.CLOSED:
        return market
    tx = MarketTx(market)
    end_all_resting(tx, Order.Status.CANCELLED, Order.CancelReason.MARKET_CLOSED)
    market.status, market.closed_at = Market.Status.CLOSED, timezone.now()
    tx.market_fields.update({"status", "closed_at"})
    tx.log.add(MarketEvent.Kind.MARKET, {"event": "closed", "market": market_payload(market)})
    tx.flush()
    return market


def markets_close_due(now: datetime | None = None) -> list[Market]:
    """Close every open market whose deadline has passed (the scheduler calls this).

    One transaction per market; a market that fails (e.g. a lock timeout) is logged and left for the next pass, so it
    cannot hold up the others.
    """
    now = now or timezone.now()
    due = Market.objects.filter(status=Market.Status.OPEN, deadline__lte=now).values_list("id", flat=True)
    closed = []
    for mid in list(due):
        try:
            closed.append(market_close(market_id=mid))
        except (MoltStreetError, DatabaseError):
            logger.exception("closing market %s failed; retrying on the next pass", mid)
    return closed


def orders_expire_due(now: datetime | None = None) -> int:
    """Expire every GTD order past its ``expires_at``, one transaction per market (the scheduler calls this).

    A market that fails is logged and left for the next pass. Returns how many orders expired.
    """
    now = now or timezone.now()
    markets = Order.objects.filter(status__in=RESTING, expires_at__lte=now).values_list("market_id", flat=True)
    expired = 0
    for mid in list(markets.distinct()):
        try:
            expired += orders_expire(market_id=mid, now=now)
        except (MoltStreetError, DatabaseError):
            logger.exception("expiring orders in market %s failed; retrying on the next pass", mid)
    return expired
