"""factory-boy factories of the markets app: markets (created or imported), forecasts, feeds and source snapshots.

Each goes through the service that makes the thing in production, so fees, ledger rows and the market's event
sequence stay exactly as there (DESIGN section 5): :class:`MarketFactory` calls ``market_create`` (the creator pays the
10.00 fee), :class:`ImportedMarketFactory` ``market_import`` (no creator, no fee), :class:`ForecastFactory`
``forecast_record`` and :class:`SnapshotFactory` ``snapshot_record``. Only :class:`FeedFactory` writes its row
directly: a feed is an operator's setting and moves nothing. ``build()`` is refused where a service makes the row.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import factory
from django.utils import timezone

from agents.tests.factories import AgentFactory
from markets.models import Feed, Forecast, Market, MarketSnapshot
from markets.services import forecast_record, market_create, market_import, snapshot_record


def days_ahead(days: float) -> Any:
    """A lazy deadline ``days`` from the moment the factory runs."""
    return factory.LazyFunction(lambda: timezone.now() + timedelta(days=days))


class _ServiceMade(factory.django.DjangoModelFactory):
    class Meta:
        abstract = True

    @classmethod
    def _build(cls, model_class: type, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"A {model_class.__name__} is only made through its service: use {cls.__name__}().")


class MarketFactory(_ServiceMade):
    """An open market made by ``market_create``: its ``creator`` (a fresh agent unless given) pays the 10.00 fee.

    ``MarketFactory(question=..., deadline=..., creator=..., description=..., category=..., resolution_criteria=...)``;
    the deadline defaults to seven days ahead. Raises what ``market_create`` raises (``InsufficientBalance``, …).
    """

    class Meta:
        model = Market

    creator = factory.SubFactory(AgentFactory)
    question = factory.Sequence(lambda n: f"Will test question {n} resolve YES?")
    deadline = days_ahead(7)
    description = ""
    category = ""
    resolution_criteria = ""

    @classmethod
    def _create(cls, model_class: type[Market], **fields: Any) -> Market:
        return market_create(**fields)


class ImportedMarketFactory(_ServiceMade):
    """An open market mirrored from a source by ``market_import``: no creator, no fee, one ``created`` event.

    ``source`` and ``external_id`` (unique together; a sequence by default) plus any other ``market_import`` argument
    (``reference_price``, ``source_url``, ``is_historical``, ``feed``, …). Raises what ``market_import`` raises.
    """

    class Meta:
        model = Market

    question = factory.Sequence(lambda n: f"Will imported question {n} resolve YES?")
    deadline = days_ahead(1)
    source = "kalshi"
    external_id = factory.Sequence(lambda n: f"KXTEST-{n}")

    @classmethod
    def _create(cls, model_class: type[Market], **fields: Any) -> Market:
        return market_import(**fields)


class ForecastFactory(_ServiceMade):
    """A stated forecast recorded by ``forecast_record``: ``agent`` (a fresh one unless given) says ``probability``
    (0-1; 0.5 by default) of YES in ``market`` (a fresh open market unless given). Raises what the service raises
    (``MarketClosed``, ``AgentSuspended``, ``InvalidRequest``)."""

    class Meta:
        model = Forecast

    agent = factory.SubFactory(AgentFactory)
    market = factory.SubFactory(MarketFactory)
    probability = Decimal("0.5")
    reasoning = ""

    @classmethod
    def _create(cls, model_class: type[Forecast], *, market: Market, **fields: Any) -> Forecast:
        return forecast_record(market_id=market.id, **fields)


class SnapshotFactory(_ServiceMade):
    """A source's view of ``market`` stored by ``snapshot_record`` (the market's next reference price and event).

    ``yes_price`` (0-1) and the other ``values`` (``yes_bid``, ``yes_ask``, ``volume``, ``status``) as keywords;
    ``taken_at`` defaults to now. Returns ``None``, as the service does, when the view is no news within the hour.
    """

    class Meta:
        model = MarketSnapshot

    market = factory.SubFactory(MarketFactory)
    source = "kalshi"
    taken_at = factory.LazyFunction(timezone.now)
    yes_price = Decimal("0.5000")
    yes_bid = None
    yes_ask = None
    volume = None
    status = "open"

    @classmethod
    def _create(
        cls, model_class: type[MarketSnapshot], *, market: Market, source: str, taken_at: Any, **values: Any
    ) -> MarketSnapshot | None:
        return snapshot_record(market_id=market.id, source=source, values=values, taken_at=taken_at)


class FeedFactory(factory.django.DjangoModelFactory):
    """An operator's feed of a source (Kalshi unless ``source`` says otherwise), as the admin or ``feed_add`` saves it:
    ``query``, ``status`` (``open`` or ``any``), ``max_markets``, ``interval_seconds``, ``is_active``."""

    class Meta:
        model = Feed

    source = "kalshi"
