"""Two real server processes behind one Redis (DESIGN section 8): an order placed through one reaches the websocket
clients of the other, in order, with no gap in ``seq``, and the agent's private feed on the other server gets its fill.

Server A and server B are separate ``daphne moltstreet.asgi:application`` processes on the pytest test database and
the tests' Redis. Everything goes through the network as an agent would do it: registration, market creation and
orders through A's HTTP API, websocket clients on B. The data is committed (``transaction=True``) so the servers see
it, and the flush after the test removes it.
"""

from __future__ import annotations

import json

import pytest

from markets.models import Market
from testsupport.e2e import api, create_market, daphne_servers, open_feed, place_order, register_agent

pytestmark = [pytest.mark.multiprocess, pytest.mark.django_db(transaction=True)]

STEP = 15.0  # seconds any one step (a message, a request) may take
# Longer than the channel layer's blocking read of a subscriber's queue (channels-redis BZPOPMIN, 5 s) and redis-py
# 8's default socket timeout (5 s): a feed with nothing to say must outlive both (django/channels_redis#422).
IDLE = 8.0


@pytest.fixture
def servers():
    with daphne_servers(2) as pair:
        yield pair


def levels_of(message: dict) -> dict[tuple[str, str], int]:
    return {(level["side"], level["price"]): level["size"] for level in message.get("levels", [])}


def test_an_order_placed_through_one_server_reaches_the_websocket_clients_of_the_other(servers):
    a, b = servers
    creator = register_agent(a.url, "mp-creator")
    alice = register_agent(a.url, "mp-alice")
    bob = register_agent(a.url, "mp-bob")
    market = create_market(a.url, creator["api_key"], "Will two servers agree?")
    market_id = market["id"]

    with (
        open_feed(b, f"/ws/markets/{market_id}/", timeout=STEP) as feed,
        open_feed(b, "/ws/agent/", headers={"Authorization": f"Bearer {alice['api_key']}"}, timeout=STEP) as alice_feed,
        open_feed(b, "/ws/agent/", headers={"Authorization": f"Bearer {bob['api_key']}"}, timeout=STEP) as bob_feed,
    ):
        snapshot = feed.recv(timeout=STEP)
        assert snapshot["type"] == "snapshot", snapshot
        assert snapshot["reason"] == "connect", snapshot
        assert snapshot["market"]["id"] == market_id, snapshot
        assert snapshot["book"] == {"yes": [], "no": []}, snapshot
        assert snapshot["trades"] == [], snapshot
        start = snapshot["seq"]
        assert start == Market.objects.get(id=market_id).seq

        # A quiet market: the subscribers on B stay connected with nothing to receive (no event to await here: the
        # failure is a close within the period). Then a pong proves each private consumer still runs, in its group.
        feed.stays_open_and_quiet(IDLE)
        for private in (alice_feed, bob_feed):
            private.send({"type": "ping"})
            private.until(lambda m: m["type"] == "pong", "pong", timeout=STEP)

        # A resting bid through A: B's spectators see the new level.
        resting = place_order(a.url, alice["api_key"], market_id, "YES", "BUY", "0.60", 10)
        assert resting["order"]["status"] == "open", resting
        assert resting["trades"] == [], resting
        feed.until(
            lambda m: m["type"] == "book" and levels_of(m).get(("YES", "0.60")) == 10, "book level YES 0.60 x 10", STEP
        )

        # A crossing order through A: the trade at the maker's price (YES 0.60, Bob pays 0.40 per NO).
        taking = place_order(a.url, bob["api_key"], market_id, "NO", "BUY", "0.45", 10)
        assert taking["order"]["status"] == "filled", taking
        [trade] = taking["trades"]
        assert (trade["price"], trade["size"]) == ("0.60", 10), trade
        end = Market.objects.get(id=market_id).seq
        assert end > start + 1
        feed.until(lambda m: m.get("seq") == end, f"the message with the market's last seq {end}", STEP)

        live = feed.received[1:]
        assert [m["seq"] for m in live] == list(range(start + 1, end + 1)), live
        assert {m["type"] for m in live} <= {"book", "trade"}, live
        assert all(m["market"] == market_id for m in live), live
        trades = [m["trade"] for m in live if m["type"] == "trade"]
        assert [(t["id"], t["price"], t["size"], t["taker_side"]) for t in trades] == [(trade["id"], "0.60", 10, "NO")]
        assert trades[0]["seq"] == next(m["seq"] for m in live if m["type"] == "trade")
        # The bid's level ends empty: the last book message that touches it removes it.
        touching = [levels_of(m)[("YES", "0.60")] for m in live if ("YES", "0.60") in levels_of(m)]
        assert touching[0] == 10, live
        assert touching[-1] == 0, live
        assert all(levels_of(m).get(("NO", "0.45"), 0) == 0 for m in live), "the filled taker never rests"

        # The private feeds on B: each agent gets its own fill and ends at the balance A's API reports.
        for agent, order, role, fill_price in (
            (alice, resting["order"], "maker", "0.60"),
            (bob, taking["order"], "taker", "0.40"),
        ):
            private = alice_feed if agent is alice else bob_feed
            fill = private.until(lambda m: m["type"] == "fill", f"{agent['name']}'s fill", STEP)["fill"]
            assert fill["order"] == order["id"], fill
            assert (fill["role"], fill["price"], fill["fill_price"], fill["size"]) == (role, "0.60", fill_price, 10)
            me = api(a.url, "GET", "/agents/me/", api_key=agent["api_key"])
            private.until(
                lambda m, me=me: (
                    m["type"] == "balance"
                    and (m["balance"], m["locked_balance"]) == (me["balance"], me["locked_balance"])
                ),
                f"{agent['name']}'s balance {me['balance']} (locked {me['locked_balance']})",
                STEP,
            )

        # Nothing of anyone else's: neither agent's feed ever mentions the other's order.
        for feed_of, own, other in ((alice_feed, resting, taking), (bob_feed, taking, resting)):
            for message in feed_of.received:
                if message["type"] == "order":
                    assert message["order"]["id"] == own["order"]["id"], message
                if message["type"] == "fill":
                    assert message["fill"]["order"] == own["order"]["id"], message
                assert other["order"]["id"] not in json.dumps(message), message
