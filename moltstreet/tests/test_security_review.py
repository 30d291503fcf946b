"""The security review's findings, each reproduced as the review did it, against the public surface (HTTP, the admin,
the websocket feeds, the management commands, the settings), so that every test here fails on the code before the
fixes (docs/decisions.md 49-56 say what was chosen). The deployment half of finding 6 (``check --deploy``) is in
test_deploy.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.messages import constants, get_messages
from django.contrib.messages.storage.base import Message
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.management import CommandError, call_command
from django.db import connection
from django.http import HttpRequest
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.safestring import mark_safe

from agents.models import Agent
from testsupport.api import API, api_client, assert_error, place

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parents[2]
PUBLISHED_SECRET_KEY = "moltstreet-insecure-local-development-key-change-me"  # what settings.py shipped
XSS = '<img src=x onerror="alert(document.domain)">'


# --------------------------------------------------------------------------------------------------------------------
# 1. Default secrets


def settings_load(**env: str) -> subprocess.CompletedProcess:
    """Load the settings in a fresh process with ``env`` (and nothing from the test run's own environment)."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "DEBUG": "false"}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; settings.SECRET_KEY"],
        cwd="/",  # away from the checkout's .env
        env={**base, "PYTHONPATH": str(BASE_DIR), "DJANGO_SETTINGS_MODULE": "moltstreet.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_1_with_debug_off_the_server_does_not_start_on_the_published_or_a_missing_secret_key():
    for key in ("", PUBLISHED_SECRET_KEY):
        loaded = settings_load(SECRET_KEY=key)
        assert loaded.returncode != 0, f"settings loaded with SECRET_KEY={key!r}"
        assert "ImproperlyConfigured" in loaded.stderr
    assert settings_load(SECRET_KEY="k" * 10 + "0123456789abcdefghij" * 3).returncode == 0


def test_1_a_messages_cookie_signed_with_the_published_key_renders_nothing_on_the_admin_login(client):
    # The attacker's side: Django's own cookie storage, run with the key the repository published.
    with override_settings(SECRET_KEY=PUBLISHED_SECRET_KEY):
        forged = CookieStorage(HttpRequest())._encode([Message(constants.ERROR, mark_safe(XSS))])  # noqa: S308
    client.cookies["messages"] = forged

    page = client.get("/admin/login/").content.decode()

    assert XSS not in page
    assert "onerror" not in page


def test_1_bootstrap_never_creates_the_operator_with_a_published_or_weak_password(tmp_path, monkeypatch, settings):
    settings.DEBUG = False
    monkeypatch.delenv("MOLTSTREET_ADMIN_USER", raising=False)
    for password in ("", "moltstreet"):  # none given, and the one earlier versions published
        monkeypatch.setenv("MOLTSTREET_ADMIN_PASSWORD", password)
        with pytest.raises(CommandError):
            call_command("bootstrap", data=str(tmp_path))
        assert not get_user_model().objects.filter(username="operator").exists()


def admin_login(client: Client, password: str, *, username: str = "operator", address: str = "203.0.113.9"):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_1_forty_wrong_admin_logins_lock_the_address_out_even_for_the_right_password(client):
    get_user_model().objects.create_superuser("operator", "", "the-right-operator-password")
    for _ in range(40):
        admin_login(client, "guess")

    admin_login(client, "the-right-operator-password")

    assert not logged_in(client)


def test_1_wrong_admin_logins_from_many_addresses_lock_the_username_out(client):
    get_user_model().objects.create_superuser("operator", "", "the-right-operator-password")
    for n in range(40):
        admin_login(client, "guess", address=f"198.51.100.{n + 1}")

    admin_login(client, "the-right-operator-password", address="192.0.2.77")

    assert not logged_in(client)


# --------------------------------------------------------------------------------------------------------------------
# 2. Self-serving oracles


def test_2_an_oracle_cannot_resolve_a_market_it_created_and_trades_in_to_take_another_agents_credits(make_agent):
    oracle, victim = api_client(make_agent("oracle", oracle=True)), make_agent("victim")  # an operator's oracle
    deadline = (timezone.now() + timedelta(days=3)).isoformat()
    market = oracle.post(f"{API}/markets/", {"question": "Will it rain?", "deadline": deadline}).json()
    place(api_client(victim), _Market(market["id"]), "YES", "BUY", "0.60", 100)
    place(oracle, _Market(market["id"]), "NO", "BUY", "0.40", 100)

    response = oracle.post(f"{API}/markets/{market['id']}/resolve/", {"outcome": "NO"})

    assert response.status_code == 409
    shown = api_client().get(f"{API}/markets/{market['id']}/").json()
    assert (shown["status"], shown["outcome"]) == ("open", None)
    assert Agent.objects.get(name="victim").reputation == Decimal("0.00")


class _Market:
    def __init__(self, market_id: str):
        self.id = market_id


# --------------------------------------------------------------------------------------------------------------------
# 3. Sock puppets


def ranks(ordering: str) -> list[str]:
    """The leaderboard in ``ordering``, the puppets left out: their own places may fall, the climber's must stay."""
    response = api_client().get(f"{API}/agents/?ordering={ordering}&page_size=200")
    return [row["name"] for row in response.json()["results"] if not row["name"].startswith("puppet-")]


def admin_resolve(market_id: str, outcome: str) -> None:
    operator = Client()
    user = get_user_model().objects.filter(username="resolver").first()
    operator.force_login(user or get_user_model().objects.create_superuser("resolver", "", "a-long-op-password"))
    data = {"action": f"resolve_{outcome.lower()}", ACTION_CHECKBOX_NAME: [market_id], "post": "yes"}
    response = operator.post("/admin/markets/market/", data)
    assert any("Resolved 1 market" in str(m) for m in get_messages(response.wsgi_request))


@pytest.mark.parametrize("outcome", ["YES", "NO"])
def test_3_two_fresh_agents_bidding_099_on_both_sides_buy_a_third_no_rank(outcome, make_agent, market, audit_clean):
    # The board before: one honest winner (+4.00) and its counterparty; then three agents from one address.
    winner, loser = api_client(make_agent("honest-winner")), api_client(make_agent("honest-loser"))
    honest = api_client(make_agent("honest-market"))
    created = honest.post(f"{API}/markets/", {"question": "Honest?", "deadline": timezone.now() + timedelta(days=1)})
    place(winner, _Market(created.json()["id"]), "YES", "BUY", "0.60", 10)
    place(loser, _Market(created.json()["id"]), "NO", "BUY", "0.40", 10)
    admin_resolve(created.json()["id"], "YES")
    anon = Client(REMOTE_ADDR="198.51.100.23")
    keys = {}
    for name in ("climber", "puppet-a", "puppet-b"):
        registered = anon.post(f"{API}/agents/", {"name": name}, content_type="application/json")
        keys[name] = registered.json()["api_key"]
    before = {"-reputation": ranks("-reputation"), "-balance": ranks("-balance")}

    # A puppet bids 0.99 for YES and the climber sells it NO at 0.01; the other bids 0.99 for NO, sold YES at 0.01.
    place(api_client(key=keys["puppet-a"]), market, "YES", "BUY", "0.99", 1000)
    place(api_client(key=keys["climber"]), market, "NO", "BUY", "0.01", 1000)
    place(api_client(key=keys["puppet-b"]), market, "NO", "BUY", "0.99", 1000)
    place(api_client(key=keys["climber"]), market, "YES", "BUY", "0.01", 1000)

    assert Agent.objects.get(name="climber").balance == Decimal("1980.00")  # the money moved; the rank must not
    assert ranks("-balance").index("climber") == before["-balance"].index("climber")
    admin_resolve(str(market.id), outcome)
    assert ranks("-reputation").index("climber") == before["-reputation"].index("climber")
    assert ranks("-balance").index("climber") == before["-balance"].index("climber")
    assert Agent.objects.get(name="climber").reputation == Decimal("0.00")
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# 4. Cheap denial of service


def test_4_a_search_of_two_thousand_terms_is_refused():
    terms = " ".join(f"w{n}" for n in range(2000))
    assert_error(api_client().get(f"{API}/markets/", {"search": terms}), 400, "invalid_request")
    assert_error(api_client().get(f"{API}/markets/", {"search": "x" * 201}), 400, "invalid_request")
    assert api_client().get(f"{API}/markets/", {"search": "rain tomorrow"}).status_code == 200


def test_4_candles_are_aggregated_by_the_database(market, make_agent):
    place(api_client(make_agent()), market, "YES", "BUY", "0.40", 5)
    place(api_client(make_agent()), market, "NO", "BUY", "0.60", 5)
    with CaptureQueriesContext(connection) as queries:
        response = api_client().get(f"{API}/markets/{market.id}/history/?interval=1d")
    assert response.status_code == 200 and len(response.json()["candles"]) == 1
    assert any("GROUP BY" in query["sql"].upper() for query in queries.captured_queries)


def test_4_requests_with_an_invalid_key_count_against_the_addresss_budget(settings):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "RATES": {**settings.MOLTSTREET["RATES"], "anon": "5/min"}}
    guessing = api_client(key="ms_guessed-key")
    for _ in range(5):
        assert_error(guessing.get(f"{API}/agents/me/"), 401, "invalid_api_key")
    assert_error(guessing.get(f"{API}/agents/me/"), 429, "rate_limited")


@pytest.mark.django_db(transaction=True)
def test_4_websocket_feeds_from_one_address_are_capped(settings, market):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "WEBSOCKETS_PER_ADDRESS": 3}

    async def open_feeds():
        from moltstreet.asgi import application

        feeds = []
        try:
            for port in range(3):
                feed = WebsocketCommunicator(application, f"/ws/markets/{market.id}/")
                feed.scope["client"] = ("198.51.100.8", 40000 + port)
                feeds.append(feed)
                connected, _ = await feed.connect()
                assert connected
                assert (await feed.receive_json_from(timeout=5))["type"] == "snapshot"
            extra = WebsocketCommunicator(application, f"/ws/markets/{market.id}/")
            extra.scope["client"] = ("198.51.100.8", 40009)
            feeds.append(extra)
            await extra.connect()
            refused = await extra.receive_json_from(timeout=5)
            assert (refused["type"], refused["code"]) == ("error", "too_many_connections")
            assert (await extra.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4429}
        finally:
            for feed in feeds:
                await feed.disconnect()

    async_to_sync(open_feeds)()


# --------------------------------------------------------------------------------------------------------------------
# 5. 500s from bad input


def test_5_a_superscript_depth_is_a_400(market):
    assert_error(api_client().get(f"{API}/markets/{market.id}/orderbook/?depth=²"), 400, "invalid_request")


def test_5_a_body_of_a_hundred_thousand_brackets_is_a_400(make_agent):
    client = api_client(make_agent())
    response = client.generic("POST", f"{API}/orders/", "[" * 100_000, content_type="application/json")
    assert_error(response, 400, "malformed_json")


@pytest.mark.django_db(transaction=True)
def test_5_a_frame_of_a_hundred_thousand_brackets_leaves_the_feed_open(market):
    async def send_brackets():
        from moltstreet.asgi import application

        feed = WebsocketCommunicator(application, f"/ws/markets/{market.id}/")
        connected, _ = await feed.connect()
        assert connected
        try:
            await feed.receive_json_from(timeout=5)  # the snapshot
            await feed.send_to(text_data="[" * 100_000)
            answer = await feed.receive_json_from(timeout=5)
            assert (answer["type"], answer["code"]) == ("error", "invalid_message")
            await feed.send_to(text_data=json.dumps({"type": "ping"}))
            assert await feed.receive_json_from(timeout=5) == {"type": "pong"}
        finally:
            await feed.disconnect()

    async_to_sync(send_brackets)()


# --------------------------------------------------------------------------------------------------------------------
# 6. Smaller


def test_6_a_suspended_agent_cannot_forecast(make_agent, market):
    agent = make_agent()
    client = api_client(agent)
    Agent.objects.filter(id=agent.id).update(is_suspended=True)  # the admin's Suspend action sets this flag
    assert_error(client.post(f"{API}/markets/{market.id}/forecast/", {"probability": "0.9"}), 403, "agent_suspended")


def test_6_the_api_docs_load_nothing_from_another_origin():
    page = api_client().get("/api/docs/").content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and not [src for src in sources if "//" in src], sources


def test_6_pages_carry_a_content_security_policy(client, market):
    for path in ("/", f"/markets/{market.id}/", "/agents/", "/docs/", "/api/docs/", "/admin/login/"):
        policy = client.get(path).headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in policy and "default-src 'self'" in policy, (path, policy)


def test_6_metrics_do_not_trust_dockers_bridge_networks_by_default(client):
    assert client.get("/metrics", REMOTE_ADDR="172.17.0.5").status_code == 403
