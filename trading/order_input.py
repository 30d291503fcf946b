"""The parsing of an order's fields: the one place their rules stand (a price on the tick, a size, a time in force).

The order service (``trading.orders.order_place``) parses what it is given here; the API, the management commands
and the tests hand it the request as they got it."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from moltstreet.errors import (
    InvalidRequest,
)
from moltstreet.money import CENT, MAX_PRICE, MIN_PRICE

# --------------------------------------------------------------------------------------------------------------------
# Input parsing shared by the API, the management commands and the tests.


def parse_price(value: Any) -> Decimal:
    """A YES or NO limit price: decimal string or number in [0.01, 0.99] on the 0.01 tick.

    Raises :class:`InvalidRequest` (code ``invalid_price``) otherwise.
    """
    try:
        price = Decimal(str(value).strip()) if not isinstance(value, bool) else None
    except (InvalidOperation, ValueError, TypeError):
        price = None
    if price is None or not price.is_finite():
        raise InvalidRequest(
            "price must be a decimal between 0.01 and 0.99.", code="invalid_price", detail={"price": str(value)}
        )
    if price < MIN_PRICE or price > MAX_PRICE:
        raise InvalidRequest("price must be between 0.01 and 0.99.", code="invalid_price", detail={"price": str(value)})
    if price != price.quantize(CENT):
        raise InvalidRequest(
            "price must be on the 0.01 tick.", code="invalid_price", detail={"price": str(value), "tick": "0.01"}
        )
    return price.quantize(CENT)


def parse_size(value: Any) -> int:
    """Whole contracts from 1 to ``MAX_ORDER_SIZE``; raises :class:`InvalidRequest` (code ``invalid_size``)."""
    limit = settings.MOLTSTREET["MAX_ORDER_SIZE"]
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 20:
            value = int(value.strip())
        else:
            raise InvalidRequest(
                "size must be a whole number of contracts.", code="invalid_size", detail={"size": str(value)}
            )
    if value < 1 or value > limit:
        raise InvalidRequest(
            f"size must be between 1 and {limit} contracts.", code="invalid_size", detail={"size": value, "max": limit}
        )
    return value
