"""The market feed's bookkeeping without a network: what is yielded, dropped as a repeat, or repaired by a reconnect
with ``?since=``, and the book it keeps."""

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


@pytest.mark.parametrize("state", [MarketFeedState(MARKET), PrivateFeedState()], ids=["market", "private"])
def test_a_refused_handshake_waits_as_told_or_gives_up(state):
    with pytest.raises(_Reconnect) as caught:  # too many handshakes from this address: retry after the server's wait
        state.handle({"type": "error", "code": "rate_limited", "message": "...", "retry_after": 42})
    assert caught.value.pause == 42.0
    with pytest.raises(MoltStreetError) as refused:  # too many open: reconnecting cannot help
        state.handle({"type": "error", "code": "too_many_connections", "message": "50 open", "limit": 50})
    assert refused.value.code == "too_many_connections"
