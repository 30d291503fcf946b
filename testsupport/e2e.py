"""Harness for the end-to-end tests that run the real server: ``daphne moltstreet.asgi:application`` processes on the
pytest test database and the tests' Redis, HTTP and websocket clients that talk to them as an agent would, and Debian's
headless Chromium for Selenium.

Why our own daphne processes rather than ``channels.testing.ChannelsLiveServerTestCase``: that class forks the pytest
process and points its server at ``"test_" + NAME``, but under pytest-django ``NAME`` already is the test database's
name, so the server reads a database that does not exist (django/channels#2176). A ``daphne`` process started from
the command line is also exactly what ``make run`` serves, settings read from the environment included.

Every wait here is bounded: a server that does not come up, a message that does not arrive, or a page that does not
change fails the test with what was seen so far (the server's log, the messages received, the browser console).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moltstreet import serving

BASE_DIR = Path(__file__).resolve().parent.parent
API = "/api/v1"

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_INSTALL = "apt-get install -y chromium chromium-driver"
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # The server is on 127.0.0.1; an HTTP(S)_PROXY in the environment must not get in between.
    "--no-proxy-server",
    "--window-size=1280,1000",
)

# urllib without the environment's proxies: the servers under test listen on 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------------------------------
# Servers (the processes themselves are moltstreet/serving.py's, shared with the soak, tools/soak.py)


def served_database_url() -> str:
    """``DATABASE_URL`` of the database this pytest run uses (pytest-django's ``test_…`` database), so a server
    process reads and writes the rows the test sees. Only committed rows are visible to it: use
    ``@pytest.mark.django_db(transaction=True)``."""
    from django.db import connection

    assert "postgresql" in connection.settings_dict["ENGINE"], connection.settings_dict["ENGINE"]
    return serving.database_url()


free_port = serving.free_port


class DaphneServer(serving.DaphneServer):
    """One ``daphne -b 127.0.0.1 -p <port> moltstreet.asgi:application`` subprocess with its output in a log file;
    a server that does not come up fails the test with its output."""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the server answers HTTP (any status); fail with its output if it exits or stays silent."""
        failure = None
        try:
            super().wait_ready(timeout)
        except serving.ServerError as exc:
            failure = str(exc)
        if failure is not None:
            pytest.fail(failure, pytrace=False)


# The websocket limits per address of the servers the tests start: every client of a test comes from 127.0.0.1, and a
# server shared by a whole session (client/tests) outlives any one test's settings, so these are fixed rather than
# read from the test's settings as the HTTP rates are. The tests of the limits run in-process with their own.
WEBSOCKET_LIMITS = {"MOLTSTREET_WEBSOCKETS_PER_ADDRESS": "100000", "MOLTSTREET_WEBSOCKET_HANDSHAKE_RATE": "100000/min"}


def server_env() -> dict[str, str]:
    """The environment of a server process: this run's test database and Redis, the project's settings."""
    from django.conf import settings

    served_database_url()  # the end-to-end tests serve PostgreSQL only
    return serving.server_env(
        # Rate limits well above what any test sends (the rate-limit tests run in-process with their own budgets).
        **{f"MOLTSTREET_RATE_{scope.upper()}": rate for scope, rate in settings.MOLTSTREET["RATES"].items()},
        **WEBSOCKET_LIMITS,
    )


@contextmanager
def daphne_servers(count: int, *, timeout: float = 30.0) -> Iterator[list[DaphneServer]]:
    """Start ``count`` daphne processes on the test database and the tests' Redis, wait until each answers HTTP,
    and stop them all on the way out, whatever happened."""
    with serving.running_servers(count, server_env(), timeout=timeout, server_class=DaphneServer) as servers:
        yield servers


# --------------------------------------------------------------------------------------------------------------------
# HTTP, as an agent calls the API


@dataclass
class HttpAnswer:
    """What :func:`http_request` got: the status, the body (parsed JSON, else text), the headers (names in lower
    case) and how long the whole request took, in seconds."""

    status: int
    body: Any
    headers: dict[str, str]
    elapsed: float


def http_request(
    method: str, url: str, body: Any = None, *, api_key: str | None = None, timeout: float = 10.0
) -> HttpAnswer:
    """One JSON request, answered with headers and timing. Error statuses are returned, not raised; a connection
    that fails or times out raises (``OSError``, of which ``TimeoutError`` and ``urllib.error.URLError`` are kinds)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310  (http://127.0.0.1)
    started = time.monotonic()
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, raw, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, answer_headers = exc.code, exc.read(), exc.headers
    elapsed = time.monotonic() - started
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return HttpAnswer(status, parsed, {name.lower(): value for name, value in answer_headers.items()}, elapsed)


def http_json(
    method: str, url: str, body: Any = None, *, api_key: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body). Error statuses are returned, not raised."""
    answer = http_request(method, url, body, api_key=api_key, timeout=timeout)
    return answer.status, answer.body


def api(base_url: str, method: str, path: str, body: Any = None, *, api_key: str | None = None, expect: int = 200):
    """``http_json`` on ``base_url + /api/v1 + path`` that must answer ``expect``; returns the body."""
    status, payload = http_json(method, f"{base_url}{API}{path}", body, api_key=api_key)
    assert status == expect, (method, path, status, payload)
    return payload


def register_agent(base_url: str, name: str) -> dict[str, Any]:
    """``POST /agents/``: a new agent with 1000.00 credits; the answer carries its ``api_key``."""
    agent = api(base_url, "POST", "/agents/", {"name": name}, expect=201)
    assert agent["api_key"], agent
    return agent


def create_market(base_url: str, api_key: str, question: str, *, days: int = 7) -> dict[str, Any]:
    """``POST /markets/`` as the agent (it pays the creation fee); an open market closing in ``days``."""
    from datetime import UTC, datetime, timedelta

    deadline = (datetime.now(UTC) + timedelta(days=days)).isoformat()
    return api(
        base_url,
        "POST",
        "/markets/",
        {"question": question, "deadline": deadline, "description": "End-to-end test market."},
        api_key=api_key,
        expect=201,
    )


def place_order(
    base_url: str, api_key: str, market_id: str, side: str, action: str, price: str, size: int
) -> dict[str, Any]:
    """``POST /orders/`` that must be accepted; returns ``{order, trades}``."""
    body = {"market": market_id, "side": side, "action": action, "price": price, "size": size}
    return api(base_url, "POST", "/orders/", body, api_key=api_key, expect=201)


# --------------------------------------------------------------------------------------------------------------------
# Websockets, as an agent's client connects (no Origin header, no proxy)


class Feed:
    """A websocket connection that decodes JSON messages and keeps every one it received, for failure messages. A
    batched frame (a JSON array, ``?batch_ms=``) is taken message by message."""

    def __init__(self, connection, url: str, server: DaphneServer | None = None):
        self.connection = connection
        self.url = url
        self.server = server
        self.received: list[dict[str, Any]] = []
        self.waiting: deque[dict[str, Any]] = deque()  # the rest of the last batched frame

    @staticmethod
    def messages(raw: str | bytes) -> list[dict[str, Any]]:
        """The messages of one frame: one, or a batch's."""
        frame = json.loads(raw)
        return frame if isinstance(frame, list) else [frame]

    def fail(self, what: str) -> None:
        log = f"\nserver {self.server.name} log:\n{self.server.output(3000)}" if self.server else ""
        pytest.fail(f"{self.url}: {what}; received so far: {self.received}{log}", pytrace=False)

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(json.dumps(message))

    def stays_open_and_quiet(self, seconds: float) -> None:
        """Receive nothing for ``seconds``, the connection staying open (what an idle subscriber sees)."""
        from websockets.exceptions import ConnectionClosed

        try:
            raw = self.connection.recv(timeout=seconds)
        except TimeoutError:
            return
        except ConnectionClosed as exc:
            closed = exc
        else:
            self.received.extend(self.messages(raw))
            self.fail(f"unexpected message while idle: {self.received[-1]}")
        self.fail(f"the server closed the idle connection: {closed}")

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.until(lambda message: True, "message", timeout)

    def until(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0) -> dict[str, Any]:
        """Receive until a message satisfies ``predicate`` and return it; fail after ``timeout`` seconds or when
        the server closes the connection."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        while True:
            if self.waiting:
                message = self.waiting.popleft()
                self.received.append(message)
                if predicate(message):
                    return message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(f"no {what} within {timeout:.0f}s")
            closed = None
            try:
                raw = self.connection.recv(timeout=remaining)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                closed = exc
            if closed is not None:
                self.fail(f"connection closed while waiting for {what}: {closed}")
            self.waiting.extend(self.messages(raw))


@contextmanager
def open_feed(
    server: DaphneServer, path: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> Iterator[Feed]:
    """Connect to ``server``'s ``path`` (bounded by ``timeout``) and close on the way out. A refused handshake
    fails the test with the server's log."""
    from websockets.exceptions import InvalidHandshake
    from websockets.sync.client import connect

    url = f"{server.ws_url}{path}"
    refused = None
    try:
        connection = connect(url, additional_headers=headers, open_timeout=timeout, close_timeout=5, proxy=None)
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        refused = exc
    if refused is not None:
        pytest.fail(
            f"{url}: handshake failed: {refused}\nserver {server.name} log:\n{server.output(3000)}", pytrace=False
        )
    with connection:  # closes it on the way out
        yield Feed(connection, url, server)


# --------------------------------------------------------------------------------------------------------------------
# Browser


def require_browser() -> None:
    """Fail, never skip, when Debian's Chromium or its driver is missing, saying what to install."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"The browser tests need Debian's Chromium and ChromeDriver; missing {', '.join(missing)}. "
            f"Install them with:\n{BROWSER_INSTALL}",
            pytrace=False,
        )


@contextmanager
def chromium(*, page_load_timeout: float = 30.0) -> Iterator[Any]:
    """A headless Chromium driven through Selenium with a throwaway profile; quit on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_browser()
    profile = tempfile.mkdtemp(prefix="moltstreet-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        # An explicit driver path: Selenium Manager never goes looking for a browser on the network.
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(page_load_timeout)
            driver.set_script_timeout(10)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def browser_console(driver) -> str:
    """The page's console messages so far (JavaScript errors included), for failure messages."""
    try:
        entries = driver.get_log("browser")
    except Exception as exc:  # the log is a diagnostic; never let it hide the real failure
        return f"(console unavailable: {exc})"
    return "\n".join(f"{entry['level']}: {entry['message']}" for entry in entries) or "(console empty)"


__all__ = [
    "API",
    "BROWSER_INSTALL",
    "CHROMEDRIVER",
    "CHROMIUM",
    "DaphneServer",
    "Feed",
    "api",
    "browser_console",
    "chromium",
    "create_market",
    "daphne_servers",
    "free_port",
    "http_json",
    "open_feed",
    "place_order",
    "register_agent",
    "require_browser",
    "served_database_url",
    "server_env",
]
