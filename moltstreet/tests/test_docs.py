"""The agent guide (/docs/), /skill.md and the example files (/skill/examples/<name>): they render with this server's
own base URL, the guide documents every endpoint, both list every error code the code base can return, /skill.md
stays within its word budget, and -- most important -- the examples work.

The examples are not copied into this file: each test fetches the example file from a running server (so it carries
that server's URL, as a reader's copy would) and runs it: the Python quickstart and the curl session against
pytest-django's ``live_server`` with the house market maker's quotes in the book, the websocket client and the SDK
against a real daphne process (the websocket routes are ASGI-only).
"""

from __future__ import annotations

import ast
import asyncio
import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from rest_framework import exceptions as drf_exceptions

from agents.models import Agent
from moltstreet import errors
from moltstreet.docs import ERROR_CODES, EXAMPLE_FILES
from moltstreet.tests.test_errors_and_schema import ROUTES
from testsupport.api import unchanged
from trading.models import Order, Trade

BASE_DIR = Path(__file__).resolve().parent.parent.parent
STEP = 15.0  # seconds any one wait may take
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the servers are on 127.0.0.1


def fetch(url: str) -> tuple[int, str, str]:
    with _opener.open(url, timeout=STEP) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def served(base_url: str, name: str) -> str:
    """Example file ``name`` as the server serves it at /skill/examples/<name>."""
    status, _, text = fetch(f"{base_url}/skill/examples/{name}")
    assert status == 200, name
    return text


def html_example(page: str, element_id: str) -> str:
    match = re.search(rf'<code[^>]*id="{element_id}"[^>]*>(.*?)</code>', page, flags=re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for an example: no proxies between it and 127.0.0.1, no MARKET preset."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "MARKET"}
    return {**env, **extra}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


# --------------------------------------------------------------------------------------------------------------------
# The pages


@pytest.mark.django_db
def test_the_guide_renders_with_the_servers_own_base_url(client):
    response = client.get("/docs/", HTTP_HOST="localhost:8123")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    page = response.content.decode()
    assert "<title>Agent guide" in page
    assert 'class="site-header"' in page, "the guide extends templates/base.html"
    assert 'href="/skill.md"' in page
    assert "http://localhost:8123/api/v1" in page
    assert "ws://localhost:8123/ws/markets/" in page
    assert "127.0.0.1:8000" not in page, "every example uses the server's own URL"

    secure = client.get("/docs/", HTTP_HOST="localhost", secure=True).content.decode()
    assert "https://localhost/api/v1" in secure
    assert "wss://localhost/ws/agent/" in secure


@pytest.mark.django_db
def test_skill_md_is_markdown_with_the_servers_own_base_url(client):
    response = client.get("/skill.md", HTTP_HOST="localhost:8123")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode()
    assert text.startswith("---\nname: moltstreet\n")
    assert "API base URL: `http://localhost:8123/api/v1`" in text
    assert "ws://localhost:8123/ws/markets/" in text
    assert "127.0.0.1:8000" not in text
    for word in ("Retry-After", "client_order_id", "post_only", "since", "Brier", "House rules", "1000.00"):
        assert word in text, word
    for word in ("is_historical", "reference_price", "invalid_request", "/docs/", "/api/schema/"):
        assert word in text, word
    assert "pip install --index-url http://localhost:8123/simple/ moltstreet-client" in text
    assert 'uvx --index-url http://localhost:8123/simple/ --from "moltstreet-client[mcp]" moltstreet-mcp' in text
    assert "api_key=" not in text, "the key goes in the Authorization header, never in a URL"
    # pip trusts a plain-HTTP index only on this machine: to another host the install line says to trust it.
    remote = client.get("/skill.md", HTTP_HOST="testserver").content.decode()
    assert "pip install --index-url http://testserver/simple/ --trusted-host testserver moltstreet-client" in remote
    secure = client.get("/skill.md", HTTP_HOST="testserver", secure=True).content.decode()
    assert "pip install --index-url https://testserver/simple/ moltstreet-client" in secure
    assert client.post("/skill.md").status_code == 405


# Where the guide shows each example file.
GUIDE_ELEMENTS = {
    "quickstart.py": "example-python",
    "quickstart.sh": "example-curl",
    "quoting.py": "example-quoting",
    "websocket.py": "example-websocket",
    "sdk.py": "example-sdk",
    "strategy.py": "example-strategy",
    "mcp.json": "example-mcp",
}

# /skill.md is an agent's first read: it must stay lean, and point to the rest.
SKILL_WORD_BUDGET = 2500


@pytest.mark.django_db
def test_skill_md_stays_within_its_word_budget(client):
    text = client.get("/skill.md", HTTP_HOST="localhost:8123").content.decode()
    words = len(text.split())
    assert words <= SKILL_WORD_BUDGET, f"/skill.md has {words} words; the budget is {SKILL_WORD_BUDGET}"
    # The worked example trades one agent against the book, as the house rules ask.
    assert "Never register agents to farm the grant or to trade with each other" in text


@pytest.mark.django_db
def test_the_guide_documents_every_endpoint_of_the_api(client):
    guide = html.unescape(client.get("/docs/").content.decode())
    text = _shape(re.sub(r"</?code>", "`", guide))
    missing = [f"{method} {path}" for method, path, _ in ROUTES if f"`{method} {_shape(path)}`" not in text]
    assert not missing, f"endpoints missing from the guide's table: {missing}"


@pytest.mark.django_db
def test_skill_md_links_every_example_file_and_each_is_served_with_the_servers_url(client):
    skill = client.get("/skill.md", HTTP_HOST="localhost:8123").content.decode()
    guide = client.get("/docs/", HTTP_HOST="localhost:8123").content.decode()
    index = client.get("/skill/examples/", HTTP_HOST="localhost:8123")
    assert index["Content-Type"] == "text/markdown; charset=utf-8"
    for name in EXAMPLE_FILES:
        url = f"http://localhost:8123/skill/examples/{name}"
        assert f"| `{url}` |" in skill, name
        assert url in index.content.decode(), name
        response = client.get(f"/skill/examples/{name}", HTTP_HOST="localhost:8123")
        assert response.status_code == 200, name
        body = response.content.decode()
        assert "localhost:8123" in body and "127.0.0.1:8000" not in body and "{{" not in body, name
        # The guide shows the same file.
        assert html_example(guide, GUIDE_ELEMENTS[name]) == body, name
    assert client.get("/skill/examples/mcp.json")["Content-Type"] == "application/json; charset=utf-8"
    assert client.get("/skill/examples/quickstart.py")["Content-Type"] == "text/plain; charset=utf-8"
    missing = client.get("/skill/examples/nope.py")
    assert missing.status_code == 404
    assert client.post("/skill/examples/quickstart.py").status_code == 405


# --------------------------------------------------------------------------------------------------------------------
# Every error code is in the table


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found)) if found else set()


def _codes_in_source() -> set[str]:
    """Codes passed by name where errors are raised (``code="invalid_price"``) or built (``error_body("...")``)."""
    codes: set[str] = set()
    for package in ("agents", "markets", "trading", "moltstreet"):
        for source in (BASE_DIR / package).rglob("*.py"):
            if "tests" in source.parts or "migrations" in source.parts:
                continue
            text = source.read_text()
            codes |= set(re.findall(r"\bcode=\"([a-z_]+)\"", text))
            codes |= set(re.findall(r"\berror_body\(\s*\"([a-z_]+)\"", text))
    return codes


def test_every_error_code_of_the_code_base_is_in_the_table(client, db):
    import markets.services  # noqa: F401  (every module that defines or raises errors is loaded)
    import trading.orders  # noqa: F401

    classes = {errors.MoltStreetError, *_subclasses(errors.MoltStreetError)}
    defined = {cls.code: cls.http_status for cls in classes}
    drf = {code: cls.status_code for cls, code in errors._DRF_CODES.items()}
    table = {entry.code: entry for entry in ERROR_CODES}
    assert len(table) == len(ERROR_CODES), "a code is listed twice"

    expected = set(defined) | set(drf) | _codes_in_source()
    assert {"invalid_price", "invalid_size", "bad_request", "internal_error"} <= expected, "the source scan works"
    assert expected - set(table) == set(), "codes the API can return but the docs do not list"
    assert set(table) - expected == set(), "codes the docs list but nothing returns"

    for code, status in {**defined, **drf}.items():
        if code != "error":
            assert table[code].status == str(status), (code, table[code].status, status)
    assert table["service_busy"].retryable and table["rate_limited"].retryable
    assert not table["insufficient_balance"].retryable
    assert drf_exceptions.Throttled in errors._DRF_CODES

    guide = client.get("/docs/").content.decode()
    skill = client.get("/skill.md").content.decode()
    for code, entry in table.items():
        row = re.search(rf'<tr id="error-{code}">\s*<td[^>]*><code>{code}</code></td>\s*<td>([^<]+)</td>', guide)
        assert row and row.group(1) == entry.status, f"{code} is not in the guide's error table"
        assert f"| `{code}` | {entry.status} |" in skill, f"{code} is not in skill.md's error table"


# --------------------------------------------------------------------------------------------------------------------
# The examples work against a live server


def _new_agent(before: set[str], prefix: str) -> Agent:
    [agent] = Agent.objects.exclude(name__in=before).filter(name__startswith=prefix)
    return agent


@pytest.fixture
def house_quotes(market, make_agent):
    """The house market maker's two-sided quote in ``market``, as ``run_traders``' maker rests them (post-only, through
    the API): a YES bid at 0.45 and a NO bid at 0.45 (a YES ask at 0.55), 20 contracts each. Returns the maker."""
    from testsupport.api import api_client, place

    maker = make_agent("house-maker-1")
    Agent.objects.filter(pk=maker.pk).update(is_house=True)
    desk = api_client(maker)
    place(desk, market, "YES", "BUY", "0.45", 20, post_only=True)
    place(desk, market, "NO", "BUY", "0.45", 20, post_only=True)
    return maker


def _trades_with_the_house(agent: Agent, maker: Agent) -> list[tuple[str, Decimal, int]]:
    """The agent's trades, oldest first, as (its action, YES price, size); each against the house maker."""
    trades = Trade.objects.filter(taker_agent=agent).order_by("seq")
    assert all(trade.maker_agent_id == maker.id for trade in trades), "it traded against the book, nobody else"
    return [(trade.taker_order.action, trade.price, trade.size) for trade in trades]


@pytest.mark.django_db(transaction=True)
def test_the_python_example_trades_one_agent_against_the_book(live_server, market, house_quotes, audit_clean):
    code = served(live_server.url, "quickstart.py")
    assert f'BASE = "{live_server.url}/api/v1"' in code
    _standard_library_only(code)

    before = set(Agent.objects.values_list("name", flat=True))
    run = subprocess.run([sys.executable, "-"], input=code, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    for line in (
        "market Will the test pass? | source - | reference None",
        "book bid 0.45 ask 0.55",
        "bought 5 of 5 status filled",
        "trade 5 at YES 0.55 taker_side YES",
        "holds 5 YES at avg 0.5500",
        "balance 997.25 locked 0.00 available 997.25",
        "refused: insufficient_position {'side': 'YES', 'required': 10, 'available': 5}",
        "resting open 0.40 locked 2.00",
        "cancelled cancelled user",
        "sold 5 at 0.45",
        "realized P&L -0.50 | holds 0 YES",
        "cancel-all 0 orders",
    ):
        assert line in out, f"{line!r} not in:\n{out}"

    agent = _new_agent(before, "quickstart-")
    assert _trades_with_the_house(agent, house_quotes) == [("BUY", Decimal("0.55"), 5), ("SELL", Decimal("0.45"), 5)]
    # The idempotent retry placed nothing twice: the IOC buy, the cancelled bid, the IOC sell.
    assert Order.objects.filter(agent=agent).count() == 3
    agent.refresh_from_db()
    assert (agent.balance, agent.locked_balance) == (Decimal("999.50"), Decimal("0.00"))
    assert not Order.objects.filter(agent=agent, status__in=Order.RESTING).exists()
    audit_clean()


def _standard_library_only(code: str) -> None:
    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, f"not standard library: {imported - sys.stdlib_module_names}"


@pytest.mark.django_db(transaction=True)
def test_the_quoting_example_uses_the_tools_for_automated_traders(live_server, market, house_quotes, audit_clean):
    """The guide's quoting example, run as printed against the house maker's quotes (YES bid 0.45, YES ask 0.55): the
    heartbeat, a previewed order whose fills match, a batch of two post-only quotes, both amends and a batch-cancel."""
    code = served(live_server.url, "quoting.py")
    assert f'BASE = "{live_server.url}/api/v1"' in code
    _standard_library_only(code)

    before = set(Agent.objects.values_list("name", flat=True))
    run = subprocess.run([sys.executable, "-"], input=code, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    for line in (
        "book bid 0.45 ask 0.55",
        "heartbeat armed True timeout 30 s",
        "preview status 201 error None | balance after 997.25",
        "would fill 5 at YES 0.55 taker_side YES",
        "placed filled | fills match the preview: True",
        "batch entry 201 YES BUY 10 at 0.43 open",
        "batch entry 201 NO BUY 10 at 0.43 open",
        "batch again [200, 200] same orders: True",
        "locked 8.60",
        "amended in place: True size 6 replaced None | locked 6.88",
        "old bid cancelled amended | replaced_by the new order: True",
        "new bid 0.44 size 6 open | same client_order_id: True",
        "refused: order_not_amendable | detail.replaced_by the new order: True",
        "batch-cancel [(200, 'user'), (200, 'user')]",
        "heartbeat armed False | resting orders 0",
    ):
        assert line in out, f"{line!r} not in:\n{out}"

    agent = _new_agent(before, "quoting-")
    assert _trades_with_the_house(agent, house_quotes) == [("BUY", Decimal("0.55"), 5)]
    orders = {(o.side, o.price, o.status, o.cancel_reason): o for o in Order.objects.filter(agent=agent)}
    assert set(orders) == {
        ("YES", Decimal("0.55"), "filled", ""),
        ("YES", Decimal("0.43"), "cancelled", "amended"),
        ("YES", Decimal("0.44"), "cancelled", "user"),
        ("NO", Decimal("0.43"), "cancelled", "user"),
    }, "the repeated batch placed nothing twice"
    old, new = (
        orders[("YES", Decimal("0.43"), "cancelled", "amended")],
        orders[("YES", Decimal("0.44"), "cancelled", "user")],
    )
    assert (old.replaced_by_id, old.size, new.size) == (new.id, 6, 6)
    agent.refresh_from_db()
    assert (agent.balance, agent.locked_balance) == (Decimal("997.25"), Decimal("0.00"))
    assert (agent.heartbeat_timeout, agent.heartbeat_deadline) == (None, None), "the example disarmed its switch"
    audit_clean()


@pytest.mark.django_db
def test_the_strategy_example_backtests_a_market_against_a_live_server(live_server, market, make_agent, audit_clean):
    """The guide's strategy example, run as printed: it fetches the market's recorded history and backtests on it.
    The history is made so the strategy must trade: a resting NO bid at 0.35 (a YES ask at 0.65) and a YES bid at
    0.50, then trades at 0.60, 0.55 (a fall of 0.05: it buys 5 YES at the ask, 0.65) and 0.58 (a rise of 0.03: it
    sells them at the bid, 0.50), so its P&L is 5 x (0.50 - 0.65) = -0.75."""
    from testsupport.api import api_client, place

    asker, bidder, maker, taker = (api_client(make_agent()) for _ in range(4))
    place(asker, market, "NO", "BUY", "0.35", 50)
    place(bidder, market, "YES", "BUY", "0.50", 50)
    for price in ("0.60", "0.55", "0.58"):
        place(maker, market, "YES", "BUY", price, 10)
        taken = place(taker, market, "NO", "BUY", str(Decimal(1) - Decimal(price)), 10)
        assert taken["order"]["status"] == "filled", taken

    code = served(live_server.url, "strategy.py")
    with unchanged(audit_clean):
        run = subprocess.run(
            [sys.executable, "-"], input=code, env=clean_env(), capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert re.search(r"^ +pnl  -0\.75$", run.stdout, flags=re.M), run.stdout
    assert re.search(r"^ +trades  2$", run.stdout, flags=re.M), run.stdout
    assert "2 executions" in run.stdout, run.stdout


CURL_WRAPPER = r"""set -euo pipefail
# Every curl of the example also fails on an HTTP error and reports its status on stderr.
curl() { command curl "$@" --fail-with-body -w '%{stderr}HTTP %{http_code} %{method} %{url_effective}\n'; }
"""


@pytest.mark.django_db(transaction=True)
def test_the_curl_example_trades_one_agent_against_the_book(live_server, market, house_quotes, audit_clean):
    assert shutil.which("curl") and shutil.which("bash"), "curl and bash run the curl example"
    session = served(live_server.url, "quickstart.sh")
    assert f"BASE={live_server.url}/api/v1\n" in session

    before = set(Agent.objects.values_list("name", flat=True))
    run = subprocess.run(  # noqa: S603
        ["bash", "-c", CURL_WRAPPER + session],  # noqa: S607
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    statuses = re.findall(r"^HTTP (\d{3}) (\w+) (\S+)$", run.stderr, flags=re.M)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert all(int(status) < 400 for status, _, _ in statuses), statuses
    calls = [(int(status), method, re.sub(r"^.*?/api/v1", "", url)) for status, method, url in statuses]
    orders = [call[0] for call in calls if call[1:] == ("POST", "/orders/")]
    assert orders == [201, 200, 201], calls  # the repeat answered with the same order
    assert any(call[:2] == (200, "DELETE") for call in calls), calls
    assert len(calls) == 14, calls  # every curl ran

    agent = _new_agent(before, "curl-")
    assert _trades_with_the_house(agent, house_quotes) == [("BUY", Decimal("0.55"), 3)]
    assert Order.objects.filter(agent=agent).count() == 2
    assert not Order.objects.filter(agent=agent, status__in=Order.RESTING).exists(), "cancel and cancel-all worked"
    assert '"taker_side":"YES"' in run.stdout
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# The websocket example follows a market and resumes with ?since= against a real daphne server


def _has_websocket_routes() -> bool:
    from moltstreet.asgi import application

    return "websocket" in getattr(application, "application_mapping", {})


@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_the_websocket_example_follows_a_market_and_resumes_with_since():
    from testsupport.e2e import api, create_market, daphne_servers, place_order, register_agent

    assert _has_websocket_routes(), "moltstreet/asgi.py serves no websocket routes (DESIGN section 8)"
    with daphne_servers(1) as [server]:
        code = served(server.url, "websocket.py")
        assert f'WS = "{server.ws_url}"' in code
        follow = {"__name__": "follow"}
        exec(compile(code, "follow.py", "exec"), follow)  # noqa: S102  (the page's own example)

        creator = register_agent(server.url, "ws-doc-creator")
        alice = register_agent(server.url, "ws-doc-alice")
        bob = register_agent(server.url, "ws-doc-bob")
        market_id = create_market(server.url, creator["api_key"], "Will the websocket example work?")["id"]

        def rest_book() -> dict[str, dict[str, int]]:
            book = api(server.url, "GET", f"/markets/{market_id}/orderbook/")
            return {side.upper(): {lvl["price"]: lvl["size"] for lvl in book[side]} for side in ("yes", "no")}

        async def until(predicate, what: str) -> None:
            deadline = asyncio.get_running_loop().time() + STEP
            while not predicate():
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"no {what} within {STEP:.0f}s; seen: {seen}\n{server.output(3000)}", pytrace=False)
                await asyncio.sleep(0.02)

        seen: list[tuple[str, dict]] = []
        private: list[tuple[str, dict]] = []

        async def scenario():
            feed = follow["MarketFeed"](market_id)
            me = follow["AccountFeed"](alice["api_key"])
            first = asyncio.create_task(feed.run(lambda f, m: seen.append(("first", m))))
            mine = asyncio.create_task(me.run(lambda f, m: private.append(("first", m))))
            await until(lambda: any(m["type"] == "snapshot" for _, m in seen), "snapshot")
            await until(lambda: any(m["type"] == "snapshot" for _, m in private), "the private snapshot")

            placed = await asyncio.to_thread(
                place_order, server.url, alice["api_key"], market_id, "YES", "BUY", "0.60", 10
            )
            await until(lambda: feed.book["YES"] == {"0.60": 10}, "Alice's bid in the local book")
            await until(lambda: placed["order"]["id"] in me.orders, "Alice's resting order in her account")

            # Disconnect both, let the market move, and resume both with ?since=.
            first.cancel()
            mine.cancel()
            await asyncio.gather(first, mine, return_exceptions=True)
            resumed_from, mine_from = feed.seq, me.seq
            taken = await asyncio.to_thread(place_order, server.url, bob["api_key"], market_id, "NO", "BUY", "0.45", 4)
            [trade] = taken["trades"]
            assert feed.url().endswith(f"?since={resumed_from}") and me.url().endswith(f"?since={mine_from}")
            second = asyncio.create_task(feed.run(lambda f, m: seen.append(("second", m))))
            mine = asyncio.create_task(me.run(lambda f, m: private.append(("second", m))))
            end = api(server.url, "GET", f"/markets/{market_id}/")["seq"]
            await until(lambda: feed.seq == end, f"the market's seq {end} after resuming from {resumed_from}")
            await until(lambda: me.fills and me.balance["balance"] == "997.60", "Alice's fill and balance, replayed")
            second.cancel()
            mine.cancel()
            await asyncio.gather(second, mine, return_exceptions=True)
            return feed, me, trade, resumed_from, end, mine_from

        feed, me, trade, resumed_from, end, mine_from = asyncio.run(scenario())
        book = rest_book()

    replayed = [m for phase, m in seen if phase == "second"]
    assert [m["seq"] for m in replayed] == list(range(resumed_from + 1, end + 1)), replayed
    assert {m["type"] for m in replayed} <= {"book", "trade"}, "resuming replays; it sends no snapshot"
    assert [t["id"] for t in feed.trades] == [trade["id"]]
    assert feed.book == book == {"YES": {"0.60": 6}, "NO": {}}
    assert (feed.best_bid(), feed.best_ask()) == ("0.60", None)

    # The private feed missed the fill while it was away and got it on resuming: consecutive seqs, no snapshot.
    again = [m for phase, m in private if phase == "second"]
    assert [m["seq"] for m in again] == list(range(mine_from + 1, me.seq + 1)), again
    assert "snapshot" not in {m["type"] for m in again} and again[-1]["type"] == "balance"
    [fill] = me.fills
    assert (fill["role"], fill["price"], fill["size"]) == ("maker", "0.60", 4)
    [order] = me.orders.values()
    assert (order["filled"], order["remaining"], order["status"]) == (4, 6, "partial")
    assert me.balance == {"balance": "997.60", "locked_balance": "3.60", "available_balance": "994.00"}
    assert me.positions[market_id]["yes_shares"] == 4


@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_the_sdk_example_registers_places_and_streams_against_a_live_server():
    """The guide's Python SDK example, run as it is printed, against a daphne server (it streams a market)."""
    from testsupport.e2e import create_market, daphne_servers, register_agent

    with daphne_servers(1) as [server]:
        code = served(server.url, "sdk.py")
        assert f'Client("{server.url}")' in code
        creator = register_agent(server.url, "sdk-doc-creator")
        create_market(server.url, creator["api_key"], "Will the SDK example stream?")
        run = subprocess.run(
            [sys.executable, "-"], input=code, env=clean_env(), capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        assert "order open 0.05 10 in Will the SDK example stream?" in run.stdout, run.stdout
        assert re.search(r"^snapshot seq \d+ best YES bid 0\.05$", run.stdout, flags=re.M), run.stdout


@pytest.mark.django_db
def test_the_mcp_configuration_runs_the_server_from_this_servers_index(client):
    """The configuration names uvx with this server's index (test_package_index.py starts it exactly so)."""
    config = json.loads(client.get("/skill/examples/mcp.json").content.decode())
    server = config["mcpServers"]["moltstreet"]
    assert shutil.which(server["command"], path=str(Path(sys.executable).parent)), server["command"]
    assert server["args"] == [
        "--index-url",
        "http://testserver/simple/",
        "--from",
        "moltstreet-client[mcp]",
        "moltstreet-mcp",
    ]
    assert server["env"]["MOLTSTREET_URL"] == "http://testserver"
