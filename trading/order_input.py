"""The parsing of an order's fields: the one place their rules stand (a price on the tick, a size, a time in force).

The order service (``trading.orders.order_place``) parses what it is given here; the API, the management commands
and the tests hand it the request as they got it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from markets.services import parse_probability
from moltstreet.errors import InvalidRequest
from moltstreet.money import CENT, MAX_PRICE, MIN_PRICE
from trading import matching
from trading.models import Action, Side, TimeInForce

# An agent's own id for an order (its idempotency key), unique per agent.
CLIENT_ORDER_ID_MAX = 64

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


@dataclass(frozen=True)
class OrderInput:
    """An order request, parsed: every field checked against its rule, nothing looked up yet.

    ``side`` and ``action`` are :class:`~trading.models.Side` and :class:`~trading.models.Action` values, ``price``
    the limit on the order's own side (credits per contract, 0.01-0.99 on the 0.01 tick), ``size`` whole contracts,
    ``forecast`` the agent's stated probability of YES (0-1, or ``None``). ``book_side``/``book_price`` are where the
    order rests in the YES-price book (:func:`trading.matching.book_position`).
    """

    side: str
    action: str
    price: Decimal
    size: int
    time_in_force: str
    expires_at: datetime | None
    post_only: bool
    client_order_id: str | None
    forecast: Decimal | None
    reasoning: str

    @property
    def book_position(self) -> tuple[str, Decimal]:
        return matching.book_position(self.side, self.action, self.price)

    @property
    def may_rest(self) -> bool:
        """GTC and GTD orders may rest in the book (and count towards the open-order limit); IOC and FOK never do."""
        return self.time_in_force in (TimeInForce.GTC, TimeInForce.GTD)


def parse_order(
    *,
    side: Any,
    action: Any,
    price: Any,
    size: Any,
    time_in_force: Any = TimeInForce.GTC,
    expires_at: datetime | None = None,
    post_only: bool = False,
    client_order_id: Any = None,
    forecast: Any = None,
    reasoning: str = "",
) -> OrderInput:
    """The :class:`OrderInput` of an order's fields as a client sent them. Whether a GTD order's ``expires_at`` is
    still in the future is the service's check (a repeated request may return an order whose expiry has passed).

    Raises :class:`InvalidRequest`: ``invalid_price`` (:func:`parse_price`), ``invalid_size`` (:func:`parse_size`),
    ``invalid_request`` for the other fields.
    """
    side, action = str(side).upper(), str(action).upper()
    tif = str(time_in_force or TimeInForce.GTC).upper()
    if side not in Side.values:
        raise InvalidRequest("side must be YES or NO.", detail={"side": side})
    if action not in Action.values:
        raise InvalidRequest("action must be BUY or SELL.", detail={"action": action})
    if tif not in TimeInForce.values:
        raise InvalidRequest("time_in_force must be GTC, GTD, IOC or FOK.", detail={"time_in_force": tif})
    price, size = parse_price(price), parse_size(size)
    if tif == TimeInForce.GTD and expires_at is None:
        raise InvalidRequest("A GTD order needs expires_at in the future.", detail={"expires_at": None})
    if tif != TimeInForce.GTD and expires_at is not None:
        raise InvalidRequest("expires_at is only allowed with time_in_force GTD.", detail={"time_in_force": tif})
    if post_only and tif in (TimeInForce.IOC, TimeInForce.FOK):
        raise InvalidRequest("post_only cannot be combined with IOC or FOK.", detail={"time_in_force": tif})
    if client_order_id is not None and (not str(client_order_id) or len(str(client_order_id)) > CLIENT_ORDER_ID_MAX):
        raise InvalidRequest(
            f"client_order_id must be 1-{CLIENT_ORDER_ID_MAX} characters.",
            detail={"client_order_id": client_order_id},
        )
    return OrderInput(
        side=side,
        action=action,
        price=price,
        size=size,
        time_in_force=tif,
        expires_at=expires_at,
        post_only=bool(post_only),
        client_order_id=client_order_id or None,
        forecast=parse_probability(forecast) if forecast is not None else None,
        reasoning=reasoning or "",
    )
