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

Every page the tests open is also checked against the Content-Security-Policy (``CONTENT_SECURITY_POLICY`` in
settings: no inline script or style, nothing from another origin): a ``securitypolicyviolation`` listener installed
through the DevTools protocol before any page script runs, and the browser's console, must report no violation. A
canary (an image from another origin, loaded from the test after the page settled) must be reported by both, under
the policy the page's own response header carried: so a test that heard nothing also proves it was listening.
``test_every_page_runs_under_the_content_security_policy`` tours the spectator pages, the agent guide, the API docs
and the admin that way.

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
from testsupport.e2e import (
    browser_console,
    chromium,
    create_market,
    daphne_servers,
    http_json,
    place_order,
    register_agent,
    require_browser,
)
from trading.orders import order_place

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


# Records every Content-Security-Policy violation of the document in window.__cspViolations. Installed with
# Page.addScriptToEvaluateOnNewDocument, so it listens before the first script or stylesheet of the page is parsed.
CSP_LISTENER_JS = """
(() => {
  const seen = [];
  Object.defineProperty(window, "__cspViolations", { value: seen });
  document.addEventListener("securitypolicyviolation", (e) => {
    seen.push({
      directive: e.effectiveDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber,
      column: e.columnNumber, sample: e.sample, disposition: e.disposition, policy: e.originalPolicy,
    });
  }, true);
})();
"""

# The Content-Security-Policy header of the page's own URL, fetched by the page (same origin, same session).
CSP_HEADER_JS = """
const done = arguments[arguments.length - 1];
fetch(location.href, { credentials: "same-origin", cache: "no-store" }).then(
  (response) => done(response.headers.get("content-security-policy")),
  (error) => done("fetch failed: " + error),
);
"""

# An image from an origin the policy does not allow: the browser must block it and report it.
CANARY_HOST = "csp-canary.invalid"
CANARY_JS = "new Image().src = arguments[0];"


def directives(policy: str | None) -> dict[str, list[str]]:
    """``"script-src 'self'; img-src 'self' data:"`` → ``{"script-src": ["'self'"], "img-src": ["'self'", "data:"]}``
    (a header's directives come in no fixed order)."""
    parts = (part.split() for part in (policy or "").split(";"))
    return {part[0].lower(): part[1:] for part in parts if part}


class PolicyCheck:
    """The Content-Security-Policy violations the browser reports on the page it shows.

    Two witnesses: :data:`CSP_LISTENER_JS` (``securitypolicyviolation`` events, with the directive and the offending
    file and line) and the browser's console ("... violates the following Content Security Policy directive ...").
    Chromium's console log is read-and-clear: :meth:`open` drains it before each page.
    """

    def __init__(self, driver):
        self.driver = driver
        self.checked = 0

    def console(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if "Content Security Policy" in e["message"]]

    def open(self, url: str) -> None:
        """Open ``url`` with an empty console: whatever is left belongs to the page before, already checked."""
        late = [message for message in self.console() if CANARY_HOST not in message]
        assert late == [], f"violations reported on the previous page after it was checked: {late}"
        self.driver.get(url)

    def problems(self, what: str) -> list[str]:
        """What is wrong with the page now shown, ``[]`` if nothing: every violation it reported, a missing or
        permissive Content-Security-Policy header, a policy the browser does not enforce. Call once the page has
        settled (its scripts run, its live updates applied)."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        header = self.driver.execute_async_script(CSP_HEADER_JS)
        if not header or header.startswith("fetch failed"):
            return [f"{what}: no Content-Security-Policy header ({header})"]
        policy = directives(header)
        found = [
            f"{what}: {name} is not just 'self': {header}"
            for name in ("script-src", "style-src")
            if policy.get(name) != ["'self'"]
        ]

        self.checked += 1
        canary = f"http://{CANARY_HOST}/{self.checked}.png"
        self.driver.execute_script(CANARY_JS, canary)
        # Violations are reported in order: once the canary is in, whatever the page caused before it is in too.
        console: list[str] = []
        seen: dict[str, Any] = {}

        def canary_reported(driver) -> bool:
            console.extend(self.console())
            seen["violations"] = driver.execute_script("return window.__cspViolations;")
            heard = any(CANARY_HOST in (v["blocked"] or "") for v in seen["violations"] or [])
            return heard and any(CANARY_HOST in message for message in console)

        try:
            WebDriverWait(self.driver, STEP, poll_frequency=0.1).until(canary_reported)
        except TimeoutException:
            return [
                *found,
                f"{what}: the browser did not report the canary {canary} (blocked by img-src) within {STEP:.0f}s: "
                f"is the listener installed and the policy enforced? Listener: {seen.get('violations')}; "
                f"console: {console}",
            ]
        for violation in seen["violations"]:
            if CANARY_HOST in (violation["blocked"] or ""):
                # The policy the browser enforced on this document is the one its response carried.
                if (violation["disposition"], directives(violation["policy"])) != ("enforce", policy):
                    found.append(f"{what}: the browser enforced {violation}, the response carried {header}")
            else:
                found.append(f"{what}: violation {violation}")
        found += [f"{what}: console: {message}" for message in console if CANARY_HOST not in message]
        return found

    def assert_clean(self, what: str) -> None:
        """Fail unless :meth:`problems` finds none."""
        found = self.problems(what)
        assert found == [], "The Content-Security-Policy is not kept:\n" + "\n".join(found)


@pytest.fixture
def server():
    require_browser()  # before starting anything: a missing browser is the first thing to report
    with daphne_servers(1) as [one]:
        yield one


@pytest.fixture
def browser():
    with chromium() as driver:
        # In every document the browser opens from now on, before the page's own scripts.
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_LISTENER_JS})
        yield driver


@pytest.fixture
def policy(browser):
    return PolicyCheck(browser)


class MarketPage:
    """The market page in the browser, read through :data:`PAGE_STATE_JS`."""

    def __init__(self, driver, server, market_id: str, policy: PolicyCheck):
        self.driver = driver
        self.server = server
        self.market_id = market_id
        self.policy = policy

    def open(self) -> None:
        self.policy.open(f"{self.server.url}/markets/{self.market_id}/")
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


def test_the_market_page_shows_orders_and_trades_as_they_happen_without_a_reload(server, browser, policy):
    creator = register_agent(server.url, "web-creator")
    alice = register_agent(server.url, "web-alice")
    bob = register_agent(server.url, "web-bob")
    market_id = create_market(server.url, creator["api_key"], "Will the page keep up?")["id"]
    page = MarketPage(browser, server, market_id, policy)
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
    policy.assert_clean("the market page after four live updates")


def test_the_market_page_catches_up_by_itself_after_the_server_restarts(server, browser, policy):
    creator = register_agent(server.url, "web-creator-2")
    alice = register_agent(server.url, "web-alice-2")
    bob = register_agent(server.url, "web-bob-2")
    market_id = create_market(server.url, creator["api_key"], "Will the page reconnect?")["id"]
    place_order(server.url, alice["api_key"], market_id, "YES", "BUY", "0.30", 4)
    page = MarketPage(browser, server, market_id, policy)
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
    policy.assert_clean("the market page after a reconnect")


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# swagger-ui's rendered operations: (METHOD, path) of every .opblock.
SWAGGER_OPERATIONS_JS = """
return Array.from(document.querySelectorAll('#swagger-ui .opblock')).map((block) => {
  const method = block.querySelector('.opblock-summary-method');
  const path = block.querySelector('.opblock-summary-path');
  return [method ? method.textContent.trim() : null, path ? path.dataset.path : null];
});
"""


def until(driver, condition: Callable[[Any], Any], what: str, timeout: float = STEP) -> Any:
    """Wait until ``condition(driver)`` is truthy and return it; fail with the page's URL and console."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        pytest.fail(
            f"{driver.current_url} did not show {what} within {timeout:.0f}s.\n"
            f"Browser console:\n{browser_console(driver)}\nPage:\n{driver.page_source[:2000]}",
            pytrace=False,
        )


def test_every_page_runs_under_the_content_security_policy(server, browser, policy):
    from django.contrib.auth import get_user_model
    from django.urls import reverse
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    css = browser.find_elements
    problems: list[str] = []  # every page is visited, then every problem reported at once
    creator = register_agent(server.url, "csp-creator")
    alice = register_agent(server.url, "csp-alice")
    bob = register_agent(server.url, "csp-bob")
    market_id = create_market(server.url, creator["api_key"], "Will every page keep to its policy?")["id"]
    # A trade (the list's price bar, the chart) and resting orders on both sides (the depth bars of the ladder).
    place_order(server.url, alice["api_key"], market_id, "YES", "BUY", "0.60", 5)
    place_order(server.url, bob["api_key"], market_id, "NO", "BUY", "0.40", 2)  # takes 2 of the 0.60 bid
    place_order(server.url, bob["api_key"], market_id, "NO", "BUY", "0.30", 4)  # a YES ask at 0.70

    policy.open(f"{server.url}/")
    assert css(By.CSS_SELECTOR, f'.market-row[data-market-id="{market_id}"] .prob-bar'), browser.page_source[:2000]
    problems += policy.problems("/ (markets)")

    # The market page, with a change arriving over the websocket.
    page = MarketPage(browser, server, market_id, policy)
    page.open()
    page.wait_ladder({("YES", "0.60"): 3, ("NO", "0.70"): 4}, "the book rendered with the page")
    place_order(server.url, alice["api_key"], market_id, "YES", "BUY", "0.55", 6)
    page.wait_ladder({("YES", "0.60"): 3, ("YES", "0.55"): 6, ("NO", "0.70"): 4}, "a bid arriving live")
    assert css(By.CSS_SELECTOR, "#price-chart svg"), "the chart was not drawn"
    problems += policy.problems(f"/markets/{market_id}/ after a live update")

    policy.open(f"{server.url}/agents/")
    assert css(By.CSS_SELECTOR, f'.agent-row[data-agent="{alice["name"]}"]'), browser.page_source[:2000]
    problems += policy.problems("/agents/")

    policy.open(f"{server.url}/agents/{alice['name']}/")
    assert css(By.CSS_SELECTOR, "#agent-fills .fill-row"), browser.page_source[:2000]
    problems += policy.problems("/agents/<name>/")

    # The guide's script (static/js/guide.js) puts a copy button on every code block.
    policy.open(f"{server.url}/docs/")
    until(
        browser,
        lambda d: d.execute_script(
            "const n = document.querySelectorAll('.docs pre').length;"
            "return n > 0 && document.querySelectorAll('.docs .code-wrap > button.copy').length === n;"
        ),
        "a copy button on every code block",
    )
    problems += policy.problems("/docs/")

    # swagger-ui renders every operation of /api/schema/.
    status, schema = http_json("GET", f"{server.url}/api/schema/?format=json")
    assert status == 200, (status, schema)
    operations = {(m.upper(), path) for path, item in schema["paths"].items() for m in item if m in HTTP_METHODS}
    assert len(operations) > 10, operations
    policy.open(f"{server.url}/api/docs/")
    until(
        browser,
        lambda d: {tuple(op) for op in d.execute_script(SWAGGER_OPERATIONS_JS)} == operations,
        f"the {len(operations)} operations of /api/schema/ in swagger-ui",
        timeout=30.0,
    )
    # Try it out: swagger-ui sends GET /api/v1/markets/ and shows the answer, highlighted.
    browser.find_element(By.CSS_SELECTOR, '.opblock-get .opblock-summary-path[data-path="/api/v1/markets/"]').click()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock.is-open .try-out__btn"), "the operation open")
    browser.find_element(By.CSS_SELECTOR, ".opblock.is-open .try-out__btn").click()
    browser.find_element(By.CSS_SELECTOR, ".opblock.is-open .execute").click()
    until(
        browser,
        lambda d: d.execute_script(
            "const cell = document.querySelector('.opblock.is-open .live-responses-table tbody .response-col_status');"
            "return cell !== null && cell.textContent.trim() === '200'"
            " && document.querySelector('.opblock.is-open .live-responses-table').textContent.includes(arguments[0]);",
            market_id,
        ),
        "swagger-ui's answer to GET /api/v1/markets/: 200 with the market",
    )
    problems += policy.problems("/api/docs/ (swagger-ui)")

    # The admin, logged in through its own form (django-axes authenticates only real login requests).
    password = "csp-operator-password-1"  # a throwaway test account
    get_user_model().objects.create_superuser("csp-operator", "operator@example.com", password)
    policy.open(f"{server.url}/admin/login/")
    problems += policy.problems("/admin/login/")
    browser.find_element(By.ID, "id_username").send_keys("csp-operator")
    browser.find_element(By.ID, "id_password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    until(browser, lambda d: d.execute_script("return location.pathname;") == "/admin/", "the admin index")
    problems += policy.problems("/admin/")

    changelist = reverse("admin:markets_market_changelist")
    policy.open(f"{server.url}{changelist}")
    assert css(By.CSS_SELECTOR, f'#result_list input.action-select[value="{market_id}"]'), browser.page_source[:2000]
    problems += policy.problems("the Market changelist")

    policy.open(f"{server.url}{reverse('admin:markets_market_change', args=[market_id])}")
    # The admin's own scripts ran: the calendar and clock shortcuts of the deadline.
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".datetimeshortcuts"), "the deadline's shortcuts")
    problems += policy.problems("a Market change page")

    # An operator action's confirmation page (templates/admin/trading/confirm_action.html), and its cancel link.
    policy.open(f"{server.url}{changelist}")
    browser.find_element(By.CSS_SELECTOR, f'#result_list input.action-select[value="{market_id}"]').click()
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=action]")).select_by_value("close_markets")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'input[name="post"][value="yes"]'), "the confirmation")
    problems += policy.problems("the close action's confirmation page")
    browser.find_element(By.CSS_SELECTOR, ".cancel-link").click()
    until(
        browser,
        lambda d: d.find_elements(By.ID, "changelist") and not d.find_elements(By.CSS_SELECTOR, 'input[name="post"]'),
        "the changelist again after 'No, take me back'",
    )
    assert Market.objects.get(id=market_id).status == Market.Status.OPEN
    assert problems == [], "The Content-Security-Policy is not kept:\n" + "\n".join(problems)
