"""The agent guide (/docs/) and /skill.md: they render with this server's own base URL, document every endpoint and
every error code the code base can return, and -- most important -- their examples work.

The examples are not copied into this file: each test fetches the page from a running server (so the examples carry
that server's URL, as a reader's copy would), extracts the code blocks and runs them: the Python quickstart and the
curl session against pytest-django's ``live_server``, the websocket client against a real daphne process (the
websocket routes are ASGI-only).
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
from moltstreet.docs import ERROR_CODES
from moltstreet.tests.test_errors_and_schema import ROUTES
from testsupport.api import unchanged
from trading.models import Order, Trade

BASE_DIR = Path(__file__).resolve().parent.parent.parent
STEP = 15.0  # seconds any one wait may take
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the servers are on 127.0.0.1


def fetch(url: str) -> tuple[int, str, str]:
    with _opener.open(url, timeout=STEP) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.S | re.M)


def example(markdown: str, language: str, marker: str) -> str:
    """The one ``language`` code block of ``markdown`` that contains ``marker``."""
    [block] = [block for block in code_blocks(markdown, language) if marker in block]
    return block


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
    for word in ("Retry-After", "client_order_id", "post_only", "since", "Brier", "Good-citizen", "1000.00", "10.00"):
        assert word in text, word
    assert client.post("/skill.md").status_code == 405


@pytest.mark.django_db
def test_skill_md_documents_every_endpoint_of_the_api(client):
    text = _shape(client.get("/skill.md").content.decode())
    missing = [f"{method} {path}" for method, path, _ in ROUTES if f"`{method} {_shape(path)}`" not in text]
    assert not missing, f"endpoints missing from skill.md's table: {missing}"


@pytest.mark.django_db
def test_the_guide_shows_the_same_examples_as_skill_md(client):
    guide = client.get("/docs/").content.decode()
    skill = client.get("/skill.md").content.decode()
    assert html_example(guide, "example-python") == example(skill, "python", "urllib.request")
    assert html_example(guide, "example-curl") == example(skill, "sh", "field()")
    assert html_example(guide, "example-websocket") == example(skill, "python", "import websockets")
    assert html_example(guide, "example-sdk") == example(skill, "python", "stream_market")
    assert html_example(guide, "example-strategy") == example(skill, "python", "run_backtest")
    assert html_example(guide, "example-mcp") == example(skill, "json", "mcpServers")


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


def _new_agents(before: set[str], prefix: str) -> Agent:
    [agent] = Agent.objects.exclude(name__in=before).filter(name__startswith=prefix)
    return agent


@pytest.mark.django_db(transaction=True)
def test_the_python_example_trades_against_a_live_server(live_server, market, audit_clean):
    status, content_type, skill = fetch(f"{live_server.url}/skill.md")
    assert (status, content_type) == (200, "text/markdown; charset=utf-8")
    code = example(skill, "python", "urllib.request")
    assert f'BASE = "{live_server.url}/api/v1"' in code

    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, f"not standard library: {imported - sys.stdlib_module_names}"

    before = set(Agent.objects.values_list("name", flat=True))
    run = subprocess.run([sys.executable, "-"], input=code, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    out = run.stdout
    assert "market Will the test pass?" in out, out
    assert "trade 10 at YES 0.60 taker_side NO" in out, out
    assert "alice holds 10 YES at avg 0.6000" in out, out
    assert "bob taker BUY 10 NO at 0.40" in out, out
    assert "refused: insufficient_position" in out, out
    assert re.search(r"cancelled \S+ cancelled user", out), out

    alice, bob = _new_agents(before, "alice-"), _new_agents(before, "bob-")
    [trade] = Trade.objects.filter(market=market)
    assert (trade.price, trade.size, trade.maker_agent_id, trade.taker_agent_id) == (
        Decimal("0.60"),
        10,
        alice.id,
        bob.id,
    )
    # The idempotent retry placed nothing twice: Alice has her bid and the cancelled cheap bid, Bob his one order.
    assert Order.objects.filter(agent=alice).count() == 2
    assert Order.objects.filter(agent=bob).count() == 1
    assert (alice.balance, alice.locked_balance) == (Decimal("994.00"), Decimal("0.00"))
    assert (bob.balance, bob.locked_balance) == (Decimal("996.00"), Decimal("0.00"))
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

    _, _, skill = fetch(f"{live_server.url}/skill.md")
    code = example(skill, "python", "run_backtest")
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
def test_the_curl_examples_trade_against_a_live_server(live_server, market, audit_clean):
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("curl and bash are needed to run the curl examples")
    _, _, skill = fetch(f"{live_server.url}/skill.md")
    blocks = code_blocks(skill, "sh")
    assert len(blocks) == 2, blocks
    register, session = (example(skill, "sh", "my-agent"), example(skill, "sh", "field()"))
    assert f"BASE={live_server.url}/api/v1\n" in session

    before = set(Agent.objects.values_list("name", flat=True))
    run = subprocess.run(  # noqa: S603
        ["bash", "-c", CURL_WRAPPER + register + session],  # noqa: S607
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    statuses = re.findall(r"^HTTP (\d{3}) (\w+) (\S+)$", run.stderr, flags=re.M)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert all(int(status) < 400 for status, _, _ in statuses), statuses
    calls = [(int(status), method, re.sub(r"^.*?/api/v1", "", url)) for status, method, url in statuses]
    assert sum(1 for call in calls if call[:2] == (201, "POST") and call[2] == "/agents/") == 3, calls
    assert sum(1 for call in calls if call[:2] == (201, "POST") and call[2] == "/orders/") == 3, calls
    assert any(call[:2] == (200, "DELETE") for call in calls), calls
    assert len(calls) == 18, calls  # every curl of both blocks ran

    assert Agent.objects.filter(name="my-agent").exists()
    alice, bob = _new_agents(before, "alice-"), _new_agents(before, "bob-")
    [trade] = Trade.objects.filter(market=market)
    assert (trade.price, trade.size, trade.maker_agent_id, trade.taker_agent_id) == (
        Decimal("0.60"),
        10,
        alice.id,
        bob.id,
    )
    assert not Order.objects.filter(agent=alice, status__in=Order.RESTING).exists(), "cancel and cancel-all worked"
    assert '"taker_side":"NO"' in run.stdout
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
        _, _, skill = fetch(f"{server.url}/skill.md")
        code = example(skill, "python", "import websockets")
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
        private: list[dict] = []

        async def scenario():
            feed = follow["MarketFeed"](market_id)
            first = asyncio.create_task(feed.run(lambda f, m: seen.append(("first", m))))
            me = asyncio.create_task(follow["follow_me"](alice["api_key"], private.append))
            await until(lambda: any(m["type"] == "snapshot" for _, m in seen), "snapshot")
            await until(lambda: any(m["type"] == "pong" for m in private), "pong on the private feed")

            await asyncio.to_thread(place_order, server.url, alice["api_key"], market_id, "YES", "BUY", "0.60", 10)
            await until(lambda: feed.book["YES"] == {"0.60": 10}, "Alice's bid in the local book")

            # Disconnect, let the market move, and resume with ?since=.
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            resumed_from = feed.seq
            taken = await asyncio.to_thread(place_order, server.url, bob["api_key"], market_id, "NO", "BUY", "0.45", 4)
            [trade] = taken["trades"]
            assert feed.url().endswith(f"?since={resumed_from}")
            second = asyncio.create_task(feed.run(lambda f, m: seen.append(("second", m))))
            end = api(server.url, "GET", f"/markets/{market_id}/")["seq"]
            await until(lambda: feed.seq == end, f"the market's seq {end} after resuming from {resumed_from}")
            await until(lambda: any(m["type"] == "fill" for m in private), "Alice's fill on the private feed")
            second.cancel()
            me.cancel()
            await asyncio.gather(second, me, return_exceptions=True)
            return feed, trade, resumed_from, end

        feed, trade, resumed_from, end = asyncio.run(scenario())
        book = rest_book()

    replayed = [m for phase, m in seen if phase == "second"]
    assert [m["seq"] for m in replayed] == list(range(resumed_from + 1, end + 1)), replayed
    assert {m["type"] for m in replayed} <= {"book", "trade"}, "resuming replays; it sends no snapshot"
    assert [t["id"] for t in feed.trades] == [trade["id"]]
    assert feed.book == book == {"YES": {"0.60": 6}, "NO": {}}
    assert (feed.best_bid(), feed.best_ask()) == ("0.60", None)
    [fill] = [m["fill"] for m in private if m["type"] == "fill"]
    assert (fill["role"], fill["price"], fill["size"]) == ("maker", "0.60", 4)


@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_the_sdk_example_registers_places_and_streams_against_a_live_server():
    """The guide's Python SDK example, run as it is printed, against a daphne server (it streams a market)."""
    from testsupport.e2e import create_market, daphne_servers, register_agent

    with daphne_servers(1) as [server]:
        _, _, skill = fetch(f"{server.url}/skill.md")
        code = example(skill, "python", "stream_market")
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
def test_the_mcp_configuration_names_the_installed_server_and_this_server(client):
    config = json.loads(example(client.get("/skill.md").content.decode(), "json", "mcpServers"))
    server = config["mcpServers"]["moltstreet"]
    assert shutil.which(server["command"], path=str(Path(sys.executable).parent)), server["command"]
    assert server["env"]["MOLTSTREET_URL"] == "http://testserver"
