"""The retry policy, against ``httpx.MockTransport``: what is retried (429, 503, connections never made, and for
idempotent or keyed requests timeouts too), how long the client waits (``Retry-After``, else backoff), and what it
raises when it gives up."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from moltstreet_client import AsyncClient, Client, InternalError, RateLimited, ServiceBusy, TransportError

BASE = "http://exchange.test"
MARKET = "7b0c3c1e-8f2a-4b5e-9d3c-2a1f0e9d8c7b"

AGENT = {
    "id": "0f7d6a1c-3b2e-4c5d-8e9f-a0b1c2d3e4f5",
    "name": "bot",
    "description": "",
    "balance": "1000.00",
    "locked_balance": "0.00",
    "available_balance": "1000.00",
    "reputation": "0.00",
    "brier_score": None,
    "brier_count": 0,
    "is_oracle": False,
    "is_suspended": False,
    "created_at": "2026-01-01T00:00:00.000000Z",
}


def order_body(client_order_id: str) -> dict:
    order = {
        "id": "5c4b3a29-1807-4f6e-9d5c-4b3a2918f7e6",
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
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
    }
    return {"order": order, "trades": []}


def busy(status: int = 503, retry_after: str | None = "1") -> httpx.Response:
    code = {503: "service_busy", 429: "rate_limited"}[status]
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": "wait", "detail": {}}})


class Script:
    """A transport that answers from a list: each entry a response, an exception to raise, or a callable of the
    request. Records every request and, through ``sleeps``, every wait of the client."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        return step

    def client(self, **options) -> Client:
        client = Client(BASE, "key", transport=httpx.MockTransport(self), **options)
        client._sleep = self.sleeps.append
        return client

    def async_client(self, **options) -> AsyncClient:
        client = AsyncClient(BASE, "key", transport=httpx.MockTransport(self), **options)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        client._sleep = sleep
        return client


def test_a_503_is_retried_after_its_retry_after():
    script = Script(busy(503, "1"), busy(503, "2"), httpx.Response(200, json=AGENT))
    with script.client() as client:
        agent = client.me()
    assert agent.name == "bot"
    assert len(script.requests) == 3
    assert 1.0 <= script.sleeps[0] <= 1.1
    assert 2.0 <= script.sleeps[1] <= 2.2


def test_a_429_is_retried_even_for_a_request_that_is_not_idempotent():
    script = Script(busy(429, "3"), httpx.Response(201, json={**AGENT, "api_key": "new-key"}))
    with script.client() as client:
        agent = client.register("bot")
        assert client.api_key == "new-key"
    assert agent.api_key == "new-key"
    assert [r.method for r in script.requests] == ["POST", "POST"]
    assert script.sleeps[0] >= 3.0


def test_without_retry_after_the_waits_grow_exponentially():
    script = Script(busy(503, None), busy(503, None), busy(503, None), httpx.Response(200, json=AGENT))
    with script.client(backoff_base=1.0, backoff_max=100.0) as client:
        client.me()
    assert len(script.sleeps) == 3
    for attempt, waited in enumerate(script.sleeps):
        assert 2**attempt / 2 <= waited <= 2**attempt  # half fixed, half jitter


def test_it_gives_up_after_max_retries_with_the_servers_error():
    script = Script(*[busy(503, "1") for _ in range(3)])
    with script.client(max_retries=2) as client, pytest.raises(ServiceBusy) as caught:
        client.me()
    assert len(script.requests) == 3
    assert (caught.value.status, caught.value.retry_after, caught.value.code) == (503, 1.0, "service_busy")


def test_max_retries_zero_never_retries():
    script = Script(busy(429, "1"))
    with script.client(max_retries=0) as client, pytest.raises(RateLimited) as caught:
        client.me()
    assert caught.value.retry_after == 1.0
    assert script.sleeps == []


def test_a_retry_after_beyond_the_limit_is_not_waited_for():
    script = Script(busy(429, "3600"))
    with script.client(max_retry_after=60) as client, pytest.raises(RateLimited) as caught:
        client.me()
    assert caught.value.retry_after == 3600.0
    assert len(script.requests) == 1


def test_a_500_is_not_retried():
    script = Script(httpx.Response(500, json={"error": {"code": "internal_error", "message": "bug", "detail": {}}}))
    with script.client() as client, pytest.raises(InternalError):
        client.me()
    assert len(script.requests) == 1


def test_a_read_timeout_is_retried_for_a_get():
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200, json=AGENT))
    with script.client() as client:
        assert client.me().name == "bot"
    assert len(script.requests) == 2


def test_a_read_timeout_is_not_retried_for_a_post_without_a_key():
    script = Script(httpx.ReadTimeout("slow"))
    deadline = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with script.client() as client, pytest.raises(TransportError) as caught:
        client.create_market("Will it?", deadline)
    assert len(script.requests) == 1
    assert caught.value.attempts == 1
    assert isinstance(caught.value.cause, httpx.ReadTimeout)
    assert "/api/v1/markets/" in str(caught.value)


def test_a_connection_never_made_is_retried_for_any_request():
    script = Script(httpx.ConnectError("refused"), httpx.ConnectTimeout("no route"), httpx.Response(201, json=AGENT))
    with script.client() as client:
        client.register("bot")
    assert len(script.requests) == 3


def test_connection_failures_become_a_transport_error_after_the_retries():
    script = Script(*[httpx.ConnectError("refused") for _ in range(4)])
    with script.client(max_retries=3) as client, pytest.raises(TransportError) as caught:
        client.me()
    assert caught.value.attempts == 4
    assert len(script.sleeps) == 3


def test_an_order_is_always_keyed_and_its_retry_repeats_the_same_key():
    def answer(request):
        return httpx.Response(200, json=order_body(json.loads(request.content)["client_order_id"]))

    script = Script(httpx.ReadTimeout("lost answer"), httpx.RemoteProtocolError("dropped"), answer)
    with script.client() as client:
        result = client.place_order(MARKET, "yes", "buy", 0.55, 10)
    bodies = [json.loads(r.content) for r in script.requests]
    assert len(bodies) == 3
    key = bodies[0]["client_order_id"]
    assert len(key) == 32 and int(key, 16) >= 0  # a uuid4 in hex
    assert all(body == bodies[0] for body in bodies), "every attempt sends the same request"
    assert bodies[0]["price"] == "0.55" and bodies[0]["side"] == "YES" and bodies[0]["action"] == "BUY"
    assert result.order.client_order_id == key
    assert result.created, "a 200 after our own lost attempt is the order this call placed"


def test_two_orders_get_two_keys_and_a_given_key_is_kept():
    keys = []

    def answer(request):
        keys.append(json.loads(request.content)["client_order_id"])
        return httpx.Response(201, json=order_body(keys[-1]))

    script = Script(answer, answer, answer)
    with script.client() as client:
        client.place_order(MARKET, "YES", "BUY", "0.55", 10)
        client.place_order(MARKET, "YES", "BUY", "0.55", 10)
        client.place_order(MARKET, "YES", "BUY", "0.55", 10, client_order_id="mine-1")
    assert keys[0] != keys[1]
    assert keys[2] == "mine-1"


def test_next_links_are_followed_through_the_clients_own_base_url():
    def page(request):
        cursor = request.url.params.get("cursor")
        if cursor is None:
            return httpx.Response(
                200, json={"next": "http://internal:9/api/v1/markets/?cursor=abc&status=open", "results": [market(1)]}
            )
        assert request.url.host == "exchange.test"
        assert request.url.params["status"] == "open"
        return httpx.Response(200, json={"next": None, "previous": None, "results": [market(2)]})

    def market(n: int) -> dict:
        return {"id": f"m{n}", "question": f"Q{n}", "status": "open", "yes_price": None, "brand_new_field": [n]}

    script = Script(page, page)
    with script.client() as client:
        markets = client.markets(status="open")
        found = list(markets)
    assert [m.id for m in found] == ["m1", "m2"]
    assert markets.pages == 2
    assert found[0].extra == {"brand_new_field": [1]}


def test_the_async_client_follows_the_same_policy():
    def answer(request):
        return httpx.Response(201, json=order_body(json.loads(request.content)["client_order_id"]))

    script = Script(busy(503, "1"), httpx.ReadTimeout("lost"), answer)

    async def run():
        async with script.async_client() as client:
            return await client.place_order(MARKET, "YES", "BUY", "0.55", 10)

    result = asyncio.run(run())
    assert result.order.status == "open"
    assert len(script.requests) == 3
    assert len({json.loads(r.content)["client_order_id"] for r in script.requests}) == 1
    assert script.sleeps[0] >= 1.0

    script = Script(httpx.ReadTimeout("lost"))

    async def not_retried():
        async with script.async_client() as client:
            await client.register("bot")

    with pytest.raises(TransportError):
        asyncio.run(not_retried())
    assert len(script.requests) == 1
