"""What the SDK sends for batches, amendments, previews and heartbeats, what it refuses before sending, and which of
them it repeats after a lost answer, against ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from moltstreet_client import (
    AsyncClient,
    Client,
    InsufficientBalance,
    NotFound,
    OrderNotCancellable,
    OrderRequest,
    TransportError,
)

BASE = "http://exchange.test"
MARKET = "7b0c3c1e-8f2a-4b5e-9d3c-2a1f0e9d8c7b"
FIRST = "5c4b3a29-1807-4f6e-9d5c-4b3a2918f7e6"
SECOND = "6d5c4b3a-2918-4f7e-8d6c-5b4a3928f8e7"


def order(order_id: str = FIRST, client_order_id: str | None = "k", **changes) -> dict:
    return {
        "id": order_id,
        "market": MARKET,
        "side": "YES",
        "action": "BUY",
        "price": "0.55",
        "size": 10,
        "filled": 0,
        "remaining": 10,
        "status": "open",
        "time_in_force": "GTC",
        "post_only": False,
        "expires_at": None,
        "client_order_id": client_order_id,
        "cancel_reason": "",
        "replaced_by": None,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
        **changes,
    }


def error(code: str, **detail) -> dict:
    return {"code": code, "message": code.replace("_", " "), "detail": detail}


class Script:
    """A transport answering from a list (a response, an exception to raise, or a callable of the request); it
    records every request, and the client's waits in ``sleeps``."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step

    def bodies(self) -> list[dict]:
        return [json.loads(request.content) if request.content else {} for request in self.requests]

    def client(self) -> Client:
        client = Client(BASE, "key", transport=httpx.MockTransport(self))
        client._sleep = self.sleeps.append
        return client

    def async_client(self) -> AsyncClient:
        client = AsyncClient(BASE, "key", transport=httpx.MockTransport(self))

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        client._sleep = sleep
        return client


def placed(request: httpx.Request) -> httpx.Response:
    """The batch's answer after a lost attempt: the first order a repeat (200), the second refused."""
    first, _second = json.loads(request.content)["orders"]
    return httpx.Response(
        200,
        json={
            "orders": [
                {"status": 200, "order": order(client_order_id=first["client_order_id"]), "trades": [], "error": None},
                {"status": 400, "order": None, "trades": [], "error": error("insufficient_balance", available="1.00")},
            ]
        },
    )


def test_every_order_of_a_batch_is_keyed_and_a_retry_after_a_lost_answer_repeats_the_same_keys():
    script = Script(httpx.ReadTimeout("lost answer"), placed)
    with script.client() as client:
        results = client.place_orders(
            [
                {"market": MARKET, "side": "yes", "action": "buy", "price": 0.55, "size": 10},
                OrderRequest(MARKET, "NO", "BUY", "0.30", 5000, post_only=True, client_order_id="mine"),
            ]
        )
    first, second = script.bodies()
    assert first == second, "the retry sends the same orders with the same keys"
    generated, given = first["orders"]
    assert len(generated["client_order_id"]) == 32 and given["client_order_id"] == "mine"
    assert (generated["side"], generated["action"], generated["price"], generated["time_in_force"]) == (
        "YES",
        "BUY",
        "0.55",
        "GTC",
    )
    assert (given["post_only"], given["size"]) == (True, 5000)
    assert script.requests[0].url.path == "/api/v1/orders/batch/"

    ok, refused = results
    assert ok.ok and ok.created, "a repeat after our own lost attempt is an order this call placed"
    assert ok.order.client_order_id == generated["client_order_id"]
    assert not refused.ok and isinstance(refused.error, InsufficientBalance)
    assert (refused.status, refused.error.detail) == (400, {"available": "1.00"})


def test_two_batches_get_fresh_keys():
    def answer(request):
        return httpx.Response(200, json={"orders": [{"status": 201, "order": order(), "trades": [], "error": None}]})

    script = Script(answer, answer)
    entry = {"market": MARKET, "side": "YES", "action": "BUY", "price": "0.55", "size": 1}
    with script.client() as client:
        assert [r.created for r in client.place_orders([entry])] == [True]
        client.place_orders([entry])
    keys = [body["orders"][0]["client_order_id"] for body in script.bodies()]
    assert keys[0] != keys[1]
    assert "client_order_id" not in entry, "the caller's dict is left as it was"


@pytest.mark.parametrize(
    ("orders", "exception", "words"),
    [
        ([], ValueError, "1-20"),
        ([{"market": MARKET, "side": "YES", "action": "BUY", "price": "0.5", "size": 1}] * 21, ValueError, "1-20"),
        ({"market": MARKET}, TypeError, "must be a list"),
        ([{"market": MARKET, "side": "YES", "action": "BUY", "price": "0.5"}], TypeError, "orders[0]: missing size"),
        (
            [{"market": MARKET, "side": "YES", "action": "BUY", "price": "0.5", "size": 1, "colour": "red"}],
            TypeError,
            "orders[0]: unknown colour",
        ),
        (
            [OrderRequest(MARKET, "YES", "BUY", "0.5", 1), OrderRequest(MARKET, "YES", "BUY", "0.5", 1.5)],
            TypeError,
            "orders[1]: size",
        ),
        ([OrderRequest(MARKET, "MAYBE", "BUY", "0.5", 1)], ValueError, "orders[0]: side"),
        (["not an order"], TypeError, "orders[0] must be an OrderRequest or a dict"),
    ],
)
def test_a_batch_that_is_not_1_to_20_orders_is_refused_before_sending(orders, exception, words):
    script = Script()
    with script.client() as client, pytest.raises(exception) as caught:
        client.place_orders(orders)
    assert words in str(caught.value)
    assert script.requests == []


def test_a_lost_batch_cancel_answer_reports_the_orders_the_lost_attempt_cancelled():
    cancelled = order(status="cancelled", cancel_reason="user")
    retry = {
        "orders": [
            {"status": 409, "order": None, "error": error("order_not_cancellable", order=FIRST, status="cancelled")},
            {"status": 404, "order": None, "error": error("not_found")},
            {"status": 409, "order": None, "error": error("order_not_cancellable", order=FIRST, status="cancelled")},
        ]
    }
    script = Script(
        httpx.ReadTimeout("lost answer"), httpx.Response(200, json=retry), httpx.Response(200, json=cancelled)
    )
    with script.client() as client:
        first, unknown, again = client.cancel_orders([FIRST, SECOND, FIRST])
    assert [(r.method, r.url.path) for r in script.requests] == [
        ("POST", "/api/v1/orders/batch-cancel/"),
        ("POST", "/api/v1/orders/batch-cancel/"),
        ("GET", f"/api/v1/orders/{FIRST}/"),
    ]
    assert json.loads(script.requests[0].content) == {"ids": [FIRST, SECOND, FIRST]}
    assert first.ok and (first.status, first.order.status, first.error) == (200, "cancelled", None)
    assert isinstance(unknown.error, NotFound) and not unknown.ok
    assert isinstance(again.error, OrderNotCancellable), "a second mention of an id is refused, lost answer or not"


def test_a_batch_cancel_answered_at_once_reads_nothing_more():
    answer = {
        "orders": [
            {"status": 200, "order": order(status="cancelled", cancel_reason="user"), "error": None},
            {"status": 409, "order": None, "error": error("order_not_cancellable", order=SECOND, status="cancelled")},
        ]
    }
    script = Script(httpx.Response(200, json=answer))
    with script.client() as client:
        results = client.cancel_orders([FIRST, SECOND])
    assert [r.ok for r in results] == [True, False] and len(script.requests) == 1
    with script.client() as client, pytest.raises(ValueError):
        client.cancel_orders([FIRST] * 21)


def test_an_amend_sends_only_what_changes_and_is_not_repeated_after_a_lost_answer():
    replacement = order(SECOND, price="0.60")
    answer = {"order": replacement, "replaced": order(status="cancelled", cancel_reason="amended", replaced_by=SECOND)}
    script = Script(httpx.Response(200, json={**answer, "trades": []}), httpx.ReadTimeout("lost answer"))
    with script.client() as client:
        amended = client.amend_order(FIRST, price=0.6)
        assert (amended.order.id, amended.replaced.replaced_by, amended.trades) == (SECOND, SECOND, [])
        with pytest.raises(TransportError):
            client.amend_order(FIRST, size=4)
        with pytest.raises(ValueError):
            client.amend_order(FIRST)
        with pytest.raises(TypeError):
            client.amend_order(FIRST, size=2.0)
    assert [(r.method, r.url.path) for r in script.requests] == [("PATCH", f"/api/v1/orders/{FIRST}/")] * 2
    assert script.bodies() == [{"price": "0.60"}, {"size": 4}]


def test_a_preview_is_a_dry_run_with_no_generated_key_and_is_retried():
    answer = {"dry_run": True, "status": 201, "error": None, "order": order(None, None), "fills": []}
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200, json=answer), httpx.Response(200, json=answer))
    with script.client() as client:
        preview = client.preview_order(MARKET, "YES", "BUY", "0.55", 10)
        client.preview_order(MARKET, "YES", "BUY", "0.55", 10, client_order_id="mine")
    first, retried, keyed = script.bodies()
    assert first == retried and first["dry_run"] is True
    assert "client_order_id" not in first, "a preview of a fresh key could only ever say 'new'"
    assert keyed["client_order_id"] == "mine"
    assert preview.ok and preview.order.id is None and preview.status == 201


def test_a_heartbeat_sends_whole_seconds_and_is_retried():
    answer = {"armed": True, "timeout_seconds": 30, "deadline": "2026-01-01T00:00:30Z", "cancelled": 0}
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200, json=answer))
    with script.client() as client:
        beat = client.heartbeat(30)
        for wrong in ("30", 30.0, True):
            with pytest.raises(TypeError):
                client.heartbeat(wrong)
    assert beat.armed and beat.deadline.tzinfo is not None
    assert script.bodies() == [{"timeout_seconds": 30}] * 2
    assert script.requests[0].url.path == "/api/v1/agents/me/heartbeat/"


def test_the_async_client_keys_batches_recovers_cancels_and_never_repeats_an_amend():
    cancelled = order(status="cancelled", cancel_reason="user")
    retry = {
        "orders": [
            {"status": 409, "order": None, "error": error("order_not_cancellable", order=FIRST, status="cancelled")}
        ]
    }
    beat = {"armed": False, "timeout_seconds": None, "deadline": None, "cancelled": 0}
    script = Script(
        httpx.ReadTimeout("lost"),
        placed,
        httpx.ReadTimeout("lost"),
        httpx.Response(200, json=retry),
        httpx.Response(200, json=cancelled),
        httpx.ReadTimeout("lost"),
        httpx.Response(200, json={"dry_run": True, "status": 201, "error": None, "order": order(None, None)}),
        httpx.Response(200, json=beat),
    )
    entry = {"market": MARKET, "side": "YES", "action": "BUY", "price": "0.55", "size": 1}

    async def scenario():
        async with script.async_client() as client:
            results = await client.place_orders([entry, {**entry, "size": 9000}])
            [cancel] = await client.cancel_orders([FIRST])
            with pytest.raises(TransportError):
                await client.amend_order(FIRST, price="0.50")
            preview = await client.preview_order(MARKET, "YES", "BUY", "0.55", 1)
            return results, cancel, preview, await client.heartbeat(0)

    (ok, refused), cancel, preview, disarmed = asyncio.run(scenario())
    bodies = script.bodies()
    assert bodies[0] == bodies[1] and all(o["client_order_id"] for o in bodies[0]["orders"])
    assert ok.created and isinstance(refused.error, InsufficientBalance)
    assert cancel.ok and cancel.order.cancel_reason == "user"
    assert [r.method for r in script.requests] == ["POST", "POST", "POST", "POST", "GET", "PATCH", "POST", "POST"]
    assert "client_order_id" not in bodies[6] and bodies[6]["dry_run"] is True
    assert preview.ok and not disarmed.armed
