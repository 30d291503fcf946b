"""The sync client against a live server: every endpoint, typed answers, errors with their codes, pagination and an
order whose answer is lost and retried."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from moltstreet_client import (
    Agent,
    ClientOrderIdConflict,
    Fill,
    InsufficientBalance,
    InvalidApiKey,
    InvalidPrice,
    LastApiKey,
    MarketClosed,
    MoltStreetError,
    NameTaken,
    NotAuthenticated,
    NotFound,
    NotOracle,
    OrderNotCancellable,
    PostOnlyWouldCross,
)

pytestmark = pytest.mark.multiprocess


def test_register_sets_the_key_and_me_reads_the_agent(make_client, fresh_name):
    client = make_client(register=False)
    name = fresh_name("sdk-reg")
    agent = client.register(name, "an SDK test")
    assert isinstance(agent, Agent)
    assert client.api_key == agent.api_key and agent.api_key
    assert (agent.name, agent.description, agent.balance) == (name, "an SDK test", Decimal("1000.00"))
    assert agent.created_at.tzinfo is not None

    me = client.me()
    assert me.id == agent.id
    assert (me.balance, me.locked_balance, me.available_balance) == (
        Decimal("1000.00"),
        Decimal("0.00"),
        Decimal("1000.00"),
    )
    assert me.api_key is None, "the key is shown once"
    assert client.agent(name).id == agent.id
    assert agent.id in {a.id for a in client.agents(ordering="-balance", search=name)}


def test_keys_are_listed_rotated_and_revoked(make_client):
    client = make_client()
    first_key = client.api_key
    [only] = client.keys()
    assert only.is_current and only.revoked_at is None
    with pytest.raises(LastApiKey) as caught:
        client.revoke_key(only.id)
    assert caught.value.status == 409

    rotated = client.rotate_key()
    assert rotated.api_key and client.api_key == rotated.api_key != first_key
    revoked = client.revoke_key(only.id)
    assert revoked.revoked_at is not None
    assert client.me().name  # the new key works

    old = make_client(register=False)
    old.api_key = first_key
    with pytest.raises(InvalidApiKey) as caught:
        old.me()
    assert (caught.value.code, caught.value.status) == ("invalid_api_key", 401)


def test_markets_are_created_listed_and_paginated(make_client, market_of):
    client = make_client()
    tag = uuid.uuid4().hex[:8]
    created = [market_of(client, f"Will page {n} of {tag} show?") for n in range(5)]
    assert client.me().balance == Decimal("950.00"), "five creation fees of 10.00"

    first = created[0]
    assert (first.status, first.yes_price, first.no_price, first.volume, first.outcome) == ("open", None, None, 0, None)
    assert first.deadline > datetime.now(UTC)
    assert first.category == "tests" and first.creator == client.me().name

    pages = client.markets(search=tag, page_size=2)
    found = list(pages)
    assert pages.pages == 3
    assert [m.id for m in found] == [m.id for m in reversed(created)], "newest first, each once"
    assert {m.id for m in client.markets(status="open", search=tag, ordering="deadline")} == {m.id for m in created}
    assert list(client.markets(status="resolved", search=tag)) == []
    assert client.market(first.id) == first


def test_orders_are_placed_listed_and_cancelled(make_client, market_of):
    client = make_client()
    market = market_of(client)
    result = client.place_order(market.id, "YES", "BUY", Decimal("0.40"), 10)
    order = result.order
    assert result.created and result.trades == []
    assert (order.market, order.side, order.action, order.price, order.size, order.filled, order.status) == (
        market.id,
        "YES",
        "BUY",
        Decimal("0.40"),
        10,
        0,
        "open",
    )
    assert order.client_order_id and order.time_in_force == "GTC" and order.is_resting
    me = client.me()
    assert (me.locked_balance, me.available_balance) == (Decimal("4.00"), Decimal("986.00"))

    assert [o.id for o in client.orders(market=market, status="resting")] == [order.id]
    assert client.order(order.id) == order
    book = client.orderbook(market.id)
    assert [(level.price, level.size) for level in book.yes] == [(Decimal("0.40"), 10)]
    assert (book.market, book.no, book.best_bid) == (market.id, [], Decimal("0.40"))

    cancelled = client.cancel_order(order.id)
    assert (cancelled.status, cancelled.cancel_reason) == ("cancelled", "user")
    assert client.me().locked_balance == Decimal("0.00")
    with pytest.raises(OrderNotCancellable) as caught:
        client.cancel_order(order.id)
    assert caught.value.detail["status"] == "cancelled"

    client.place_order(market, "NO", "BUY", "0.30", 5)
    client.place_order(market, "YES", "BUY", "0.20", 5)
    assert {o.status for o in client.cancel_all(market=market.id)} == {"cancelled"}
    assert list(client.orders(status="resting")) == []


def test_crossing_orders_trade_and_show_in_positions_fills_trades_and_ledger(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    resting = alice.place_order(market.id, "YES", "BUY", "0.60", 10).order
    taking = bob.place_order(market.id, "NO", "BUY", "0.45", 4)
    assert taking.order.status == "filled"
    [trade] = taking.trades
    assert (trade.price, trade.size, trade.taker_side, trade.market) == (Decimal("0.60"), 4, "NO", market.id)
    assert trade.created_at.tzinfo is not None

    assert alice.order(resting.id).status == "partial"
    assert alice.market(market.id).yes_price == Decimal("0.60")
    assert alice.market(market.id).no_price == Decimal("0.40")
    assert [t.id for t in alice.market_trades(market.id)] == [trade.id]

    [position] = list(alice.positions(open_only=True))
    assert (position.market, position.yes_shares, position.no_shares) == (market.id, 4, 0)
    assert position.avg_yes_price == Decimal("0.6000")
    [bobs] = list(bob.positions(market=market.id))
    assert (bobs.yes_shares, bobs.no_shares, bobs.avg_no_price) == (0, 4, Decimal("0.4000"))

    [fill] = list(bob.fills(market=market.id))
    assert isinstance(fill, Fill)
    assert (fill.id, fill.order, fill.role, fill.side, fill.fill_price) == (
        trade.id,
        taking.order.id,
        "taker",
        "NO",
        Decimal("0.40"),
    )
    assert list(bob.fills(market=str(uuid.uuid4()))) == []

    assert list(bob.fills(since=trade.created_at + timedelta(seconds=1))) == []
    assert [f.id for f in bob.fills(until=trade.created_at)] == [trade.id]

    kinds = [entry.kind for entry in bob.ledger()]
    assert kinds == ["trade", "grant"]
    assert [e.amount for e in bob.ledger(kind="trade")] == [Decimal("-1.60")]
    assert [e.kind for e in bob.ledger(market=market.id)] == ["trade"]
    assert [o.id for o in alice.orders(market=market.id, since=resting.created_at)] == [resting.id]
    assert list(alice.orders(until=resting.created_at - timedelta(seconds=1))) == []

    history = alice.history(market.id, interval="1m", start=datetime.now(UTC) - timedelta(hours=1))
    assert history.interval == "1m"
    assert sum(candle.volume for candle in history.candles) == 4
    assert history.candles[-1].close == Decimal("0.60")


def test_a_parameter_the_server_does_not_take_is_an_error_naming_it(make_client, market_of):
    client = make_client()
    market = market_of(client)
    with pytest.raises(MoltStreetError) as caught:
        client.history(market.id, interval="1h", limit=10)
    assert (caught.value.code, caught.value.status) == ("invalid_request", 400)
    assert caught.value.message == "Unknown query parameter: limit."
    assert set(caught.value.detail) == {"limit"}


def test_errors_carry_their_code_message_and_detail(make_client, market_of):
    client = make_client()
    market = market_of(client)

    with pytest.raises(InsufficientBalance) as caught:
        client.place_order(market.id, "YES", "BUY", "0.99", 2000)
    error = caught.value
    assert (error.code, error.status) == ("insufficient_balance", 400)
    assert error.message and Decimal(error.detail["available"]) == Decimal("990.00")

    with pytest.raises(InvalidPrice) as caught:
        client.place_order(market.id, "YES", "BUY", "0.555", 1)
    assert (caught.value.code, caught.value.detail["price"]) == ("invalid_price", "0.555")

    with pytest.raises(NotFound) as caught:
        client.market(str(uuid.uuid4()))
    assert (caught.value.code, caught.value.status) == ("not_found", 404)

    with pytest.raises(NameTaken):
        make_client(register=False).register(client.me().name)

    with pytest.raises(NotAuthenticated) as caught:
        make_client(register=False).me()
    assert caught.value.status == 401

    with pytest.raises(NotOracle):
        client.resolve(market.id, "YES")

    client.place_order(market.id, "YES", "BUY", "0.50", 1)
    with pytest.raises(PostOnlyWouldCross):
        make_client().place_order(market.id, "NO", "BUY", "0.50", 1, post_only=True)

    client.place_order(market.id, "YES", "BUY", "0.10", 1, client_order_id="same-id")
    again = client.place_order(market.id, "YES", "BUY", "0.10", 1, client_order_id="same-id")
    assert not again.created
    with pytest.raises(ClientOrderIdConflict) as caught:
        client.place_order(market.id, "YES", "BUY", "0.11", 1, client_order_id="same-id")
    assert caught.value.detail["order"] == again.order.id
    assert isinstance(caught.value, MoltStreetError)


def test_a_forecast_is_stated_and_a_closed_market_refuses_one(make_client, market_of):
    client = make_client()
    market = market_of(client)
    forecast = client.forecast(market.id, Decimal("0.62"), "base rates")
    assert (forecast.probability, forecast.reasoning, forecast.market) == (Decimal("0.62"), "base rates", market.id)

    from trading.lifecycle import market_close

    market_close(market_id=market.id)
    with pytest.raises(MarketClosed):
        client.forecast(market.id, "0.5")


class LoseFirstAnswer(httpx.BaseTransport):
    """The network between client and server: the first ``POST /orders/`` reaches the server (which commits the
    order) but its answer is lost, as a read timeout; everything else goes through."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.order_posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/api/v1/orders/":
            self.order_posts += 1
            if self.order_posts == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_an_order_whose_answer_was_lost_is_placed_once(make_client, market_of, fresh_name):
    transport = LoseFirstAnswer()
    client = make_client(register=False, transport=transport)
    client.register(fresh_name("sdk-lost"))
    market = market_of(client)

    result = client.place_order(market.id, "YES", "BUY", "0.30", 7)
    assert transport.order_posts == 2, "the lost attempt was retried"
    assert result.created, "the order this call placed, recognised by its client_order_id"
    orders = list(client.orders(market=market.id))
    assert [o.id for o in orders] == [result.order.id], "placed exactly once"
    assert orders[0].client_order_id == result.order.client_order_id
    assert client.me().locked_balance == Decimal("2.10")
