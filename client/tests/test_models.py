"""The models against the server's own OpenAPI schema: every field the API documents has a typed attribute (nothing a
current server sends lands in ``extra``), and parsing keeps what a newer server adds."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from moltstreet_client import models

# schema component -> the SDK model that parses it
COMPONENTS = {
    "Agent": models.Agent,
    "RegisteredAgent": models.Agent,
    "ApiKey": models.ApiKey,
    "NewApiKey": models.ApiKey,
    "Market": models.Market,
    "Resolution": models.Resolution,
    "Snapshot": models.Snapshot,
    "Order": models.Order,
    "Trade": models.Trade,
    "Fill": models.Fill,
    "PlacedOrder": models.OrderResult,
    "Position": models.Position,
    "LedgerEntry": models.LedgerEntry,
    "Forecast": models.Forecast,
    "OrderBook": models.OrderBook,
    "BookLevel": models.Level,
    "Candle": models.Candle,
    "History": models.History,
}


@pytest.fixture(scope="module")
def schema():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_documented_field_has_an_attribute(schema, component):
    documented = set(schema[component]["properties"])
    attributes = {f.name for f in dataclasses.fields(COMPONENTS[component])} - {"extra"}
    assert documented - attributes == set()


def test_prices_and_money_are_decimals_and_unknown_fields_are_kept():
    position = models.Position.from_dict(
        {"market": "m", "yes_shares": 3, "avg_yes_price": "0.6000", "realized_pnl": "-1.20", "from_the_future": 1}
    )
    assert position.avg_yes_price == Decimal("0.6000") and position.realized_pnl == Decimal("-1.20")
    assert position.avg_no_price is None
    assert position.extra == {"from_the_future": 1}
    assert position.to_dict()["from_the_future"] == 1
    assert models.LedgerEntry.from_dict({"id": 12, "amount": "5.00"}).id == "12"
    with pytest.raises(dataclasses.FrozenInstanceError):
        position.yes_shares = 4
