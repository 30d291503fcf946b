"""The async client against a live server: registration, pages, orders, errors and both streams."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from moltstreet_client import (
    AsyncClient,
    InsufficientBalance,
    Market,
    NotFound,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderRequest,
)

pytestmark = pytest.mark.multiprocess

STEP = 15.0


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_the_async_client_registers_trades_and_pages(base_url, fresh_name):
    async def scenario():
        async with (
            AsyncClient(base_url, trust_env=False) as alice,
            AsyncClient(base_url, trust_env=False) as bob,
        ):
            agent = await alice.register(fresh_name("async-a"))
            assert alice.api_key == agent.api_key
            await bob.register(fresh_name("async-b"))
            assert (await alice.me()).balance == Decimal("1000.00")

            tag = fresh_name("tag")
            deadline = datetime.now(UTC) + timedelta(days=3)
            made = [await alice.create_market(f"Async {tag} {n}?", deadline) for n in range(3)]
            pages = alice.markets(search=tag, page_size=2)
            found = [market async for market in pages]
            assert all(isinstance(m, Market) for m in found)
            assert [m.id for m in found] == [m.id for m in reversed(made)] and pages.pages == 2

            market = made[0]
            resting = await alice.place_order(market.id, "YES", "BUY", "0.70", 3)
            taken = await bob.place_order(market, "NO", "BUY", "0.30", 3)
            assert taken.order.status == "filled" and taken.trades[0].price == Decimal("0.70")
            assert (await alice.order(resting.order.id)).status == "filled"
            fills = await bob.fills(market=market).to_list()
            assert [f.fill_price for f in fills] == [Decimal("0.30")]
            assert [p.yes_shares async for p in alice.positions(market=market)] == [3]
            assert (await alice.orderbook(market.id)).yes == []

            with pytest.raises(InsufficientBalance) as caught:
                await alice.place_order(market.id, "YES", "BUY", "0.99", 5000)
            assert caught.value.status == 400 and "available" in caught.value.detail
            with pytest.raises(NotFound):
                await alice.order("00000000-0000-4000-8000-000000000000")

            open_order = await alice.place_order(market.id, "YES", "BUY", "0.05", 1)
            assert (await alice.cancel_order(open_order.order.id)).status == "cancelled"
            assert await alice.cancel_all() == []

    run(scenario())


@pytest.mark.parametrize("batch_ms", [None, 50], ids=["frame per message", "batched frames"])
def test_the_async_streams_yield_the_snapshot_changes_and_fills(base_url, fresh_name, batch_ms):
    async def scenario():
        async with (
            AsyncClient(base_url, trust_env=False) as alice,
            AsyncClient(base_url, trust_env=False) as bob,
        ):
            await alice.register(fresh_name("async-s"))
            await bob.register(fresh_name("async-t"))
            market = await alice.create_market(
                "Will async streams agree?", (datetime.now(UTC) + timedelta(days=3)).isoformat()
            )
            async with (
                alice.stream_market(market.id, timeout=STEP, batch_ms=batch_ms) as stream,
                bob.stream_private(timeout=STEP) as private,
            ):
                snapshot = await stream.__anext__()
                assert snapshot["type"] == "snapshot"
                await private.open()
                await alice.place_order(market.id, "YES", "BUY", "0.52", 2)
                taken = await bob.place_order(market.id, "NO", "BUY", "0.48", 2)
                end = (await alice.market(market.id)).seq

                seen = []
                async for message in stream:
                    seen.append(message["seq"])
                    if message["seq"] == end:
                        break
                assert seen == list(range(snapshot["seq"] + 1, end + 1))
                assert stream.book == await alice.orderbook(market.id)

                # Drop the public connection: the next change still arrives once, after a resume with since.
                stream._connection.transport.abort()
                await alice.place_order(market.id, "YES", "BUY", "0.10", 1)
                message = await stream.recv()
                assert message["seq"] == end + 1 and stream.reconnects == 1

                while True:
                    message = await private.recv()
                    if message["type"] == "fill":
                        break
                assert message["fill"]["order"] == taken.order.id and message["fill"]["role"] == "taker"
            assert stream.closed and private.closed

    run(scenario())


def test_the_async_client_batches_amends_previews_beats_and_cancels_on_disconnect(base_url, fresh_name):
    async def scenario():
        async with (
            AsyncClient(base_url, trust_env=False) as alice,
            AsyncClient(base_url, trust_env=False) as bob,
        ):
            await alice.register(fresh_name("async-n"))
            await bob.register(fresh_name("async-m"))
            market = await alice.create_market("Will the async batch work?", datetime.now(UTC) + timedelta(days=3))
            await bob.place_order(market.id, "NO", "BUY", "0.45", 2)  # a YES ask at 0.55

            preview = await alice.preview_order(market.id, "YES", "BUY", "0.55", 2)
            assert preview.ok and [(f.price, f.size) for f in preview.fills] == [(Decimal("0.55"), 2)]
            assert preview.reserve.credits == Decimal("0.00") and preview.position.yes_shares == 2
            assert await alice.orders().to_list() == [], "a preview stores nothing"

            first, broke, second = await alice.place_orders(
                [
                    OrderRequest(market.id, "YES", "BUY", "0.30", 5),
                    {"market": market.id, "side": "YES", "action": "BUY", "price": "0.99", "size": 5000},
                    {"market": market, "side": "YES", "action": "BUY", "price": "0.20", "size": 5},
                ]
            )
            assert (first.status, broke.status, second.status) == (201, 400, 201)
            assert isinstance(broke.error, InsufficientBalance) and first.ok and second.ok

            amended = await alice.amend_order(first.order.id, price="0.55")
            assert amended.replaced.replaced_by == amended.order.id
            assert [(t.price, t.size) for t in amended.trades] == [(Decimal("0.55"), 2)]
            with pytest.raises(OrderNotAmendable):
                await alice.amend_order(first.order.id, size=4)

            done, twice = await alice.cancel_orders([second.order.id, second.order.id])
            assert done.ok and done.order.status == "cancelled"
            assert isinstance(twice.error, OrderNotCancellable)

            beat = await alice.heartbeat(45)
            assert beat.armed and beat.timeout_seconds == 45
            assert not (await alice.heartbeat(0)).armed

            # The replacement still rests: a cancel_on_disconnect feed closing takes it out.
            async with alice.stream_private(timeout=STEP) as watch:
                await watch.recv()
                guard = await alice.stream_private(timeout=STEP, cancel_on_disconnect=True).open()
                await guard.close()
                while (message := await watch.recv())["type"] != "heartbeat":
                    pass
                assert (message["event"], message["cancelled"]) == ("disconnected", [amended.order.id])
            assert (await alice.order(amended.order.id)).cancel_reason == "disconnected"

    run(scenario())
