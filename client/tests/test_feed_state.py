"""The feeds' bookkeeping without a network: what is yielded, dropped as a repeat, or repaired by a reconnect with
``?since=``, and the book (market feed) or account (private feed) it keeps."""

from __future__ import annotations

from decimal import Decimal

import pytest
from moltstreet_client.errors import MoltStreetError
from moltstreet_client.streams import DELIVER, SKIP, MarketFeedState, PrivateFeedState, _Reconnect

MARKET = "m-1"


def snapshot(seq: int, reason: str = "connect") -> dict:
    return {
        "type": "snapshot",
        "seq": seq,
        "reason": reason,
        "market": {"id": MARKET},
        "book": {"yes": [{"price": "0.60", "size": 10}], "no": [{"price": "0.30", "size": 5}]},
        "trades": [],
    }


def book(seq: int, *levels: tuple[str, str, int]) -> dict:
    return {
        "type": "book",
        "seq": seq,
        "market": MARKET,
        "levels": [{"side": s, "price": p, "size": n} for s, p, n in levels],
    }


def test_a_snapshot_then_consecutive_seqs_are_yielded_and_repeats_dropped():
    state = MarketFeedState(MARKET)
    assert state.path() == f"/ws/markets/{MARKET}/"
    assert state.handle(snapshot(5)) == DELIVER
    assert state.handle(book(6, ("YES", "0.60", 0), ("YES", "0.61", 3))) == DELIVER
    assert state.handle(book(6)) == SKIP
    assert state.handle(book(4)) == SKIP
    assert state.handle({"type": "trade", "seq": 7, "market": MARKET, "trade": {}}) == DELIVER
    assert state.last_seq == 7
    assert state.path() == f"/ws/markets/{MARKET}/?since=7"

    current = state.book()
    assert [(level.price, level.size) for level in current.yes] == [(Decimal("0.61"), 3)]
    assert [(level.price, level.size) for level in current.no] == [(Decimal("0.30"), 5)]
    assert (current.best_bid, current.best_ask, current.seq) == (Decimal("0.61"), Decimal("0.70"), 7)


def test_a_jump_in_seq_asks_for_a_reconnect_and_keeps_the_last_seq():
    state = MarketFeedState(MARKET)
    state.handle(snapshot(5))
    with pytest.raises(_Reconnect):
        state.handle(book(7))
    assert state.last_seq == 5
    assert state.path().endswith("?since=5")


@pytest.mark.parametrize(("code", "pause"), [("buffer_overflow", 0.0), ("feed_unavailable", 1.0)])
def test_server_errors_that_end_the_feed_ask_for_a_reconnect(code, pause):
    state = MarketFeedState(MARKET)
    state.handle(snapshot(5))
    with pytest.raises(_Reconnect) as caught:
        state.handle({"type": "error", "code": code, "message": "...", "last_seq": 5})
    assert caught.value.pause == pause


def test_a_resync_snapshot_replaces_the_state():
    state = MarketFeedState(MARKET, since=3)
    assert state.path().endswith("?since=3")
    assert state.handle(book(4, ("NO", "0.30", 1))) == DELIVER
    assert state.handle(snapshot(9, "resync")) == DELIVER
    assert state.last_seq == 9
    assert [(level.price, level.size) for level in state.book().no] == [(Decimal("0.30"), 5)]
    assert state.handle({"type": "market", "seq": 10, "event": "closed", "market": {}}) == DELIVER
    assert state.book().yes == [] and state.book().no == []


def test_pongs_and_noise_are_not_yielded():
    state = MarketFeedState(MARKET)
    assert state.handle({"type": "pong"}) == SKIP
    assert state.handle({"type": "error", "code": "invalid_message", "message": "..."}) == SKIP
    assert state.handle([1, 2]) == SKIP


def test_since_must_be_a_whole_number():
    for bad in (-1, "5", 1.5, True):
        with pytest.raises(ValueError):
            MarketFeedState(MARKET, since=bad)


def test_the_private_feed_reconnects_on_unavailable_and_revoked():
    state = PrivateFeedState()
    assert state.handle({"type": "fill", "seq": 3, "fill": {}}) == DELIVER
    assert state.handle({"type": "pong"}) == SKIP
    with pytest.raises(_Reconnect):
        state.handle({"type": "error", "code": "feed_unavailable", "message": "..."})
    with pytest.raises(_Reconnect):
        state.handle({"type": "error", "code": "api_key_revoked", "message": "..."})


def order(order_id: str, status: str, filled: int = 0, created_at: str = "2026-01-02T10:00:00Z") -> dict:
    return {
        "id": order_id,
        "market": MARKET,
        "side": "YES",
        "action": "BUY",
        "price": "0.40",
        "size": 5,
        "filled": filled,
        "remaining": 5 - filled,
        "status": status,
        "created_at": created_at,
    }


def position(yes: int, no: int = 0) -> dict:
    return {"market": MARKET, "yes_shares": yes, "no_shares": no, "yes_reserved": 0, "no_reserved": 0}


def account(seq: int, reason: str = "connect") -> dict:
    return {
        "type": "snapshot",
        "seq": seq,
        "reason": reason,
        "balance": "990.00",
        "locked_balance": "2.00",
        "available_balance": "988.00",
        "orders": [order("o-1", "open")],
        "positions": [],
    }


def test_the_private_feed_keeps_the_agent_s_seq_and_account_from_the_snapshot_on():
    state = PrivateFeedState()
    assert state.path() == "/ws/agent/"
    assert state.handle(account(7)) == DELIVER
    assert (state.last_seq, state.balances["available_balance"], state.account_known) == (7, Decimal("988.00"), True)
    assert [o.id for o in state.orders()] == ["o-1"]
    later = order("o-2", "open", created_at="2026-01-02T11:00:00Z")
    assert state.handle({"type": "order", "seq": 8, "market": MARKET, "event": "placed", "order": later}) == DELIVER
    assert [o.id for o in state.orders()] == ["o-2", "o-1"]  # newest first
    filled = order("o-1", "filled", filled=5)
    assert state.handle({"type": "fill", "seq": 9, "market": MARKET, "fill": {}}) == DELIVER
    assert state.handle({"type": "order", "seq": 10, "market": MARKET, "event": "filled", "order": filled}) == DELIVER
    assert state.handle({"type": "position", "seq": 11, "market": MARKET, "position": position(5)}) == DELIVER
    balance = {"balance": "988.00", "locked_balance": "2.00", "available_balance": "986.00"}
    assert state.handle({"type": "balance", "seq": 12, "market": MARKET, **balance}) == DELIVER
    assert [o.id for o in state.orders()] == ["o-2"]
    assert [(p.market, p.yes_shares) for p in state.positions()] == [(MARKET, 5)]
    assert state.balances == {key: Decimal(value) for key, value in balance.items()}
    assert state.path() == "/ws/agent/?since=12"
    # A repeat is dropped, a jump asks for a resume from the last seq applied.
    assert state.handle({"type": "position", "seq": 11, "market": MARKET, "position": position(0)}) == SKIP
    with pytest.raises(_Reconnect):
        state.handle({"type": "balance", "seq": 14, "market": MARKET, **balance})
    assert state.last_seq == 12
    # An emptied position leaves the account; a snapshot replaces it whole.
    assert state.handle({"type": "position", "seq": 13, "market": MARKET, "position": position(0)}) == DELIVER
    assert state.positions() == []
    assert state.handle(account(40, "since_too_old")) == DELIVER
    assert (state.last_seq, [o.id for o in state.orders()]) == (40, ["o-1"])


def test_a_private_feed_resumed_with_since_starts_from_the_caller_s_account():
    state = PrivateFeedState(since=12)
    assert state.path() == "/ws/agent/?since=12"
    assert not state.account_known and state.balances == {} and state.orders() == []
    assert state.handle({"type": "error", "code": "invalid_since", "message": "..."}) == SKIP
    with pytest.raises(_Reconnect):
        state.handle({"type": "error", "code": "buffer_overflow", "message": "...", "last_seq": 12})
    with pytest.raises(ValueError):
        PrivateFeedState(since=-1)


@pytest.mark.parametrize("state", [MarketFeedState(MARKET), PrivateFeedState()], ids=["market", "private"])
def test_a_refused_handshake_waits_as_told_or_gives_up(state):
    with pytest.raises(_Reconnect) as caught:  # too many handshakes from this address: retry after the server's wait
        state.handle({"type": "error", "code": "rate_limited", "message": "...", "retry_after": 42})
    assert caught.value.pause == 42.0
    with pytest.raises(MoltStreetError) as refused:  # too many open: reconnecting cannot help
        state.handle({"type": "error", "code": "too_many_connections", "message": "50 open", "limit": 50})
    assert refused.value.code == "too_many_connections"


def test_batched_frames_are_asked_for_on_every_connection_and_a_bad_batch_ms_is_refused():
    state = MarketFeedState(MARKET, batch_ms=100)
    assert state.path() == f"/ws/markets/{MARKET}/?batch_ms=100"
    state.handle(snapshot(5))
    assert state.path() == f"/ws/markets/{MARKET}/?batch_ms=100&since=5"
    assert MarketFeedState(MARKET, batch_ms=0).path() == f"/ws/markets/{MARKET}/"
    for bad in (-1, 1001, 1.5, "100", True):
        with pytest.raises(ValueError, match="batch_ms"):
            MarketFeedState(MARKET, batch_ms=bad)
