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
    HeartbeatExpired,
    InsufficientBalance,
    InvalidApiKey,
    InvalidPrice,
    InvalidRequest,
    InvalidSize,
    LastApiKey,
    MarketClosed,
    MoltStreetError,
    NameTaken,
    NotAuthenticated,
    NotFound,
    NotOracle,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderRequest,
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
    """The network between client and server: the first ``POST`` to ``path`` (``/orders/`` by default) reaches the
    server (which commits it) but its answer is lost, as a read timeout; everything else goes through."""

    def __init__(self, path: str = "/api/v1/orders/"):
        self.inner = httpx.HTTPTransport()
        self.path = path
        self.order_posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == self.path:
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


def test_a_batch_places_each_order_on_its_own_and_a_repeat_places_nothing_twice(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    other = market_of(alice)
    bob.place_order(market.id, "NO", "BUY", "0.40", 3)  # a YES ask at 0.60
    orders = [
        {"market": market.id, "side": "YES", "action": "BUY", "price": "0.30", "size": 10},
        OrderRequest(market, "YES", "BUY", "0.99", 5000),  # far beyond the balance
        {"market": market, "side": "YES", "action": "BUY", "price": Decimal("0.60"), "size": 2, "time_in_force": "IOC"},
        OrderRequest(other.id, "NO", "BUY", "0.20", 4, client_order_id="mine-1"),
        {"market": market.id, "side": "NO", "action": "BUY", "price": "0.70", "size": 1, "post_only": True},
    ]
    results = alice.place_orders(orders)

    resting, broke, taking, elsewhere, crossing = results
    assert [r.status for r in results] == [201, 400, 201, 201, 409]
    assert [r.ok for r in results] == [True, False, True, True, False]
    assert (resting.order.status, resting.order.market, resting.trades) == ("open", market.id, [])
    assert isinstance(broke.error, InsufficientBalance) and broke.error.status == 400 and broke.order is None
    assert Decimal(broke.error.detail["available"]) < Decimal("1000.00")
    assert (taking.order.status, [(t.price, t.size) for t in taking.trades]) == ("filled", [(Decimal("0.60"), 2)])
    assert (elsewhere.order.market, elsewhere.order.client_order_id) == (other.id, "mine-1")
    assert isinstance(crossing.error, PostOnlyWouldCross), "a NO bid at 0.70 crosses the YES bid at 0.30"
    assert all(r.order.client_order_id for r in results if r.ok), "every order was keyed"

    # The same orders again, with the keys the first call used: nothing new is placed.
    again = alice.place_orders(
        [
            {**orders[0], "client_order_id": resting.order.client_order_id},
            {**orders[2], "client_order_id": taking.order.client_order_id},
            orders[3],
        ]
    )
    assert [(r.status, r.created) for r in again] == [(200, False)] * 3
    assert [r.order.id for r in again] == [resting.order.id, taking.order.id, elsewhere.order.id]
    assert len(list(alice.orders())) == 3
    assert alice.me().locked_balance == Decimal("3.00") + Decimal("0.80")

    with pytest.raises(ValueError):
        alice.place_orders([orders[0]] * 21)


def test_a_batch_cancel_reports_each_id_on_its_own(make_client, market_of):
    client = make_client()
    market = market_of(client)
    first = client.place_order(market.id, "YES", "BUY", "0.30", 5).order
    second = client.place_order(market.id, "NO", "BUY", "0.20", 5).order
    stranger = str(uuid.uuid4())

    done, twice, other, unknown = client.cancel_orders([first.id, first, second.id, stranger])
    assert (done.status, done.order.id, done.order.status, done.order.cancel_reason) == (
        200,
        first.id,
        "cancelled",
        "user",
    )
    assert isinstance(twice.error, OrderNotCancellable) and twice.error.detail["status"] == "cancelled"
    assert other.ok and other.order.id == second.id
    assert isinstance(unknown.error, NotFound) and (unknown.status, unknown.order) == (404, None)
    assert client.me().locked_balance == Decimal("0.00")
    assert list(client.orders(status="resting")) == []


def test_an_amend_in_place_keeps_the_order_and_a_new_price_replaces_it(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    original = alice.place_order(market.id, "YES", "BUY", "0.40", 10, client_order_id="quote-1").order

    smaller = alice.amend_order(original.id, size=6)
    assert (smaller.order.id, smaller.order.size, smaller.order.remaining, smaller.replaced, smaller.trades) == (
        original.id,
        6,
        6,
        None,
        [],
    )
    assert alice.me().locked_balance == Decimal("2.40")

    bob.place_order(market.id, "NO", "BUY", "0.55", 2)  # a YES ask at 0.45
    moved = alice.amend_order(original, price=Decimal("0.45"))
    replacement, replaced = moved.order, moved.replaced
    assert replaced.id == original.id and replacement.id != original.id
    assert (replaced.status, replaced.cancel_reason, replaced.replaced_by) == ("cancelled", "amended", replacement.id)
    assert (replacement.price, replacement.size, replacement.filled, replacement.client_order_id) == (
        Decimal("0.45"),
        6,
        2,
        "quote-1",
    )
    assert [(t.price, t.size) for t in moved.trades] == [(Decimal("0.45"), 2)], "the replacement traded on arrival"
    assert alice.order(original.id).replaced_by == replacement.id
    assert alice.me().locked_balance == Decimal("1.80")

    with pytest.raises(OrderNotAmendable) as caught:
        alice.amend_order(original.id, size=8)
    assert (caught.value.status, caught.value.detail["replaced_by"]) == (409, replacement.id)
    with pytest.raises(InvalidSize):
        alice.amend_order(replacement.id, size=2)  # not above the 2 filled
    with pytest.raises(NotFound):
        alice.amend_order(str(uuid.uuid4()), price="0.10")
    post_only = alice.place_order(market.id, "NO", "BUY", "0.10", 1, post_only=True).order
    with pytest.raises(PostOnlyWouldCross):
        alice.amend_order(post_only.id, price="0.60")  # a YES ask at 0.40 under the YES bid at 0.45
    assert alice.order(post_only.id).status == "open", "a refused replacement leaves the order untouched"


def test_a_preview_changes_nothing_and_predicts_the_fills(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    bob.place_order(market.id, "NO", "BUY", "0.45", 3)  # a YES ask at 0.55
    seq = alice.market(market.id).seq
    balance = alice.me().balance

    preview = alice.preview_order(market.id, "YES", "BUY", "0.60", 5)
    assert preview.ok and preview.dry_run and (preview.status, preview.error) == (201, None)
    assert (preview.order.id, preview.order.status, preview.order.filled) == (None, "partial", 3)
    assert [(f.price, f.fill_price, f.size, f.taker_side) for f in preview.fills] == [
        (Decimal("0.55"), Decimal("0.55"), 3, "YES")
    ]
    assert preview.reserve.credits == Decimal("1.20") and preview.reserve.contracts == 0
    assert preview.balance == balance - Decimal("1.65")
    assert (preview.locked_balance, preview.available_balance) == (Decimal("1.20"), preview.balance - Decimal("1.20"))
    assert (preview.position.market, preview.position.yes_shares) == (market.id, 3)
    assert preview.order.client_order_id is None, "no key is generated for a preview"

    assert alice.market(market.id).seq == seq and list(alice.orders()) == [], "nothing was stored"
    assert alice.me().balance == balance
    placed = alice.place_order(market.id, "YES", "BUY", "0.60", 5)
    assert [(t.price, t.size) for t in placed.trades] == [(f.price, f.size) for f in preview.fills]
    assert alice.me().locked_balance == preview.locked_balance

    refused = alice.preview_order(market.id, "YES", "BUY", "0.99", 5000)
    assert isinstance(refused.error, InsufficientBalance) and refused.status == 400 and not refused.ok
    assert (refused.order, refused.fills, refused.reserve) == (None, [], None)
    repeat = alice.preview_order(market.id, "YES", "BUY", "0.60", 5, client_order_id=placed.order.client_order_id)
    assert (repeat.status, repeat.order.id) == (200, placed.order.id)


def test_the_heartbeat_arms_and_disarms_and_a_missed_deadline_stops_and_cancels_orders(make_client, market_of):
    from django.utils import timezone

    from agents.models import Agent as AgentRow

    client = make_client()
    market = market_of(client)
    before = datetime.now(UTC)
    armed = client.heartbeat(30)
    assert (armed.armed, armed.timeout_seconds, armed.cancelled) == (True, 30, 0)
    assert before + timedelta(seconds=29) < armed.deadline < datetime.now(UTC) + timedelta(seconds=31)
    disarmed = client.heartbeat(0)
    assert (disarmed.armed, disarmed.timeout_seconds, disarmed.deadline) == (False, None, None)
    with pytest.raises(InvalidRequest) as caught:
        client.heartbeat(3)
    assert "timeout_seconds" in caught.value.detail

    client.heartbeat(60)
    resting = client.place_order(market.id, "YES", "BUY", "0.20", 5).order
    # The deadline passes without a heartbeat (moved into the past rather than waited for).
    AgentRow.objects.filter(id=client.me().id).update(heartbeat_deadline=timezone.now() - timedelta(seconds=1))
    with pytest.raises(HeartbeatExpired) as expired:
        client.place_order(market.id, "YES", "BUY", "0.21", 1)
    assert expired.value.status == 409
    [refused] = client.place_orders([{"market": market.id, "side": "YES", "action": "BUY", "price": "0.21", "size": 1}])
    assert isinstance(refused.error, HeartbeatExpired)

    late = client.heartbeat(30)
    assert (late.armed, late.cancelled) == (True, 1), "a late heartbeat fires the switch first"
    gone = client.order(resting.id)
    assert (gone.status, gone.cancel_reason) == ("cancelled", "heartbeat_expired")
    assert client.place_order(market.id, "YES", "BUY", "0.21", 1).order.status == "open"
    client.heartbeat(0)


def test_a_batch_whose_answer_was_lost_is_placed_once_and_its_cancel_too(make_client, market_of, fresh_name):
    transport = LoseFirstAnswer("/api/v1/orders/batch/")
    client = make_client(register=False, transport=transport)
    client.register(fresh_name("sdk-lost-batch"))
    market = market_of(client)
    entry = {"market": market.id, "side": "YES", "action": "BUY", "price": "0.30", "size": 2}

    results = client.place_orders([entry, {**entry, "price": "0.31"}])
    assert transport.order_posts == 2, "the lost attempt was retried"
    assert [(r.status, r.created) for r in results] == [(200, True), (200, True)], "the orders this call placed"
    assert sorted(o.id for o in client.orders(market=market.id)) == sorted(r.order.id for r in results)

    transport.path, transport.order_posts = "/api/v1/orders/batch-cancel/", 0
    cancelled = client.cancel_orders([r.order.id for r in results])
    assert transport.order_posts == 2
    assert [(c.status, c.ok, c.order.cancel_reason) for c in cancelled] == [(200, True, "user")] * 2
    assert list(client.orders(status="resting")) == []
