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
    "BatchPlaced": models.BatchOrderResult,
    "BatchCancelled": models.BatchCancelResult,
    "AmendedOrder": models.AmendResult,
    "Preview": models.OrderPreview,
    "PreviewFill": models.PreviewFill,
    "PreviewReserve": models.PreviewReserve,
    "PreviewPosition": models.Position,
    "Heartbeat": models.Heartbeat,
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


ORDER = {
    "id": "5c4b3a29-1807-4f6e-9d5c-4b3a2918f7e6",
    "market": "7b0c3c1e-8f2a-4b5e-9d3c-2a1f0e9d8c7b",
    "side": "YES",
    "action": "BUY",
    "price": "0.40",
    "size": 10,
    "filled": 4,
    "status": "cancelled",
    "cancel_reason": "amended",
    "replaced_by": "0e1d2c3b-4a59-4687-9766-554433221100",
}
TRADE = {"id": "t1", "market": ORDER["market"], "seq": 7, "price": "0.45", "size": 2, "taker_side": "YES"}


def test_a_batch_entry_carries_its_error_as_the_sdks_exception_and_says_whether_it_is_ok():
    from moltstreet_client import InsufficientBalance, NotFound, OrderNotCancellable

    error = {"code": "insufficient_balance", "message": "too poor", "detail": {"available": "1.00"}}
    refused = models.BatchOrderResult.from_dict({"status": 400, "order": None, "trades": [], "error": error})
    assert isinstance(refused.error, InsufficientBalance) and not refused.ok
    assert (refused.error.status, refused.error.message, refused.error.detail) == (400, "too poor", error["detail"])
    assert refused.to_dict()["error"] == error, "rendered as the API's error object"
    assert models.BatchOrderResult.from_dict(refused.to_dict()).error.code == "insufficient_balance"

    placed = models.BatchOrderResult.from_dict({"status": 201, "order": ORDER, "trades": [TRADE], "error": None})
    assert placed.ok and placed.created and placed.error is None
    assert placed.order.replaced_by == ORDER["replaced_by"] and placed.trades[0].price == Decimal("0.45")
    repeat = models.BatchOrderResult.from_dict({"status": 200, "order": ORDER, "trades": [], "error": None})
    assert repeat.ok and not repeat.created

    missing = {"code": "not_found", "message": "No such order.", "detail": {}}
    assert isinstance(
        models.BatchCancelResult.from_dict({"status": 404, "order": None, "error": missing}).error, NotFound
    )
    gone = {"code": "order_not_cancellable", "message": "m", "detail": {"status": "filled"}}
    entry = models.BatchCancelResult.from_dict({"status": 409, "order": None, "error": gone})
    assert isinstance(entry.error, OrderNotCancellable) and entry.error.detail["status"] == "filled" and not entry.ok
    assert models.BatchCancelResult.from_dict({"status": 200, "order": ORDER, "error": None}).ok


def test_an_amend_answer_has_the_order_its_replaced_original_and_the_trades():
    new = {**ORDER, "id": ORDER["replaced_by"], "price": "0.45", "size": 6, "filled": 0, "status": "open"}
    new.update(cancel_reason="", replaced_by=None)
    amended = models.AmendResult.from_dict({"order": new, "replaced": ORDER, "trades": [TRADE]})
    assert (amended.order.id, amended.order.remaining, amended.order.replaced_by) == (ORDER["replaced_by"], 6, None)
    assert (amended.replaced.cancel_reason, amended.replaced.replaced_by) == ("amended", new["id"])
    assert [t.size for t in amended.trades] == [2]
    in_place = models.AmendResult.from_dict({"order": new, "replaced": None, "trades": []})
    assert in_place.replaced is None


def test_a_preview_parses_its_fills_reserve_balances_and_position_or_its_error():
    from moltstreet_client import PostOnlyWouldCross

    preview = models.OrderPreview.from_dict(
        {
            "dry_run": True,
            "status": 201,
            "error": None,
            "order": {**ORDER, "id": None, "status": "partial", "cancel_reason": "", "replaced_by": None},
            "fills": [{"price": "0.45", "fill_price": "0.45", "size": 4, "taker_side": "YES"}],
            "self_trade_cancels": ["a1"],
            "reserve": {"credits": "2.40", "contracts": 0},
            "balance": "998.20",
            "locked_balance": "2.40",
            "available_balance": "995.80",
            "position": {"market": ORDER["market"], "yes_shares": 4, "avg_yes_price": "0.4500", "realized_pnl": "0.00"},
        }
    )
    assert preview.ok and preview.dry_run and preview.order.id is None
    assert preview.fills == [
        models.PreviewFill(price=Decimal("0.45"), fill_price=Decimal("0.45"), size=4, taker_side="YES")
    ]
    assert preview.reserve == models.PreviewReserve(credits=Decimal("2.40"), contracts=0)
    assert (preview.balance, preview.locked_balance, preview.available_balance) == (
        Decimal("998.20"),
        Decimal("2.40"),
        Decimal("995.80"),
    )
    assert (preview.position.yes_shares, preview.position.avg_yes_price) == (4, Decimal("0.4500"))
    assert preview.self_trade_cancels == ["a1"]

    error = {"code": "post_only_would_cross", "message": "m", "detail": {}}
    refused = models.OrderPreview.from_dict(
        {"dry_run": True, "status": 409, "error": error, "order": None, "fills": [], "reserve": None, "balance": None}
    )
    assert isinstance(refused.error, PostOnlyWouldCross) and refused.error.status == 409 and not refused.ok
    assert (refused.order, refused.reserve, refused.balance, refused.position) == (None, None, None, None)


def test_a_heartbeat_answer_parses_its_deadline():
    armed = models.Heartbeat.from_dict(
        {"armed": True, "timeout_seconds": 30, "deadline": "2026-01-01T00:00:30.000000Z", "cancelled": 0}
    )
    assert armed.armed and armed.timeout_seconds == 30 and armed.deadline.tzinfo is not None
    disarmed = models.Heartbeat.from_dict({"armed": False, "timeout_seconds": None, "deadline": None, "cancelled": 2})
    assert (disarmed.armed, disarmed.timeout_seconds, disarmed.deadline, disarmed.cancelled) == (False, None, None, 2)
