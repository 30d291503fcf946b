"""Fault injection against the real stack: daphne processes, PostgreSQL and Redis, each fault made for real.

1. A server SIGKILLed in the middle of a burst of orders: after a restart the books audit clean, what clients saw
   accepted exists and what they saw rejected does not, and retrying every request with its ``client_order_id``
   (those whose connection died included) never places an order twice.
2. PostgreSQL frozen, then crashed and restarted under load (a private cluster): every request is answered fast with
   ``503 service_busy`` and ``Retry-After`` in the JSON error shape, never a 500, and the server recovers by itself.
3. Redis killed (a private ``redis-server``): trading goes on, websockets close cleanly instead of hanging, and a
   client that reconnects with ``?since=`` when Redis is back gets every change it missed, in order.
4. Lock contention: a lock wait past ``MOLTSTREET_LOCK_TIMEOUT_MS`` is a 503 over HTTP; a real deadlock (SQLSTATE
   40P01) is retried inside ``service_transaction`` and never reaches a client as a 500.

The shared PostgreSQL and Redis are never stopped: tests that take a service down start their own
(``testsupport.faults``). Tests on the shared test database commit (``transaction=True``) so the servers
see the rows. Every wait is bounded.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import OperationalError, close_old_connections, connection, connections, transaction
from django.test import override_settings

from agents.models import Agent
from markets.models import Market
from moltstreet.db import service_transaction
from moltstreet.errors import ServiceBusy
from testsupport.e2e import API, BASE_DIR, Feed, api, create_market, open_feed, register_agent, server_env
from testsupport.faults import (
    HttpAnswer,
    KillableDaphne,
    http_request,
    killable_daphne,
    private_postgres,
    private_redis,
)
from trading.audit import run_audit
from trading.models import Order

pytestmark = pytest.mark.faults

STEP = 15.0  # seconds any one step may take before the test fails
FAST = 5.0  # seconds within which a request must be answered, even while a service is down


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def assert_busy(answer: HttpAnswer, context: Any = None) -> None:
    """``answer`` is a 503 ``service_busy`` in the one JSON error shape, with ``Retry-After``."""
    assert answer.status == 503, (answer, context)
    assert answer.headers.get("content-type", "").startswith("application/json"), (answer, context)
    assert isinstance(answer.body, dict) and set(answer.body) == {"error"}, (answer, context)
    error = answer.body["error"]
    assert set(error) == {"code", "message", "detail"}, (answer, context)
    assert error["code"] == "service_busy", (answer, context)
    assert error["message"], (answer, context)
    assert int(answer.headers.get("retry-after", "0")) >= 1, (answer, context)


def assert_audit_clean() -> None:
    report = run_audit()
    assert report.ok, report.render()


def order_body(market_id: str, coid: str, side: str, price: str, size: int) -> dict[str, Any]:
    return {
        "market": market_id,
        "side": side,
        "action": "BUY",
        "price": price,
        "size": size,
        "client_order_id": coid,
    }


class Recorder:
    """What clients saw, from many threads: ``(label, request, answer or exception)``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[str, dict[str, Any], HttpAnswer | BaseException]] = []

    def add(self, label: str, request: dict[str, Any], outcome: HttpAnswer | BaseException) -> None:
        with self.lock:
            self.entries.append((label, request, outcome))

    def answers(self) -> list[tuple[str, dict[str, Any], HttpAnswer]]:
        with self.lock:
            return [(label, req, out) for label, req, out in self.entries if isinstance(out, HttpAnswer)]

    def count(self) -> int:
        with self.lock:
            return len(self.entries)


def join_all(threads: list[threading.Thread], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"client threads hung: {hung}"


def wait_for(predicate, what: str, timeout: float = STEP, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)  # the conditions polled (another process's state) give no event to wait on
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)


def orders_by_coid(agent_names: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    rows = Order.objects.filter(agent__name__in=agent_names, client_order_id__isnull=False)
    for coid, order_id in rows.values_list("client_order_id", "id"):
        found.setdefault(coid, []).append(str(order_id))
    return found


# --------------------------------------------------------------------------------------------------------------------
# 1. A server SIGKILLed in the middle of a burst of orders

NO_RATE_LIMITS = {"MOLTSTREET_RATE_ANON": "", "MOLTSTREET_RATE_AGENT_READ": "", "MOLTSTREET_RATE_AGENT_WRITE": ""}


@pytest.mark.django_db(transaction=True)
def test_a_server_killed_mid_burst_loses_nothing_and_retries_never_double_place():
    """Six clients post crossing orders (every fifth one unaffordable, so refused with 400) as fast as they can;
    the server is SIGKILLed mid-burst. To kill it at the worst moment for a client, after some orders committed
    and before their answers left, the server's Redis is frozen (SIGSTOP) a moment before: every order committing
    from then on waits in its after-commit publish, so its client never hears of it."""
    with private_redis("kill") as redis_server:
        env = {
            **server_env(),
            **NO_RATE_LIMITS,  # no cache lookups before the transaction: every request in flight reaches the database
            "REDIS_URL": redis_server.url(),
            "MOLTSTREET_LIVE_PUBLISH_TIMEOUT": "60",  # a publish to the frozen Redis waits until the kill
        }
        with killable_daphne("kill", env) as server:
            _kill_mid_burst(server, redis_server)


def _kill_mid_burst(server: KillableDaphne, redis_server) -> None:
    creator = register_agent(server.url, "kill-creator")
    market_id = create_market(server.url, creator["api_key"], "Will the exchange survive a SIGKILL?")["id"]
    traders = [register_agent(server.url, f"kill-trader-{i}") for i in range(6)]
    names = [t["name"] for t in traders]
    recorder = Recorder()
    in_flight: dict[str, str] = {}  # client thread -> client_order_id of the request it is waiting on

    def burst(index: int, trader: dict[str, Any]) -> None:
        rng = random.Random(index)
        for n in range(1, 1000):
            coid = f"{trader['name']}-{n}"
            yes = (n + index) % 2 == 0
            if n % 5 == 0:  # unaffordable (5000 x 0.55 > 1000.00): refused with 400 insufficient_balance
                body = order_body(market_id, coid, "YES", "0.55", 5000)
            else:  # YES 0.55 and NO 0.47 cross (0.55 + 0.47 >= 1)
                body = order_body(market_id, coid, "YES" if yes else "NO", "0.55" if yes else "0.47", rng.randint(1, 4))
            request = {"trader": trader, "body": body}
            in_flight[trader["name"]] = coid
            try:
                answer = http_request("POST", f"{server.url}{API}/orders/", body, api_key=trader["api_key"], timeout=60)
            except OSError as exc:  # the server died under this request (or refuses connections now)
                recorder.add("died", request, exc)
                return
            recorder.add("answer", request, answer)

    threads = [
        threading.Thread(target=burst, args=(i, t), name=f"burst-{i}", daemon=True) for i, t in enumerate(traders)
    ]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: recorder.count() >= 60, "60 answered orders", timeout=30)
        redis_server.pause()
        # Orders that committed but whose clients have no answer: wait until several are stuck so. A committed
        # order whose answer is merely on its way (with orders combined, the batch's other orders are answered
        # before its leader publishes) is not stuck: only the same committed orders seen twice, a second apart.
        previous: set[str] = set()

        def stuck_committed() -> bool:
            nonlocal previous
            waiting = set(in_flight.values())
            committed = set(Order.objects.filter(client_order_id__in=waiting).values_list("client_order_id", flat=True))
            stuck, previous = committed & previous, committed
            return len(stuck) >= 3

        wait_for(stuck_committed, "3 committed orders whose clients are still waiting", interval=1.0)
        server.kill()
    finally:
        redis_server.resume()
    join_all(threads)

    entries = list(recorder.entries)
    died = [req for label, req, _ in entries if label == "died"]
    answered = recorder.answers()
    assert len(died) == len(traders), entries[-10:]  # each client lost its connection once, then stopped
    statuses = Counter(answer.status for _, _, answer in answered)
    assert set(statuses) <= {200, 201, 400}, statuses
    assert statuses[201] >= 40 and statuses[400] >= 5, statuses
    for _, _, answer in answered:
        if answer.status == 400:
            assert answer.body["error"]["code"] == "insufficient_balance", answer

    # Back up: the books are exact, what was accepted is there, what was refused is not.
    server.start()
    server.wait_ready(STEP)
    assert_audit_clean()
    stored = orders_by_coid(names)
    assert all(len(ids) == 1 for ids in stored.values()), stored
    for _, request, answer in answered:
        coid = request["body"]["client_order_id"]
        if answer.status in (200, 201):
            assert stored.get(coid) == [answer.body["order"]["id"]], (coid, answer)
        else:
            assert coid not in stored, (coid, answer)
    committed_unanswered = [req for req in died if req["body"]["client_order_id"] in stored]
    assert len(committed_unanswered) >= 3, died

    # Every request again, with its client_order_id: nothing is placed twice, an accepted order is returned.
    for label, request, outcome in entries:
        body = request["body"]
        retry = http_request("POST", f"{server.url}{API}/orders/", body, api_key=request["trader"]["api_key"])
        context = (label, request["body"], outcome, retry)
        if label == "answer" and outcome.status in (200, 201):
            assert retry.status == 200, context
            assert retry.body["order"]["id"] == outcome.body["order"]["id"], context
        elif label == "answer" or body["size"] == 5000:
            assert retry.status == 400, context
            assert retry.body["error"]["code"] == "insufficient_balance", context
        elif body["client_order_id"] in stored:  # committed, but its client never heard: the same order comes back
            assert retry.status == 200, context
            assert [retry.body["order"]["id"]] == stored[body["client_order_id"]], context
        else:  # rolled back with the server: placed now, once
            assert retry.status == 201, context
    after = orders_by_coid(names)
    assert all(len(ids) == 1 for ids in after.values()), after
    for label, request, outcome in entries:
        coid = request["body"]["client_order_id"]
        assert (coid in after) == (request["body"]["size"] != 5000), (label, outcome)
    assert_audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# 2. PostgreSQL frozen, then crashed and restarted, under load


@pytest.fixture
def private_database():
    """A private PostgreSQL cluster with a migrated ``moltstreet`` database: ``(cluster, DATABASE_URL)``."""
    with private_postgres("restart") as cluster:
        url = cluster.create_database("moltstreet")
        cluster.migrate(url)
        yield cluster, url


def manage(database_url: str, *args: str) -> subprocess.CompletedProcess:
    """``manage.py <args>`` against ``database_url``, bounded."""
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "moltstreet.settings"}
    return subprocess.run(  # noqa: S603  (our own command line)
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("pool", [True, False], ids=["pooled", "connection-per-request"])
def test_postgres_frozen_then_restarted_under_load_gives_fast_503s_and_the_server_recovers(pool, private_database):
    """Clients keep placing orders and reading while the server's PostgreSQL is frozen (SIGSTOP of the postmaster:
    new connections hang, open ones go on), then crashes (``pg_ctl stop -m immediate``) and comes back. Every request
    is answered within 5 s: 2xx, or 503 ``service_busy`` with ``Retry-After`` in the JSON error shape, never a 500.
    With the connection pool (production) the frozen postmaster goes unnoticed, since the pool's connections are
    open already; without it every request needs a new connection, which times out into a 503. The same server
    process then serves again by itself, retries with the same ``client_order_id`` place each order once, and the
    audit is clean."""
    cluster, database_url = private_database
    env = {
        **server_env(),
        "DATABASE_URL": database_url,
        "DATABASE_CONNECT_TIMEOUT": "2",
        "DATABASE_POOL": "true" if pool else "false",
        "DATABASE_POOL_TIMEOUT": "2",
        **NO_RATE_LIMITS,
    }
    with killable_daphne("pg", env) as server:
        _postgres_outage(server, cluster, database_url, frozen_gives_503=not pool)


def _postgres_outage(server: KillableDaphne, cluster, database_url: str, *, frozen_gives_503: bool) -> None:
    creator = register_agent(server.url, "pg-creator")
    market_id = create_market(server.url, creator["api_key"], "Will the exchange outlive its database?")["id"]
    traders = [register_agent(server.url, f"pg-trader-{i}") for i in range(3)]
    pid = server.process.pid
    recorder = Recorder()
    stop = threading.Event()

    def load(index: int, trader: dict[str, Any]) -> None:
        for n in range(1, 100_000):
            if stop.is_set():
                return
            if n % 3 == 0:  # reads: the agent's own account, and the public book (anonymous)
                request = {"method": "GET", "path": "/agents/me/", "trader": trader, "body": None}
                if n % 2:
                    request = {
                        "method": "GET",
                        "path": f"/markets/{market_id}/orderbook/",
                        "trader": None,
                        "body": None,
                    }
            else:
                yes = (n + index) % 2 == 0
                body = order_body(
                    market_id, f"{trader['name']}-{n}", "YES" if yes else "NO", "0.52" if yes else "0.50", 1
                )
                request = {"method": "POST", "path": "/orders/", "trader": trader, "body": body}
            key = request["trader"]["api_key"] if request["trader"] else None
            try:
                answer = http_request(
                    request["method"], f"{server.url}{API}{request['path']}", request["body"], api_key=key, timeout=15
                )
            except OSError as exc:  # no answer at all: the test fails on it
                recorder.add("no answer", request, exc)
                return
            recorder.add(phase[0], request, answer)

    def answered(label: str, statuses: tuple[int, ...]) -> int:
        return sum(1 for lbl, _, a in recorder.answers() if lbl == label and a.status in statuses)

    phase = ["up"]
    threads = [threading.Thread(target=load, args=(i, t), name=f"load-{i}", daemon=True) for i, t in enumerate(traders)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: answered("up", (201,)) >= 10, "10 orders placed before the fault")
        phase[0] = "frozen"
        cluster.pause()  # new connections hang in the listen queue
        if frozen_gives_503:
            wait_for(lambda: answered("frozen", (503,)) >= 3, "3 answers 503 while PostgreSQL is frozen")
        else:
            wait_for(lambda: answered("frozen", (200, 201, 503)) >= 6, "6 answers while PostgreSQL is frozen")
        phase[0] = "crashed"
        cluster.stop("immediate")  # resumes the postmaster, then kills every backend as a crash does
        wait_for(lambda: answered("crashed", (503,)) >= 6, "6 answers while PostgreSQL is down")
        phase[0] = "restarting"
        cluster.start()
        phase[0] = "back"
        wait_for(lambda: answered("back", (201,)) >= 10, "10 orders placed after PostgreSQL came back")
    finally:
        stop.set()
        cluster.resume()
    join_all(threads)

    entries = list(recorder.entries)
    assert not [e for e in entries if e[0] == "no answer"], [e for e in entries if e[0] == "no answer"]
    answers = recorder.answers()
    for label, request, answer in answers:
        assert answer.elapsed < FAST, (label, request, answer)
        assert answer.status in (200, 201, 503), (label, request, answer)
        if answer.status == 503:
            assert_busy(answer, (label, request))
    assert server.process.pid == pid and server.process.poll() is None, "the server process was not restarted"

    # Retry each order that was not answered 2xx, with its client_order_id: each is placed exactly once.
    coids = set()
    for _label, request, answer in answers:
        if request["method"] != "POST":
            continue
        coids.add(request["body"]["client_order_id"])
        if answer.status == 503:
            retry = http_request(
                "POST", f"{server.url}{API}/orders/", request["body"], api_key=request["trader"]["api_key"]
            )
            assert retry.status in (200, 201), (request, retry)
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT client_order_id, count(*) FROM trading_order WHERE client_order_id IS NOT NULL GROUP BY 1"
        ).fetchall()
    assert {coid for coid, _ in rows} == coids
    assert all(count == 1 for _, count in rows), [row for row in rows if row[1] != 1]
    audit = manage(database_url, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


# --------------------------------------------------------------------------------------------------------------------
# 3. Redis killed: trading goes on, the feeds close cleanly and catch up when Redis is back


def handshake(server, path: str, timeout: float = STEP, api_key: str | None = None):
    """Try a websocket handshake (with ``api_key`` in its Authorization header): ``(connection, None)`` when
    accepted, ``(None, HTTP status or the error)`` when refused. Bounded by ``timeout``."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        url = f"{server.ws_url}{path}"
        return connect(url, additional_headers=headers, open_timeout=timeout, close_timeout=2, proxy=None), None
    except InvalidStatus as exc:
        return None, exc.response.status_code
    except (InvalidHandshake, OSError) as exc:
        return None, exc


def read_until_closed(feed: Feed, timeout: float = STEP) -> int | None:
    """Receive (keeping the messages in ``feed.received``) until the server closes; the close code. Fails the test
    if the connection is still open after ``timeout`` seconds: a feed that can no longer update must not hang."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            feed.received.extend(Feed.messages(feed.connection.recv(timeout=remaining)))
        except TimeoutError:
            break
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
    feed.fail(f"still open {timeout:.0f}s after its channel layer went away")
    return None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batch_ms", [None, 50], ids=["frame per message", "batched (the market's hub)"])
def test_trading_survives_redis_going_away_and_feeds_catch_up_when_it_returns(batch_ms):
    """The server's Redis (channel layer and the rate limits' cache) is SIGKILLed, later restarted empty, later
    frozen (SIGSTOP): orders go on being accepted and matched, every websocket closes or is refused cleanly, and a
    client reconnecting with ``?since=`` gets every change it missed. The same with batched frames, whose feeds the
    market's hub serves (one subscription per process)."""
    with (
        private_redis("down") as redis_server,
        killable_daphne("redis", {**server_env(), "REDIS_URL": redis_server.url()}) as server,
    ):
        _redis_outage(server, redis_server, batch_ms)


def _redis_outage(server: KillableDaphne, redis_server, batch_ms: int | None = None) -> None:
    creator = register_agent(server.url, "redis-creator")
    alice = register_agent(server.url, "redis-alice")
    bob = register_agent(server.url, "redis-bob")
    market_id = create_market(server.url, creator["api_key"], "Will trading outlive Redis?")["id"]
    batched = f"batch_ms={batch_ms}&" if batch_ms else ""
    path = f"/ws/markets/{market_id}/?{batched}"
    coids = ["r-0"]

    def place(n: int) -> HttpAnswer:
        # Bob's NO 0.62 crosses Alice's YES 0.40 bids (0.40 + 0.62 >= 1); Alice keeps adding bids.
        who, side, price = (bob, "NO", "0.62") if n % 2 else (alice, "YES", "0.40")
        coids.append(f"r-{n}")
        return http_request(
            "POST",
            f"{server.url}{API}/orders/",
            order_body(market_id, f"r-{n}", side, price, 1),
            api_key=who["api_key"],
        )

    with open_feed(server, path, timeout=STEP) as feed:
        assert feed.recv(timeout=STEP)["type"] == "snapshot"
        api(
            server.url,
            "POST",
            "/orders/",
            order_body(market_id, "r-0", "YES", "0.40", 5),
            api_key=alice["api_key"],
            expect=201,
        )
        seen = feed.until(lambda m: m["type"] == "book", "the resting bid", STEP)["seq"]

        redis_server.kill()
        # The open feed says so and closes with 4503 (as HTTP 503: try again later), telling where to resume.
        code = read_until_closed(feed)
        assert code == 4503, (code, feed.received)
        error = feed.received[-1]
        assert (error["type"], error["code"], error["last_seq"]) == ("error", "feed_unavailable", seen), error

    # Trading goes on without Redis: accepted, matched, answered fast.
    for n in range(1, 7):
        answer = place(n)
        assert answer.status == 201, answer
        assert answer.elapsed < FAST, answer
        assert bool(answer.body["trades"]) == (n % 2 == 1), answer
    # New feeds are refused at the handshake (HTTP 403), at once.
    for refused_path, key in ((path, None), (f"{path}since={seen}", None), ("/ws/agent/", alice["api_key"])):
        started = time.monotonic()
        conn, refusal = handshake(server, refused_path, api_key=key)
        assert conn is None and refusal == 403, (refused_path, refusal)
        assert time.monotonic() - started < FAST, refused_path

    # Redis is back (empty): a client resuming from the last seq it saw gets every change it missed, in order.
    redis_server.start()
    conn = wait_for(lambda: handshake(server, f"{path}since={seen}")[0], "the feed to accept connections again")
    with conn:
        feed = Feed(conn, f"{server.ws_url}{path}since={seen}", server)
        now = Market.objects.get(id=market_id).seq
        assert now > seen
        feed.until(lambda m: m.get("seq") == now, f"the replay up to seq {now}", STEP)
        assert [m["seq"] for m in feed.received] == list(range(seen + 1, now + 1)), feed.received
        assert {m["type"] for m in feed.received} == {"book", "trade"}, feed.received
        assert sum(m["type"] == "trade" for m in feed.received) == 3, feed.received
        # And it is live again: a new order reaches it, next in sequence.
        assert place(7).status == 201
        feed.until(lambda m: m["type"] == "trade", "a live trade after Redis came back", STEP)
        assert [m["seq"] for m in feed.received] == list(range(seen + 1, feed.received[-1]["seq"] + 1))

    # Redis frozen (SIGSTOP): connections hang instead of failing. Orders are still answered fast (the rate limit
    # gives up on the cache, the publish on the channel layer) and new feeds are refused, not left hanging.
    redis_server.pause()
    try:
        answer = place(8)
        assert answer.status == 201 and answer.elapsed < FAST, answer
        started = time.monotonic()
        conn, refusal = handshake(server, path)
        assert conn is None and refusal == 403, refusal
        assert time.monotonic() - started < FAST
    finally:
        redis_server.resume()

    # Nothing was lost: every order is stored once, the books are exact.
    stored = Counter(Order.objects.filter(market_id=market_id).values_list("client_order_id", flat=True))
    assert stored == Counter(coids), stored
    assert_audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# 4. Lock contention: lock timeouts and real deadlocks


def lock_row(model, pk) -> None:
    """``SELECT … FOR UPDATE`` of one row, held until the current transaction ends."""
    model.objects.select_for_update().get(pk=pk)


def lock_waiters() -> list[int]:
    """Backends of this test database waiting for a lock right now, other than our own."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees its first reading throughout
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in cursor.fetchall()]


def set_deadlock_timeout(value: str) -> None:
    """``SET LOCAL deadlock_timeout``: how long this transaction waits before looking for a deadlock. The one whose
    check runs first once the cycle is closed is the one PostgreSQL aborts (superuser only, as in the tests)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL deadlock_timeout = '{value}'")


@pytest.mark.django_db(transaction=True)
def test_a_lock_wait_past_the_lock_timeout_is_a_503_over_http():
    """The test holds the market row lock; the server (``MOLTSTREET_LOCK_TIMEOUT_MS=300``) gives up waiting for it
    and answers 503 ``service_busy`` with ``Retry-After``, and the same order goes through once the lock is free."""
    with killable_daphne("locks", {**server_env(), "MOLTSTREET_LOCK_TIMEOUT_MS": "300"}) as server:
        creator = register_agent(server.url, "lock-creator")
        alice = register_agent(server.url, "lock-alice")
        market_id = create_market(server.url, creator["api_key"], "Will a held lock hang the exchange?")["id"]
        body = order_body(market_id, "locked-1", "YES", "0.30", 2)
        url = f"{server.url}{API}/orders/"
        with transaction.atomic():
            lock_row(Market, market_id)
            answer = http_request("POST", url, body, api_key=alice["api_key"], timeout=FAST)
        assert_busy(answer)
        assert answer.body["error"]["detail"] == {"reason": "lock_timeout"}, answer
        assert 0.3 <= answer.elapsed < FAST, answer
        assert not Order.objects.filter(client_order_id="locked-1").exists()
        again = http_request("POST", url, body, api_key=alice["api_key"])
        assert again.status == 201, again
    assert_audit_clean()


@contextmanager
def deadlock_partner(first, then, *, closes_when_waiting: bool):
    """In another thread and transaction: lock ``first`` (a ``(model, pk)``), yield, then lock ``then``; commit.

    With ``closes_when_waiting`` the partner takes ``then`` only once another backend waits for a lock (it closes a
    cycle that the other side opened); otherwise as soon as it is told to (``go.set()``). Its ``deadlock_timeout``
    is 10 s, so the other side of any cycle is the one PostgreSQL picks as the victim."""
    go, holding, done = threading.Event(), threading.Event(), threading.Event()
    failure: list[BaseException] = []
    state: dict[str, Any] = {}

    def partner() -> None:
        try:
            with transaction.atomic():
                set_deadlock_timeout("10s")
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    state["pid"] = cursor.fetchone()[0]
                lock_row(*first)
                holding.set()
                if closes_when_waiting:
                    wait_for(lock_waiters, "the other side to wait for the partner's lock")
                else:
                    assert go.wait(STEP), "never told to go"
                lock_row(*then)
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
        finally:
            done.set()
            close_old_connections()
            connections.close_all()

    thread = threading.Thread(target=partner, name="deadlock-partner", daemon=True)
    thread.start()
    assert holding.wait(STEP), failure
    try:
        yield go, state
    finally:
        go.set()
        join_all([thread])
    assert not failure, failure


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("retries", [3, 0], ids=["retried", "no-retries"])
def test_a_real_deadlock_is_retried_by_service_transaction(retries, make_agent):
    """A deterministic deadlock: the partner holds B and waits for A; the service holds A and asks for B. PostgreSQL
    aborts the service's transaction (40P01); ``service_transaction`` runs it again and it succeeds. With no retries
    allowed the caller gets ``ServiceBusy`` (HTTP 503), never the raw database error."""
    a, b = make_agent("deadlock-a"), make_agent("deadlock-b")
    attempts: list[int] = []

    with deadlock_partner((Agent, b.pk), (Agent, a.pk), closes_when_waiting=False) as (go, partner):

        @service_transaction
        def a_then_b() -> int:
            attempts.append(len(attempts) + 1)
            set_deadlock_timeout("100ms")
            lock_row(Agent, a.pk)
            if len(attempts) == 1:
                go.set()  # the partner now waits for A...
                wait_for(lambda: partner.get("pid") in lock_waiters(), "the partner to wait for A")
            lock_row(Agent, b.pk)  # ...and B closes the cycle
            return len(attempts)

        moltstreet = {**__import__("django.conf").conf.settings.MOLTSTREET, "DEADLOCK_RETRIES": retries}
        with override_settings(MOLTSTREET=moltstreet):
            if retries:
                assert a_then_b() == 2
            else:
                with pytest.raises(ServiceBusy) as busy:
                    a_then_b()
                assert busy.value.detail == {"reason": "deadlock"}
                assert isinstance(busy.value.__cause__, OperationalError)
                assert busy.value.__cause__.__cause__.sqlstate == "40P01"
    assert attempts == ([1, 2] if retries else [1])


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_over_http_is_retried_or_answered_503_never_500():
    """Over HTTP: the test holds Alice's agent row, her order locks the market and waits for it, then the test asks
    for the market: a real deadlock inside the server's ``order_place``. Retried, the order is placed (201); with
    ``MOLTSTREET_DEADLOCK_RETRIES=0`` the client gets 503 ``service_busy``."""
    with killable_daphne("deadlock", server_env()) as server:
        creator = register_agent(server.url, "dl-creator")
        alice = register_agent(server.url, "dl-alice")
        market_id = create_market(server.url, creator["api_key"], "Will a deadlock reach the client?")["id"]

        def place_while_deadlocked(coid: str) -> HttpAnswer:
            url = f"{server.url}{API}/orders/"  # the server's port changes when it is started again
            result: list[HttpAnswer | BaseException] = []

            def post() -> None:
                try:
                    result.append(
                        http_request(
                            "POST",
                            url,
                            order_body(market_id, coid, "YES", "0.30", 1),
                            api_key=alice["api_key"],
                            timeout=STEP,
                        )
                    )
                except OSError as exc:
                    result.append(exc)

            poster = threading.Thread(target=post, name="poster", daemon=True)
            with deadlock_partner((Agent, alice["id"]), (Market, market_id), closes_when_waiting=True):
                poster.start()  # the order takes the market lock, then waits for Alice's row; the partner
                # then asks for the market: the server's session (deadlock_timeout 1 s) is the victim
            join_all([poster])
            assert isinstance(result[0], HttpAnswer), result
            return result[0]

        placed = place_while_deadlocked("dl-1")
        assert placed.status == 201, placed
        assert "retrying order_place after 40P01" in server.output(20000), server.output()

        server.stop()
        server.start(env={"MOLTSTREET_DEADLOCK_RETRIES": "0"})
        server.wait_ready(STEP)
        busy = place_while_deadlocked("dl-2")
        assert_busy(busy)
        assert busy.body["error"]["detail"] == {"reason": "deadlock"}, busy
        assert not Order.objects.filter(client_order_id="dl-2").exists()
    assert Order.objects.filter(client_order_id="dl-1").count() == 1
    assert_audit_clean()
