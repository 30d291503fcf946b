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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

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
# Servers


def served_database_url() -> str:
    """``DATABASE_URL`` of the database this pytest run uses (pytest-django's ``test_…`` database), so a server
    process reads and writes the rows the test sees. Only committed rows are visible to it: use
    ``@pytest.mark.django_db(transaction=True)``."""
    from django.db import connection

    params = connection.settings_dict
    assert "postgresql" in params["ENGINE"], params["ENGINE"]
    user = quote(params.get("USER") or "", safe="")
    password = quote(params.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = quote(params.get("HOST") or "", safe="")  # a socket directory travels percent-encoded
    port = f":{params['PORT']}" if params.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(params['NAME'], safe='')}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _daphne_command() -> list[str]:
    daphne = Path(sys.executable).with_name("daphne")  # .venv/bin/daphne beside .venv/bin/python
    return [str(daphne)] if daphne.exists() else [sys.executable, "-m", "daphne"]


class DaphneServer:
    """One ``daphne -b 127.0.0.1 -p <port> moltstreet.asgi:application`` subprocess with its output in a log file."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name = name
        self.env = env
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        """Start serving on ``port`` (a free one when not given); :meth:`wait_ready` waits until it answers."""
        self.port = port or free_port()
        fd, log_path = tempfile.mkstemp(prefix=f"moltstreet-daphne-{self.name}-", suffix=".log")
        self.log_path = Path(log_path)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603  (our own fixed command line)
                [*_daphne_command(), "-b", "127.0.0.1", "-p", str(self.port), "moltstreet.asgi:application"],
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self, tail: int = 6000) -> str:
        """The end of what the server wrote to stdout and stderr."""
        if self.log_path is None or not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_text(errors="replace")[-tail:] or "(no output)"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the server answers HTTP (any status); fail with its output if it exits or stays silent."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"daphne {self.name} exited with status {self.process.returncode} before serving:\n{self.output()}",
                    pytrace=False,
                )
            try:
                with _opener.open(f"{self.url}{API}/markets/?page_size=1", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)  # nothing listening yet: a process starting up gives no event to wait on
        pytest.fail(f"daphne {self.name} did not answer HTTP within {timeout:.0f}s:\n{self.output()}", pytrace=False)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 seconds; removes the log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def server_env() -> dict[str, str]:
    """The environment of a server process: this run's test database and Redis, the project's settings."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="moltstreet.settings",
        DATABASE_URL=served_database_url(),
        REDIS_URL=settings.REDIS_URL,
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def daphne_servers(count: int, *, timeout: float = 30.0) -> Iterator[list[DaphneServer]]:
    """Start ``count`` daphne processes on the test database and the tests' Redis, wait until each answers HTTP,
    and stop them all on the way out, whatever happened."""
    env = server_env()
    servers = [DaphneServer(chr(ord("A") + i), env) for i in range(count)]
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready(timeout)
        yield servers


# --------------------------------------------------------------------------------------------------------------------
# HTTP, as an agent calls the API


def http_json(
    method: str, url: str, body: Any = None, *, api_key: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body). Error statuses are returned, not raised."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310  (http://127.0.0.1)
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


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
    """A websocket connection that decodes JSON messages and keeps every one it received, for failure messages."""

    def __init__(self, connection, url: str, server: DaphneServer | None = None):
        self.connection = connection
        self.url = url
        self.server = server
        self.received: list[dict[str, Any]] = []

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
            self.received.append(json.loads(raw))
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
            message = json.loads(raw)
            self.received.append(message)
            if predicate(message):
                return message


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
