"""The one market shape: every public field of a market and how it renders, written once.

Each client-facing view of a market is a named subset of :data:`MARKET_FIELDS`, rendered by :func:`market_view`:

- :data:`API`: the REST API's market (``markets.api.MarketSerializer``), every field;
- :data:`FEED`: the live feed's ``market`` object (``trading.realtime``, docs/realtime.md);
- :data:`PAGE`: the state the market page's script starts from (``trading.views.market_detail``);
- :data:`RECORDED`: what a ``market`` event stores with it (:func:`market_payload`), read back by
  :func:`recorded_view`.

Values are JSON-ready: ids and prices as strings, times in the REST API's ISO 8601 format (UTC, ``Z``), counts as
integers, null where unset. A price renders as the database holds it (``"0.55"``; ``reference_price`` with four
places, ``"0.5500"``), which is how DRF's ``DecimalField`` renders it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from markets.models import Market
from markets.selectors import current_resolution
from moltstreet.money import complement

_TIME = serializers.DateTimeField(read_only=True)  # the REST API's time format, so a time reads the same everywhere


def render_time(value: datetime | str | None) -> str | None:
    """A time (or a stored ISO 8601 string) as the REST API renders it: ISO 8601 in UTC with ``Z``; None stays None."""
    if isinstance(value, str):
        value = parse_datetime(value)
    return _TIME.to_representation(value) if value is not None else None


def render_decimal(value: Decimal | str | None) -> str | None:
    """A price or probability as a decimal string (``"0.55"``); None stays None."""
    return str(value) if value is not None else None


def render_no_price(yes_price: Decimal | str | None) -> str | None:
    """The NO price of a YES price (``1 - p``) as a decimal string; None stays None."""
    return str(complement(Decimal(str(yes_price)))) if yes_price is not None else None


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None  # a TextChoices member renders as its value


def _creator_name(market: Market) -> str | None:
    creator = market.creator  # None without a query when there is no creator
    return creator.name if creator is not None else None


def _resolution(market: Market) -> dict[str, Any] | None:
    resolution = current_resolution(market)
    return resolution.public() if resolution is not None else None


# Every public field of a market, in the REST API's order, with how it renders. ``resolution`` and ``creator`` read
# related rows: select them with the market (``with_current_resolution``, ``select_related("creator")``) for lists.
MARKET_FIELDS: dict[str, Callable[[Market], Any]] = {
    "id": lambda m: str(m.id),
    "question": lambda m: m.question,
    "description": lambda m: m.description,
    "resolution_criteria": lambda m: m.resolution_criteria,
    "category": lambda m: m.category,
    "deadline": lambda m: render_time(m.deadline),
    "status": lambda m: _text(m.status),
    "outcome": lambda m: _text(m.outcome),
    "resolution": _resolution,
    "yes_price": lambda m: render_decimal(m.last_price),
    "no_price": lambda m: render_no_price(m.last_price),
    "best_bid": lambda m: render_decimal(m.best_bid),
    "best_ask": lambda m: render_decimal(m.best_ask),
    "volume": lambda m: m.volume,
    "seq": lambda m: m.seq,
    "creator": _creator_name,
    "created_at": lambda m: render_time(m.created_at),
    "closed_at": lambda m: render_time(m.closed_at),
    "resolved_at": lambda m: render_time(m.resolved_at),
    "source": lambda m: m.source,
    "external_id": lambda m: m.external_id,
    "source_url": lambda m: m.source_url,
    "attribution": lambda m: m.attribution,
    "is_historical": lambda m: bool(m.is_historical),
    "reference_price": lambda m: render_decimal(m.reference_price),
    "reference_updated_at": lambda m: render_time(m.reference_updated_at),
    "manual_resolution": lambda m: bool(m.manual_resolution),
}

API: tuple[str, ...] = tuple(MARKET_FIELDS)
FEED: tuple[str, ...] = (
    "id",
    "question",
    "status",
    "outcome",
    "yes_price",
    "no_price",
    "best_bid",
    "best_ask",
    "volume",
    "deadline",
    "reference_price",
)
PAGE: tuple[str, ...] = ("id", "status", "outcome", "yes_price", "volume")
RECORDED: tuple[str, ...] = ("id", "status", "outcome", "yes_price", "volume", "deadline")


def market_view(market: Market, fields: Iterable[str] = API) -> dict[str, Any]:
    """``market`` as its public fields ``fields`` (names of :data:`MARKET_FIELDS`, in the order given), JSON-ready.

    Raises ``KeyError`` for a name that is not a market field."""
    return {name: MARKET_FIELDS[name](market) for name in fields}


def market_payload(market: Market) -> dict[str, Any]:
    """The market state a ``market`` event stores (``MarketEvent.data["market"]``): the :data:`RECORDED` fields as
    ``{id, status, outcome, last_price, volume, deadline}``.

    The stored format predates this module and every stored event has it, so it stays: ``yes_price`` is stored as
    ``last_price`` and ``deadline`` as ``datetime.isoformat()`` with the deadline's own offset (``+00:00``, not
    ``Z``). :func:`recorded_view` reads it back."""
    view = market_view(market, RECORDED)
    return {
        "id": view["id"],
        "status": view["status"],
        "outcome": view["outcome"],
        "last_price": view["yes_price"],
        "volume": view["volume"],
        "deadline": market.deadline.isoformat(),
    }


def recorded_view(recorded: dict[str, Any]) -> dict[str, Any]:
    """A stored :func:`market_payload` read back as public fields, rendered as :func:`market_view` renders them:
    ``{id, status, outcome, yes_price, no_price, volume, deadline}``. A missing key reads as None (``id`` is then
    left out, for the caller to fill from the market row)."""
    view = {"id": recorded["id"]} if "id" in recorded else {}
    last_price = recorded.get("last_price")
    view.update(
        status=recorded.get("status"),
        outcome=recorded.get("outcome"),
        yes_price=render_decimal(last_price),
        no_price=render_no_price(last_price),
        volume=recorded.get("volume"),
        deadline=render_time(recorded.get("deadline")),
    )
    return view
