"""The live feeds against a live server: a market stream yields a snapshot and then every change once, in seq order,
through dropped connections and lost messages; so does the private stream, with the agent's own messages."""

from __future__ import annotations

import contextlib
import socket
import threading
from decimal import Decimal

import pytest
from moltstreet_client import MoltStreetError, NotFound, StreamClosed
from moltstreet_client.models import Fill, Trade, parse_datetime

pytestmark = pytest.mark.multiprocess

STEP = 15.0  # seconds any one message may take


def read_until_seq(stream, seq: int) -> list[dict]:
    """Messages until the one with ``seq``."""
    received = []
    while stream.last_seq is None or stream.last_seq < seq:
        received.append(stream.recv(timeout=STEP))
    return received


def seqs(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages if "seq" in m]


BATCHING = pytest.mark.parametrize("batch_ms", [None, 50], ids=["frame per message", "batched frames"])


@BATCHING
def test_a_market_stream_yields_the_snapshot_then_book_and_trade_in_seq_order(make_client, market_of, batch_ms):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    with alice.stream_market(market.id, timeout=STEP, batch_ms=batch_ms) as stream:
        snapshot = next(stream)
        assert snapshot["type"] == "snapshot" and snapshot["reason"] == "connect"
        start = snapshot["seq"]
        assert snapshot["market"]["id"] == market.id and snapshot["book"] == {"yes": [], "no": []}

        alice.place_order(market.id, "YES", "BUY", "0.60", 10)
        taking = bob.place_order(market.id, "NO", "BUY", "0.45", 4)
        end = alice.market(market.id).seq
        live = read_until_seq(stream, end)

        assert seqs(live) == list(range(start + 1, end + 1))
        assert {m["type"] for m in live} <= {"book", "trade"}
        [trade] = [Trade.from_dict(m["trade"]) for m in live if m["type"] == "trade"]
        assert (trade.id, trade.price, trade.size) == (taking.trades[0].id, Decimal("0.60"), 4)
        assert stream.book == alice.orderbook(market.id), "the stream's book is the server's at the same seq"
        assert [(level.price, level.size) for level in stream.book.yes] == [(Decimal("0.60"), 6)]
    assert stream.closed
    with pytest.raises(StreamClosed):
        stream.recv(timeout=1)


@BATCHING
def test_a_dropped_connection_is_resumed_with_since_and_nothing_is_missed_or_repeated(make_client, market_of, batch_ms):
    trader = make_client()
    market = market_of(trader)
    with trader.stream_market(market.id, timeout=STEP, batch_ms=batch_ms) as stream:
        start = next(stream)["seq"]
        trader.place_order(market.id, "YES", "BUY", "0.30", 1)
        before = read_until_seq(stream, trader.market(market.id).seq)

        # The network fails under the stream; meanwhile the market moves on.
        stream._connection.socket.shutdown(socket.SHUT_RDWR)
        for price in ("0.31", "0.32", "0.33"):
            trader.place_order(market.id, "YES", "BUY", price, 1)
        end = trader.market(market.id).seq
        after = read_until_seq(stream, end)

        assert stream.reconnects == 1
        assert seqs(before + after) == list(range(start + 1, end + 1))
        assert not any(m["type"] == "snapshot" for m in after), "resumed, not restarted"
        assert stream.book == trader.orderbook(market.id)


def test_a_lost_message_is_noticed_by_its_seq_and_refilled(make_client, market_of):
    trader = make_client()
    market = market_of(trader)
    with trader.stream_market(market.id, timeout=STEP) as stream:
        start = next(stream)["seq"]
        # Lose the first message after the snapshot on its way to the stream, as a broken relay would.
        receive = stream._recv_raw
        lost = []

        def lossy(timeout):
            raw = receive(timeout)
            if not lost:
                lost.append(raw)
                return receive(timeout)
            return raw

        stream._recv_raw = lossy
        for price in ("0.40", "0.41", "0.42"):
            trader.place_order(market.id, "NO", "BUY", price, 2)
        end = trader.market(market.id).seq
        live = read_until_seq(stream, end)

        assert lost, "a message was dropped on purpose"
        assert stream.reconnects == 1, "the gap was repaired by reconnecting with since"
        assert seqs(live) == list(range(start + 1, end + 1))
        assert stream.book == trader.orderbook(market.id)


def test_a_stream_starting_at_since_replays_what_followed(make_client, market_of):
    trader = make_client()
    market = market_of(trader)
    since = trader.market(market.id).seq
    trader.place_order(market.id, "YES", "BUY", "0.25", 3)
    end = trader.market(market.id).seq
    with trader.stream_market(market.id, since=since, timeout=STEP) as stream:
        replayed = read_until_seq(stream, end)
    assert seqs(replayed) == list(range(since + 1, end + 1))
    assert replayed[0]["type"] != "snapshot"


def test_a_stream_of_an_unknown_market_raises_not_found(make_client):
    client = make_client(register=False)
    with pytest.raises(NotFound), client.stream_market("00000000-0000-4000-8000-000000000000", timeout=STEP) as s:
        next(s)


def test_close_from_another_thread_ends_the_iteration(make_client, market_of):
    client = make_client()
    market = market_of(client)
    stream = client.stream_market(market.id, timeout=STEP)
    assert next(stream)["type"] == "snapshot"
    threading.Timer(0.3, stream.close).start()
    assert list(stream) == []  # blocked waiting, then ended by close()


def test_an_idle_stream_times_out_as_asked(make_client, market_of):
    client = make_client()
    market = market_of(client)
    with client.stream_market(market.id) as stream:
        next(stream)
        with pytest.raises(TimeoutError):
            stream.recv(timeout=0.5)
        client.place_order(market.id, "YES", "BUY", "0.10", 1)
        assert stream.recv(timeout=STEP)["type"] == "book", "a timeout loses nothing"


def test_the_private_stream_gets_the_agents_fill_and_balance(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    with alice.stream_private(timeout=STEP) as feed:
        snapshot = feed.recv()
        assert (snapshot["type"], snapshot["reason"]) == ("snapshot", "connect")
        assert feed.last_seq == snapshot["seq"] and feed.balance == alice.me().balance and feed.orders == []
        resting = alice.place_order(market.id, "YES", "BUY", "0.55", 5).order
        bob.place_order(market.id, "NO", "BUY", "0.50", 5)
        received = []
        while not any(m["type"] == "fill" for m in received):
            received.append(feed.recv())
        fill = Fill.from_dict(next(m for m in received if m["type"] == "fill")["fill"])
        assert (fill.order, fill.role, fill.price, fill.fill_price, fill.size) == (
            resting.id,
            "maker",
            Decimal("0.55"),
            Decimal("0.55"),
            5,
        )
        me = alice.me()
        while True:
            message = feed.recv()
            received.append(message)
            if message["type"] == "balance" and Decimal(message["balance"]) == me.balance:
                break
        assert Decimal(message["locked_balance"]) == me.locked_balance == Decimal("0.00")
        assert all(m.get("order", {}).get("id") in (None, resting.id) for m in received if m["type"] == "order")
        assert seqs(received) == list(range(snapshot["seq"] + 1, feed.last_seq + 1))
        # The account the stream keeps is the server's.
        assert (feed.balance, feed.locked_balance, feed.available_balance) == (
            me.balance,
            me.locked_balance,
            me.available_balance,
        )
        assert feed.orders == []
        [position] = feed.positions
        assert (position.market, position.yes_shares, position.avg_yes_price) == (market.id, 5, Decimal("0.55"))


def test_the_private_stream_resumes_after_a_drop_and_misses_nothing(make_client, market_of):
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    reconnected = []
    with alice.stream_private(timeout=STEP, on_reconnect=reconnected.append) as feed:
        start = feed.recv()["seq"]
        alice.place_order(market.id, "YES", "BUY", "0.20", 1)
        before = [feed.recv(), feed.recv()]  # order, balance

        # The network fails under the stream; meanwhile the agent's orders fill and rest.
        feed._connection.socket.shutdown(socket.SHUT_RDWR)
        bob.place_order(market.id, "NO", "BUY", "0.80", 1)
        resting = alice.place_order(market.id, "NO", "BUY", "0.30", 2).order
        after = []
        while not (after and after[-1]["type"] == "balance" and after[-2].get("order", {}).get("id") == resting.id):
            after.append(feed.recv())

        assert reconnected == [feed] and feed.reconnects == 1
        assert not any(m["type"] == "snapshot" for m in after), "resumed, not restarted"
        assert seqs(before + after) == list(range(start + 1, feed.last_seq + 1))
        assert [m["type"] for m in after] == ["fill", "order", "position", "balance", "order", "balance"]
        assert [o.id for o in feed.orders] == [resting.id]
        assert feed.orders[0] == alice.order(resting.id)
        assert feed.available_balance == alice.me().available_balance


def test_a_private_stream_starting_at_since_replays_what_followed(make_client, market_of):
    alice = make_client()
    market = market_of(alice)
    with alice.stream_private(timeout=STEP) as feed:
        since = feed.recv()["seq"]
    alice.place_order(market.id, "YES", "BUY", "0.25", 3)
    with alice.stream_private(since=since, timeout=STEP) as feed:
        replayed = [feed.recv(), feed.recv()]
    assert [(m["type"], m["seq"]) for m in replayed] == [("order", since + 1), ("balance", since + 2)]


def test_the_private_stream_follows_a_key_rotation_and_stops_on_a_revoked_key(make_client, market_of):
    alice = make_client()
    market = market_of(alice)
    with alice.stream_private(timeout=STEP) as feed:
        feed.open()
        alice.rotate_key(revoke_current=True)  # the feed's key is revoked: the server closes it with 4401
        order = alice.place_order(market.id, "YES", "BUY", "0.15", 1).order  # placed while it reconnects
        while not feed.reconnects:
            with contextlib.suppress(TimeoutError):
                feed.recv(timeout=2.0)
        assert feed.reconnects == 1, "reconnected with the client's new key"
        alice.cancel_order(order.id)
        while (message := feed.recv())["type"] != "order" or message["event"] != "cancelled":
            pass
        assert message["order"]["id"] == order.id

    # Revoked through another client, with no newer key on this one: the stream says so and ends.
    other = make_client(register=False)
    other.api_key = alice.rotate_key().api_key
    listed = alice.keys()
    current_id = next(key.id for key in listed if key.is_current)
    with alice.stream_private(timeout=STEP) as feed:
        feed.open()
        other.revoke_key(current_id)
        with pytest.raises(MoltStreetError) as caught:
            while True:
                feed.recv()
        assert caught.value.code == "api_key_revoked"
    assert feed.closed


def read_until_type(stream, kind: str) -> list[dict]:
    """Messages until the first of type ``kind`` (the last one returned)."""
    received = [stream.recv(timeout=STEP)]
    while received[-1]["type"] != kind:
        received.append(stream.recv(timeout=STEP))
    return received


def test_a_private_stream_with_cancel_on_disconnect_cancels_the_resting_orders_when_it_closes(make_client, market_of):
    alice = make_client()
    market = market_of(alice)
    with alice.stream_private(timeout=STEP) as watch:
        start = watch.recv()["seq"]
        guard = alice.stream_private(timeout=STEP, cancel_on_disconnect=True).open()
        assert "cancel_on_disconnect=true" in guard._url()
        assert "cancel_on_disconnect" not in watch._url()
        resting = alice.place_order(market.id, "YES", "BUY", "0.35", 4).order
        guard.close()

        received = read_until_type(watch, "heartbeat")
        message = received[-1]
        assert (message["event"], message["cancelled"], message["deadline"]) == ("disconnected", [resting.id], None)
        cancels = [m for m in received if m["type"] == "order" and m["order"]["status"] == "cancelled"]
        assert [m["order"]["cancel_reason"] for m in cancels] == ["disconnected"]
        assert seqs(received) == list(range(start + 1, watch.last_seq + 1))
        assert watch.orders == [] and watch.locked_balance == Decimal("0.00")
    gone = alice.order(resting.id)
    assert (gone.status, gone.cancel_reason) == ("cancelled", "disconnected")


def test_the_private_stream_yields_the_heartbeat_message_when_the_switch_fires(make_client, market_of):
    from datetime import timedelta

    from django.utils import timezone

    from trading.heartbeat import heartbeats_expire_due

    alice = make_client()
    market = market_of(alice)
    armed = alice.heartbeat(60)
    with alice.stream_private(timeout=STEP) as feed:
        feed.recv()
        resting = alice.place_order(market.id, "NO", "BUY", "0.25", 2).order
        read_until_type(feed, "balance")  # the order's messages
        assert [o.id for o in feed.orders] == [resting.id]
        # The scheduler's pass, run here a minute ahead rather than waited for.
        assert heartbeats_expire_due(now=timezone.now() + timedelta(seconds=61)) >= 1

        message = read_until_type(feed, "heartbeat")[-1]
        assert (message["event"], message["cancelled"]) == ("expired", [resting.id])
        assert parse_datetime(message["deadline"]) == armed.deadline
        assert feed.orders == []
    assert alice.order(resting.id).cancel_reason == "heartbeat_expired"
    assert not alice.heartbeat(0).armed
