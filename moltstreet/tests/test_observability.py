"""Operations: /health/, /metrics and the structured log lines (moltstreet/health.py, metrics.py, logs.py)."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.db import OperationalError
from prometheus_client import REGISTRY

from moltstreet import health, serving
from moltstreet.logs import ContextFilter, JsonFormatter, TextFormatter, bind, formatter, log_context, log_format
from testsupport.api import API, api_client, post_order
from testsupport.e2e import DaphneServer, http_request, server_env

KEY_SHAPE = "ms_" + "z" * 43


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextmanager
def log_lines(formatter: logging.Formatter | None = None) -> Iterator[io.StringIO]:
    """What the configured console handler (settings.LOGGING) writes, into a buffer, in JSON unless told."""
    handler = next(h for h in logging.getLogger().handlers if any(isinstance(f, ContextFilter) for f in h.filters))
    stream = io.StringIO()
    # Swapped as attributes: setStream() flushes the old stream, which may be an earlier test's closed capture (a
    # command run through execute_from_command_line configures logging again).
    previous_stream, previous_formatter = handler.stream, handler.formatter
    handler.stream = stream
    handler.setFormatter(formatter or JsonFormatter())
    try:
        yield stream
    finally:
        handler.stream = previous_stream
        handler.setFormatter(previous_formatter)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------------------
# /health/


@pytest.mark.django_db
def test_health_is_ok_when_the_database_and_redis_answer(client, settings):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "RATES": {**settings.MOLTSTREET["RATES"], "anon": "1/min"}}
    for _ in range(3):  # never rate limited
        response = client.get("/health/")
        assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["channel_layer"] == {
        "status": "ok",
        "latency_ms": body["checks"]["channel_layer"]["latency_ms"],
        "backend": "redis",
    }
    assert "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_health_is_503_fast_when_redis_is_unreachable(client, settings):
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"] = [{"address": "redis://127.0.0.1:1/0"}]  # nothing listens on port 1
    settings.CHANNEL_LAYERS = layers
    started = time.monotonic()
    response = client.get("/health/")
    assert time.monotonic() - started < settings.HEALTH_CHECK_TIMEOUT + 1
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["channel_layer"]["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "ok"


@pytest.mark.django_db
def test_health_is_503_when_the_database_fails(client, monkeypatch):
    def broken() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(health.PROBES["database"], "check", broken)
    response = client.get("/health/")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {"status": "unavailable", "error": "OperationalError"}


@pytest.mark.django_db
def test_a_hanging_check_answers_503_within_the_timeout_and_is_not_started_twice(client, settings, monkeypatch):
    settings.HEALTH_CHECK_TIMEOUT = 0.3
    release, calls = threading.Event(), []

    def stuck() -> None:  # a database that stopped answering
        calls.append(1)
        release.wait(10)

    monkeypatch.setattr(health.PROBES["database"], "check", stuck)
    try:
        for _ in range(3):
            started = time.monotonic()
            response = client.get("/health/")
            assert time.monotonic() - started < 1.5
            assert response.status_code == 503
            assert response.json()["checks"]["database"] == {"status": "unavailable", "error": "timeout"}
        assert calls == [1]  # the later calls joined the one still running
    finally:
        release.set()
    health.PROBES["database"].start().result(timeout=5)


# --------------------------------------------------------------------------------------------------------------------
# /metrics


@pytest.mark.django_db
def test_metrics_count_requests_by_route_not_by_path(client, market):
    before = sample("moltstreet_http_requests_total", method="GET", route="market-detail", status="200")
    client.get(f"{API}/markets/{market.id}/")
    client.get(f"{API}/markets/{market.id}/")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert sample("moltstreet_http_requests_total", method="GET", route="market-detail", status="200") == before + 2
    assert str(market.id) not in text  # ids never become labels
    assert "moltstreet_websocket_connections" in text
    assert "moltstreet_order_place_duration_seconds" in text


@pytest.mark.django_db
def test_metrics_are_refused_to_a_public_address_unless_it_has_the_token(client, settings):
    assert client.get("/metrics").status_code == 200  # loopback
    # Private networks only when listed: 172.17.0.0/16 is Docker's default bridge, any container on the host.
    assert client.get("/metrics", REMOTE_ADDR="172.17.0.5").status_code == 403
    settings.METRICS_ALLOWED_IPS = ["127.0.0.0/8", "10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200  # a Prometheus on a listed network
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert (
        client.get("/metrics", REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
    )
    settings.METRICS_ALLOWED_IPS = []
    assert client.get("/metrics").status_code == 403  # not even loopback


@pytest.mark.django_db
def test_orders_trades_and_refusals_are_counted_with_the_order_latency(
    make_agent, market, django_capture_on_commit_callbacks
):
    maker, taker = api_client(make_agent()), api_client(make_agent())
    placed = sample("moltstreet_orders_placed_total", time_in_force="GTC", status="open")
    filled = sample("moltstreet_orders_placed_total", time_in_force="IOC", status="filled")
    trades, contracts = sample("moltstreet_trades_total"), sample("moltstreet_contracts_traded_total")
    refused = sample("moltstreet_orders_refused_total", code="insufficient_balance")
    timed = sample("moltstreet_order_place_duration_seconds_count", result="created")
    with django_capture_on_commit_callbacks(execute=True):
        assert post_order(maker, market, "YES", "BUY", "0.60", 10).status_code == 201
        assert post_order(taker, market, "NO", "BUY", "0.40", 4, time_in_force="IOC").status_code == 201
        assert (
            post_order(taker, market, "YES", "BUY", "0.99", 100_000).json()["error"]["code"] == "insufficient_balance"
        )
    assert sample("moltstreet_orders_placed_total", time_in_force="GTC", status="open") == placed + 1
    assert sample("moltstreet_orders_placed_total", time_in_force="IOC", status="filled") == filled + 1
    assert sample("moltstreet_trades_total") == trades + 1
    assert sample("moltstreet_contracts_traded_total") == contracts + 4
    assert sample("moltstreet_orders_refused_total", code="insufficient_balance") == refused + 1
    assert sample("moltstreet_order_place_duration_seconds_count", result="created") == timed + 2


@pytest.mark.django_db(transaction=True)
def test_open_websockets_are_gauged_per_feed(settings, market, make_agent):
    from moltstreet.asgi import application

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    agent = make_agent()

    async def scenario() -> list[tuple[float, float]]:
        seen = [
            (
                sample("moltstreet_websocket_connections", feed="market"),
                sample("moltstreet_websocket_connections", feed="agent"),
            )
        ]
        feeds = [
            WebsocketCommunicator(application, f"/ws/markets/{market.id}/"),
            WebsocketCommunicator(
                application, "/ws/agent/", headers=[(b"authorization", f"Bearer {agent.api_key}".encode())]
            ),
        ]
        for feed in feeds:
            connected, _ = await feed.connect(timeout=5)
            assert connected
        refused = WebsocketCommunicator(
            application, "/ws/agent/", headers=[(b"authorization", b"Bearer ms_not-a-real-key-at-all")]
        )
        assert not (await refused.connect(timeout=5))[0]
        # Accepted only to be told why not (a key in the URL): not an open feed, even before its close comes back.
        told = WebsocketCommunicator(application, f"/ws/agent/?api_key={agent.api_key}")
        assert (await told.connect(timeout=5))[0]
        assert (await told.receive_json_from(timeout=5))["code"] == "api_key_in_url"
        seen.append(
            (
                sample("moltstreet_websocket_connections", feed="market"),
                sample("moltstreet_websocket_connections", feed="agent"),
            )
        )
        for feed in feeds:
            await feed.disconnect()
        seen.append(
            (
                sample("moltstreet_websocket_connections", feed="market"),
                sample("moltstreet_websocket_connections", feed="agent"),
            )
        )
        return seen

    (m0, a0), (m1, a1), (m2, a2) = async_to_sync(scenario)()
    assert (m1, a1) == (m0 + 1, a0 + 1)
    assert (m2, a2) == (m0, a0)


# --------------------------------------------------------------------------------------------------------------------
# Log lines


@pytest.mark.django_db
def test_every_line_of_a_request_carries_its_request_id_which_is_returned(client):
    with log_lines() as stream:
        answered = client.get(f"{API}/markets/", HTTP_X_REQUEST_ID="trace-42.a:b")
        generated = client.get(f"{API}/markets/", HTTP_X_REQUEST_ID="not a valid id")
        missing = client.get(f"{API}/no-such-thing/")
    assert answered["X-Request-ID"] == "trace-42.a:b"
    assert len(generated["X-Request-ID"]) == 32 and generated["X-Request-ID"] != "not a valid id"
    lines = parsed(stream)
    assert {"timestamp", "level", "logger", "message", "request_id"} <= set(lines[0])
    assert [line["request_id"] for line in lines if line["logger"] == "moltstreet.access"] == [
        "trace-42.a:b",
        generated["X-Request-ID"],
        missing["X-Request-ID"],
    ]
    # Django's own line about the 404, written after the middleware is done, carries the id too.
    not_found = next(line for line in lines if line["logger"] == "django.request")
    assert not_found["request_id"] == missing["X-Request-ID"]


@pytest.mark.django_db
def test_the_order_path_logs_carry_the_order_market_and_agent(make_agent, market):
    agent = make_agent()
    client = api_client(agent)
    logging.getLogger("trading.orders").setLevel(logging.DEBUG)
    try:
        with log_lines() as stream:
            placed = post_order(client, market, "YES", "BUY", "0.55", 3)
            order_id = placed.json()["order"]["id"]
            cancelled = client.delete(f"{API}/orders/{order_id}/")
    finally:
        logging.getLogger("trading.orders").setLevel(logging.NOTSET)
    assert cancelled.status_code == 200
    lines = parsed(stream)
    ids = {"order_id": order_id, "market_id": str(market.id), "agent_id": str(agent.id)}
    for response in (placed, cancelled):
        request_lines = [line for line in lines if line["request_id"] == response["X-Request-ID"]]
        assert {line["logger"] for line in request_lines} == {"moltstreet.access", "trading.orders"}, request_lines
        for line in request_lines:
            assert {name: line.get(name) for name in ids} == ids, line


@pytest.mark.django_db
def test_an_api_key_never_reaches_the_log(client):
    with log_lines() as stream:
        registered = client.post(f"{API}/agents/", {"name": "secretive"}, content_type="application/json")
        key = registered.json()["api_key"]
        client.get(f"{API}/agents/me/?api_key={key}", HTTP_AUTHORIZATION=f"Bearer {key}")
        client.get(f"{API}/agents/me/", HTTP_AUTHORIZATION=f"Bearer {key}x")  # 401, logged by Django
        client.get(f"/ws/agent/{key}/")  # 404 with the key in the path
        client.get(f"{API}/markets/", HTTP_X_REQUEST_ID=key)  # a key is never taken as a request id
        logging.getLogger("somewhere").warning("a careless line with %s", key, extra={"header": f"Bearer {key}"})
    text = stream.getvalue()
    assert key not in text
    assert key[3:] not in text
    assert "[redacted]" in text
    assert all(line["request_id"] != key for line in parsed(stream))


def test_lines_outside_a_request_carry_the_fields_bound_around_them():
    with log_lines() as stream:
        log = logging.getLogger("moltstreet.tests")
        with log_context(market_id="m-1"):
            log.warning("inside")
        log.warning("outside")
    inside, outside = parsed(stream)
    assert (inside["market_id"], inside["request_id"]) == ("m-1", None)
    assert "market_id" not in outside


def test_text_lines_show_the_fields_after_the_message_and_redact_keys():
    with log_lines(TextFormatter()) as stream, log_context(request_id="r-9"):
        bind(order_id="o-1")
        logging.getLogger("moltstreet.tests").warning("key %s here", KEY_SHAPE)
    line = stream.getvalue().strip()
    assert line.endswith("WARNING moltstreet.tests key [redacted] here request_id=r-9 order_id=o-1"), line


# A text line: date and time, the level (padded to 7), the logger, the message, then key=value fields.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+ .+")


@pytest.mark.django_db
def test_a_text_access_line_reads_method_path_status_duration_and_agent(make_agent):
    agent = make_agent()
    with log_lines(TextFormatter()) as stream:
        response = api_client(agent).get(f"{API}/agents/me/")
    (line,) = [line for line in stream.getvalue().splitlines() if " moltstreet.access " in line]
    request_id = response["X-Request-ID"]
    expected = (
        rf"INFO    moltstreet\.access GET {API}/agents/me/ 200 \d+\.\dms request_id={request_id} agent_id={agent.id}"
    )
    assert TEXT_LINE.fullmatch(line) and re.search(expected + "$", line), line
    assert "method=" not in line and "duration_ms=" not in line, "what the message says is not said twice"


def test_log_format_is_text_unless_told_json(monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert log_format() == "text" and isinstance(formatter(), TextFormatter)
    for value, kind in (("", "text"), ("json", "json"), (" JSON ", "json"), ("text", "text")):
        monkeypatch.setenv("LOG_FORMAT", value)
        assert log_format() == kind, value
    assert isinstance(formatter(), TextFormatter) and isinstance(formatter("json"), JsonFormatter)
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="json or text"):
        log_format()


@pytest.mark.django_db(transaction=True)
def test_the_server_as_make_run_starts_it_writes_readable_lines():
    """daphne with ``make run``'s options and no LOG_FORMAT (output to a file, not a terminal): text lines, the
    server's own and Django's included, each request's access line naming its agent."""
    env = {k: v for k, v in server_env().items() if k != "LOG_FORMAT"}
    with serving.running_servers(1, env, server_class=DaphneServer) as [server]:
        agent = http_request("POST", f"{server.url}{API}/agents/", {"name": "readable-logs"}).body
        me = http_request("GET", f"{server.url}{API}/agents/me/", api_key=agent["api_key"])
        missing = http_request("GET", f"{server.url}/no-such-page/")
        assert (me.status, missing.status) == (200, 404)
        lines = [line for line in server.output(tail=100_000).splitlines() if line.strip()]
    # Each record starts a line of its own; a line indented under it continues it (a warning's source line).
    assert lines and all(TEXT_LINE.fullmatch(line) for line in lines if not line[0].isspace()), "\n".join(lines)
    assert any(" daphne." in line for line in lines), "daphne's own lines"
    assert any(" django.request Not Found: /no-such-page/" in line for line in lines), "Django's own lines"
    access = next(line for line in lines if f"GET {API}/agents/me/ 200 " in line)
    assert access.endswith(f"request_id={me.headers['x-request-id']} agent_id={agent['id']}"), access
    assert agent["api_key"] not in "\n".join(lines)
