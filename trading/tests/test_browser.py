"""A real browser on the live market page (DESIGN section 9): Debian's Chromium, headless, driven through Selenium,
against a ``daphne moltstreet.asgi:application`` process on the test database and Redis.

The page is opened once; orders go through the HTTP API as an agent would send them, and the test waits (never
sleeps) until the depth ladder, the trade list, the last price and the volume show them, with no reload: a marker
set on ``window`` after the page loaded must still be there at the end. The reconnect test stops the server under
the open page, trades while it is down, serves again on the same port, and waits for the page to catch up by itself.

Page hooks (the contract with ``templates/pages/market_detail.html`` and ``static/js/market.js``): the root element
carries ``data-market-id`` and ``data-seq``; ``#depth-ladder`` rows carry ``data-side`` (``YES`` bids, ``NO`` asks
shown at the YES ask price) and ``data-price`` (the displayed YES price) and a ``.size`` cell; ``#trades`` rows are
``.trade-row`` with ``data-trade-id``; ``#last-price``, ``#volume``; ``#ws-status`` says "live" while connected.

A missing browser fails the test with the command that installs it; it never skips.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from agents.models import Agent
from markets.models import Market
from moltstreet.testing_e2e import (
    browser_console,
    chromium,
    create_market,
    daphne_servers,
    place_order,
    register_agent,
    require_browser,
)
from trading.services import order_place

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STEP = 15.0  # seconds the page may take to show one change
RECONNECT = 45.0  # seconds to notice a dead socket and reconnect (backoff included)
LIVE = re.compile(r"\blive\b", re.IGNORECASE)

# One read of everything the test looks at, taken in the page in one go (no stale elements between reads).
PAGE_STATE_JS = """
const root = document.querySelector('[data-market-id]');
const text = (sel) => { const el = document.querySelector(sel); return el ? el.textContent.trim() : null; };
return {
  marketId: root ? root.dataset.marketId : null,
  seq: root ? root.dataset.seq : null,
  status: text('#ws-status'),
  lastPrice: text('#last-price'),
  volume: text('#volume'),
  ladder: Array.from(document.querySelectorAll('#depth-ladder [data-side][data-price]')).map((row) => ({
    side: row.dataset.side,
    price: row.dataset.price,
    size: row.querySelector('.size') ? row.querySelector('.size').textContent.trim() : null,
  })),
  trades: Array.from(document.querySelectorAll('#trades .trade-row')).map((row) => row.dataset.tradeId),
  marker: window.__moltstreetMarker === undefined ? null : window.__moltstreetMarker,
};
"""


@pytest.fixture
def server():
    require_browser()  # before starting anything: a missing browser is the first thing to report
    with daphne_servers(1) as [one]:
        yield one


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


class MarketPage:
    """The market page in the browser, read through :data:`PAGE_STATE_JS`."""

    def __init__(self, driver, server, market_id: str):
        self.driver = driver
        self.server = server
        self.market_id = market_id

    def open(self) -> None:
        self.driver.get(f"{self.server.url}/markets/{self.market_id}/")
        state = self.state()
        if state["marketId"] != self.market_id:
            pytest.fail(
                f"/markets/{self.market_id}/ has no root element with its data-market-id: {state}\n"
                f"Page:\n{self.driver.page_source[:2000]}\nServer log:\n{self.server.output(3000)}",
                pytrace=False,
            )
        self.wait(lambda s: s["status"] is not None and LIVE.search(s["status"]), "#ws-status to say live")
        # Survives only if the page is never reloaded.
        self.driver.execute_script("window.__moltstreetMarker = 'set-before-trading';")

    def state(self) -> dict[str, Any]:
        return self.driver.execute_script(PAGE_STATE_JS)

    def ladder(self, state: dict[str, Any] | None = None) -> dict[tuple[str, Decimal], int | None]:
        """``{(side, YES price): size}`` of every ladder row."""
        rows = (state or self.state())["ladder"]
        return {(row["side"], Decimal(row["price"])): digits(row["size"]) for row in rows}

    def wait(self, condition: Callable[[dict[str, Any]], Any], what: str, timeout: float = STEP) -> dict[str, Any]:
        """Wait until ``condition(state)`` holds; fail with the page state, the browser console and the server log."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        seen: dict[str, Any] = {}

        def check(driver):
            seen.update(self.state())
            return dict(seen) if condition(seen) else False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(check)
        except TimeoutException:
            pytest.fail(
                f"The market page did not show {what} within {timeout:.0f}s.\nLast page state: {seen}\n"
                f"Browser console:\n{browser_console(self.driver)}\nServer log:\n{self.server.output(3000)}",
                pytrace=False,
            )

    def ladder_is(self, state: dict[str, Any], expected: dict[tuple[str, str], int]) -> bool:
        return self.ladder(state) == {(side, Decimal(price)): size for (side, price), size in expected.items()}

    def wait_ladder(self, expected: dict[tuple[str, str], int], what: str) -> dict[str, Any]:
        return self.wait(lambda s: self.ladder_is(s, expected), f"{what}: ladder {expected}")


def digits(text: str | None) -> int | None:
    """``"1,000"`` or ``"10 contracts"`` → the integer; ``None`` when there is no number."""
    found = re.sub(r"[^\d]", "", text or "")
    return int(found) if found else None


def test_the_market_page_shows_orders_and_trades_as_they_happen_without_a_reload(server, browser):
    creator = register_agent(server.url, "web-creator")
    alice = register_agent(server.url, "web-alice")
    bob = register_agent(server.url, "web-bob")
    market_id = create_market(server.url, creator["api_key"], "Will the page keep up?")["id"]
    page = MarketPage(browser, server, market_id)
    page.open()

    before = page.state()
    assert before["ladder"] == [], before
    assert before["trades"] == [], before
    assert before["marker"] == "set-before-trading", before

    # A resting YES bid: a new YES level at 0.40.
    place_order(server.url, alice["api_key"], market_id, "YES", "BUY", "0.40", 10)
    page.wait_ladder({("YES", "0.40"): 10}, "the resting YES bid")

    # A resting NO bid at 0.45 is a YES ask at 0.55.
    place_order(server.url, bob["api_key"], market_id, "NO", "BUY", "0.45", 5)
    page.wait_ladder({("YES", "0.40"): 10, ("NO", "0.55"): 5}, "the NO bid as a YES ask")

    # A YES bid at 0.55 crosses the ask: 3 contracts trade at 0.55 and the ask shrinks to 2.
    first = place_order(server.url, alice["api_key"], market_id, "YES", "BUY", "0.55", 3)
    [first_trade] = first["trades"]
    assert (first_trade["price"], first_trade["size"]) == ("0.55", 3), first_trade
    after_first = page.wait(
        lambda s: s["trades"] == [first_trade["id"]] and page.ladder_is(s, {("YES", "0.40"): 10, ("NO", "0.55"): 2}),
        "the first trade in #trades and the ask reduced to 2",
    )
    page.wait(lambda s: "55" in (s["lastPrice"] or ""), "#last-price at 0.55")
    page.wait(lambda s: digits(s["volume"]) == 3, "#volume 3")
    assert after_first["marker"] == "set-before-trading", "the page was reloaded"

    # A NO bid at 0.62 takes the whole YES bid at 0.40: the level goes, the last price moves down, volume 13.
    second = place_order(server.url, bob["api_key"], market_id, "NO", "BUY", "0.62", 10)
    [second_trade] = second["trades"]
    assert (second_trade["price"], second_trade["size"]) == ("0.40", 10), second_trade
    page.wait_ladder({("NO", "0.55"): 2}, "the YES bid removed once filled")
    final = page.wait(
        lambda s: (
            s["trades"] == [second_trade["id"], first_trade["id"]]  # newest first
            and "40" in (s["lastPrice"] or "")
            and digits(s["volume"]) == 13
        ),
        "both trades (newest first), last price 0.40 and volume 13",
    )
    assert final["lastPrice"] != after_first["lastPrice"], final
    # The page applied every change in order: it sits at the market's last seq.
    seq = Market.objects.get(id=market_id).seq
    final = page.wait(lambda s: s["seq"] == str(seq), f"data-seq at the market's seq {seq}")
    assert final["marker"] == "set-before-trading", "the page was reloaded"
    assert LIVE.search(final["status"]), final


def test_the_market_page_catches_up_by_itself_after_the_server_restarts(server, browser):
    creator = register_agent(server.url, "web-creator-2")
    alice = register_agent(server.url, "web-alice-2")
    bob = register_agent(server.url, "web-bob-2")
    market_id = create_market(server.url, creator["api_key"], "Will the page reconnect?")["id"]
    place_order(server.url, alice["api_key"], market_id, "YES", "BUY", "0.30", 4)
    page = MarketPage(browser, server, market_id)
    page.open()
    page.wait_ladder({("YES", "0.30"): 4}, "the bid rendered with the page")

    # The server goes away under the open page, which must notice.
    server.stop()
    page.wait(lambda s: s["status"] is not None and not LIVE.search(s["status"]), "#ws-status no longer live")

    # Trading goes on while the page is disconnected (through the services: no server is up to take HTTP): Bob
    # takes the whole 0.30 bid, then Alice bids 0.35.
    alice_agent, bob_agent = Agent.objects.get(name=alice["name"]), Agent.objects.get(name=bob["name"])
    missed = order_place(agent=bob_agent, market_id=market_id, side="NO", action="BUY", price="0.70", size=4)
    [missed_trade] = missed.trades
    assert (missed_trade.price, missed_trade.size) == (Decimal("0.30"), 4)
    order_place(agent=alice_agent, market_id=market_id, side="YES", action="BUY", price="0.35", size=6)

    # Served again on the same port: the page reconnects and applies what it missed, without a reload.
    server.start(server.port)
    server.wait_ready()
    state = page.wait(
        lambda s: (
            s["status"] is not None
            and LIVE.search(s["status"])
            and page.ladder_is(s, {("YES", "0.35"): 6})
            and s["trades"] == [str(missed_trade.id)]
        ),
        "the bid placed and the trade made while it was disconnected, live again",
        timeout=RECONNECT,
    )
    assert "30" in (state["lastPrice"] or ""), state
    assert digits(state["volume"]) == 4, state
    assert state["marker"] == "set-before-trading", "the page reloaded instead of catching up"
    seq = Market.objects.get(id=market_id).seq
    page.wait(lambda s: s["seq"] == str(seq), f"data-seq at the market's seq {seq}")

    # And it is live again for what comes next.
    place_order(server.url, bob["api_key"], market_id, "NO", "BUY", "0.50", 2)
    page.wait_ladder({("YES", "0.35"): 6, ("NO", "0.50"): 2}, "a new ask after the reconnect")
