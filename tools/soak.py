"""The soak test (issue 4): many agents trading through the HTTP API while markets close and resolve, then the audit.

Run from the checkout, on the database and Redis of ``DATABASE_URL``/``REDIS_URL`` (Django is set up here, as the
benchmarks in ``bench/`` do; the soak is a tool, not part of the product, so no app imports it)::

    .venv/bin/python tools/soak.py [--agents 50] [--minutes 5 | --seconds S] [--markets 20] [--url URL]
                                   [--servers N] [--seed N] [--think S] [--timeout S] [--oracle-key KEY]

(``python -m tools.soak`` alike.) Exit status 0 when the run passed, 1 when it failed or could not get going, 2 on
bad arguments.

What runs:

- **Servers.** Without ``url``, ``servers`` real ``daphne moltstreet.asgi:application`` processes
  (:mod:`moltstreet.serving`) on the database and Redis of this process's settings, with the API rate limits raised
  (``MOLTSTREET_RATE_*`` = :data:`GENEROUS_RATE`) so one machine's agents are not throttled. With ``url``, the server
  already running there; its 429s are honoured (``Retry-After``) and counted.
- **Agents.** ``agents`` threads, each registered through ``POST /agents/`` as ``soak-<run>-<n>``, each with its own
  keep-alive HTTP connection (standard library ``http.client``), sending requests back to back (``think`` seconds
  apart on average, 0 by default) for ``duration`` seconds. Each request is one of: a limit order (BUY/SELL YES/NO
  around the market's drifting fair price, so some cross and some rest; GTC, IOC, FOK, GTD, post-only; some with a
  ``client_order_id``, some of those sent twice, in turn or concurrently, which must return the original order), a
  cancel, a cancel-all, a read (order book, positions, balance, orders, market, trades, ledger), a forecast, or a
  deliberately bad request (bad price, unknown market, ...) that must be refused with a 4xx.
- **Markets.** ``markets`` markets created through ``POST /markets/`` by soak agents (who pay the fee), about half
  with deadlines inside the run, some closed early by the operator, the rest outliving it; when fewer than half are
  open, agents create more. **Operator**: a thread that closes soak markets at their deadline and expires GTD orders
  (what ``run_scheduler`` does), closes some early, and resolves each closed market YES, NO or VOID a moment later,
  through the trading services (operators use the admin, not the API). With ``url`` and the same database, the
  closes go through the services and the resolutions through ``POST /markets/{id}/resolve/`` as an agent flagged
  ``is_oracle`` in the database; with another database, resolutions go through the API with ``oracle_key`` if given,
  otherwise there are no operator actions (the report says so).
- **Checks.** Every non-2xx answer is counted by status and ``error.code``; transport errors (no HTTP answer) by
  exception. Expected refusals (``insufficient_balance``, ``market_closed``, ...) are counted, not failures. Clients
  also check what they can see: a repeated ``client_order_id`` returns the original order and trades, a bad request
  gets a 4xx, the order book is never crossed, ``available = balance - locked >= 0``. After the agents stop (each
  finishes its request in flight, bounded by the request timeout), :func:`trading.audit.run_audit` checks every
  invariant of DESIGN section 5 and every soak agent's balance is compared with the sum of its ledger (through the
  database, or through ``GET /ledger/`` when the database is elsewhere).

The run **fails** (:attr:`SoakResult.ok` false) on an audit breach, a ledger mismatch, any 5xx, any request without an
HTTP answer, a bad request accepted, a client check that did not hold, a server process that died, or an agent thread
that crashed or did not stop.

Units: durations in seconds, latencies printed in milliseconds, prices as decimal strings, sizes in contracts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
API = "/api/v1"
# Rate budgets of the servers the soak starts: far above what one machine's agents can send.
GENEROUS_RATE = "1000000/min"
RATE_SCOPES = ("ANON", "AGENT_READ", "AGENT_WRITE", "REGISTER")
MAX_RETRY_WAIT = 60.0  # seconds: the longest Retry-After honoured (the end of the run cuts a wait short)
RETRIES = 3  # attempts after a 429 or 503 with Retry-After
SAMPLES = 8  # examples kept of each kind of failure

OUTCOMES = (("YES", 0.4), ("NO", 0.4), ("VOID", 0.2))
TIME_IN_FORCE = (("GTC", 55), ("IOC", 18), ("FOK", 10), ("GTD", 7), ("POST_ONLY", 10))
ACTIONS = (
    ("place", 52),
    ("cancel", 15),
    ("cancel_all", 2),
    ("orderbook", 9),
    ("positions", 5),
    ("me", 4),
    ("orders", 3),
    ("market", 2),
    ("trades", 2),
    ("ledger", 1),
    ("forecast", 2),
    ("probe", 3),
)


@dataclass
class SoakConfig:
    agents: int = 50
    duration: float = 300.0  # seconds of trading
    markets: int = 20
    url: str | None = None  # soak a running server instead of starting our own
    servers: int = 1  # daphne processes to start (without url)
    seed: int | None = None
    think: float = 0.0  # mean pause between one agent's requests, seconds
    timeout: float = 30.0  # seconds one request may take
    progress: float = 10.0  # seconds between progress lines
    oracle_key: str | None = None  # with url and another database: an oracle's API key for resolutions


# --------------------------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (transport error)
    body: Any = None
    code: str = ""  # error.code of a non-2xx answer
    retry_after: float | None = None
    transport: str = ""  # exception class name when no answer came


class Stats:
    """Everything counted during the run; one lock, since a counter bump is tiny next to an HTTP round trip."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[tuple[int, str]] = Counter()
        self.transport: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.samples: dict[str, list[str]] = defaultdict(list)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def sample(self, kind: str, text: str) -> None:
        with self.lock:
            if len(self.samples[kind]) < SAMPLES:
                self.samples[kind].append(text)
            self.counts[f"sampled:{kind}"] += 1

    def record(self, kind: str, method: str, path: str, body: Any, reply: Reply, seconds: float) -> None:
        with self.lock:
            self.counts["requests"] += 1
            self.latency[kind].append(seconds)
            if reply.transport:
                self.transport[reply.transport] += 1
            elif reply.status >= 300:
                self.errors[(reply.status, reply.code)] += 1
                if reply.status == 429:
                    self.counts["throttled"] += 1
                if reply.status >= 500:
                    self.counts["5xx"] += 1
        if reply.transport or reply.status >= 500:
            what = reply.transport or f"{reply.status} {json.dumps(reply.body)[:400]}"
            self.sample("5xx" if reply.status >= 500 else "transport", f"{method} {path} {json.dumps(body)} -> {what}")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --------------------------------------------------------------------------------------------------------------------
# HTTP


class HttpClient:
    """One keep-alive connection to ``base_url``; JSON in and out; 429/503 retried after ``Retry-After``."""

    def __init__(self, base_url: str, stats: Stats, stop: threading.Event, *, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an HTTP URL: {base_url}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/") + API
        self.stats, self.stop, self.timeout = stats, stop, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.used = False  # the connection has carried a request (a stale keep-alive may have been closed)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self.used = None, False

    def call(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        query: dict | None = None,
        raw: bytes | None = None,
        retry: bool = True,
    ) -> Reply:
        url = self.prefix + path + (f"?{urlencode(query)}" if query else "")
        for attempt in range(RETRIES + 1):
            started = time.perf_counter()
            reply = self._once(method, url, body, key, raw)
            self.stats.record(
                kind, method, path, body if raw is None else raw.decode(), reply, time.perf_counter() - started
            )
            if reply.status == 429:
                self.stats.add("retry_after:429")
            if (
                retry
                and reply.status in (429, 503)
                and reply.retry_after is not None
                and attempt < RETRIES
                and not self.stop.is_set()
            ):
                self.stats.add("retried")
                self.stop.wait(min(reply.retry_after, MAX_RETRY_WAIT))
                continue
            return reply
        return reply

    def _once(self, method: str, url: str, body: Any, key: str | None, raw: bytes | None) -> Reply:
        headers = {"Accept": "application/json"}
        data = raw
        if body is not None and raw is None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for fresh_try in (False, True):
            reused = self.used
            if self.conn is None:
                factory = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self.conn = factory(self.host, self.port, timeout=self.timeout)
            try:
                self.used = True
                self.conn.request(method, url, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                # A keep-alive connection the server closed while idle fails before any answer: reconnect once.
                stale = isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if reused and stale and not fresh_try:
                    self.stats.add("reconnects")
                    continue
                return Reply(status=0, transport=exc.__class__.__name__)
            if response.will_close:
                self.close()
            return self._reply(response, payload)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _reply(response: http.client.HTTPResponse, payload: bytes) -> Reply:
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload[:300].decode(errors="replace")
        code = ""
        if response.status >= 300:
            error = parsed.get("error") if isinstance(parsed, dict) else None
            code = str(error.get("code")) if isinstance(error, dict) else f"http_{response.status}"
        retry_after = None
        if (header := response.getheader("Retry-After")) is not None:
            try:
                retry_after = max(0.0, float(header))
            except ValueError:
                retry_after = 1.0
        return Reply(status=response.status, body=parsed, code=code, retry_after=retry_after)


# --------------------------------------------------------------------------------------------------------------------
# Markets


@dataclass
class SoakMarket:
    id: str
    deadline: datetime
    fair: float
    status: str = "open"  # open, closed, resolved
    close_early_at: float | None = None  # monotonic time the operator closes it, if early
    closed_at: float | None = None
    resolve_at: float | None = None
    outcome: str | None = None


class MarketBoard:
    """The soak's markets and their drifting fair prices, shared by the agents and the operator."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.markets: dict[str, SoakMarket] = {}

    def add(self, market: SoakMarket) -> None:
        with self.lock:
            self.markets[market.id] = market

    def all(self) -> list[SoakMarket]:
        with self.lock:
            return list(self.markets.values())

    def open(self) -> list[SoakMarket]:
        now = datetime.now(UTC)
        with self.lock:
            return [m for m in self.markets.values() if m.status == "open" and m.deadline > now]

    def pick(self, rng: random.Random) -> SoakMarket | None:
        markets = self.open()
        return rng.choice(markets) if markets else None

    def drift(self, rng: random.Random) -> None:
        with self.lock:
            for market in self.markets.values():
                market.fair = min(0.95, max(0.05, market.fair + rng.gauss(0, 0.01)))


def clamp_price(value: float) -> Decimal:
    return min(Decimal("0.99"), max(Decimal("0.01"), Decimal(str(round(value, 2)))))


def iso(moment: datetime) -> str:
    return moment.isoformat()


# --------------------------------------------------------------------------------------------------------------------
# Agents


@dataclass
class SoakAgent:
    index: int
    name: str
    id: str
    key: str


class AgentWorker(threading.Thread):
    """One agent: a random mix of orders, cancels, reads and bad requests until ``stop`` is set."""

    def __init__(
        self,
        agent: SoakAgent,
        client: HttpClient,
        board: MarketBoard,
        stats: Stats,
        stop: threading.Event,
        rng: random.Random,
        *,
        think: float,
        run_id: str,
        client_factory: Callable[[], HttpClient],
    ) -> None:
        super().__init__(name=f"soak-agent-{agent.index}", daemon=True)
        self.agent, self.client, self.board, self.stats, self.stop, self.rng = agent, client, board, stats, stop, rng
        self.think, self.run_id, self.client_factory = think, run_id, client_factory
        self.resting: dict[str, str] = {}  # order id -> market id, as far as this agent knows
        self.holdings: dict[tuple[str, str], int] = {}  # (market id, side) -> unreserved contracts, last seen
        self.coids = 0
        self.actions = [name for name, _ in ACTIONS]
        self.weights = [weight for _, weight in ACTIONS]

    def call(self, kind: str, method: str, path: str, body: Any = None, **kwargs) -> Reply:
        return self.client.call(kind, method, path, body, key=self.agent.key, **kwargs)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                action = self.rng.choices(self.actions, self.weights)[0]
                getattr(self, f"do_{action}")()
                if self.think:
                    self.stop.wait(self.rng.uniform(0, 2 * self.think))
        except Exception:  # a bug in the soak itself: reported, and the run fails
            self.stats.sample("agent crashed", f"{self.agent.name}: {traceback.format_exc()}")
            self.stats.add("agent_crashes")
        finally:
            self.client.close()

    def anomaly(self, what: str, text: str) -> None:
        self.stats.add("anomalies")
        self.stats.sample(what, text)

    # -- orders

    def order_body(self, market: SoakMarket) -> dict[str, Any]:
        rng = self.rng
        side = rng.choice(("YES", "NO"))
        available = self.holdings.get((market.id, side), 0)
        action = "SELL" if available > 0 and rng.random() < 0.5 else "BUY"
        fair = market.fair if side == "YES" else 1 - market.fair
        price = clamp_price(fair + (rng.uniform(-0.06, 0.04) if action == "BUY" else rng.uniform(-0.04, 0.06)))
        size = rng.randint(1, 10) if rng.random() < 0.85 else rng.randint(11, 60)
        if action == "SELL":
            size = min(size, available)
        body: dict[str, Any] = {"market": market.id, "side": side, "action": action, "size": size}
        # Requests accept prices as strings or numbers.
        body["price"] = float(price) if rng.random() < 0.1 else str(price)
        tif = rng.choices([t for t, _ in TIME_IN_FORCE], [w for _, w in TIME_IN_FORCE])[0]
        if tif == "POST_ONLY":
            body["post_only"] = True
        elif tif != "GTC" or rng.random() < 0.2:
            body["time_in_force"] = tif
        if tif == "GTD":
            body["expires_at"] = iso(datetime.now(UTC) + timedelta(seconds=rng.uniform(2, 30)))
        if rng.random() < 0.3:
            self.coids += 1
            body["client_order_id"] = f"{self.run_id}-{self.agent.index}-{self.coids}"
        if rng.random() < 0.05:
            body["forecast"] = f"{market.fair:.2f}"
        return body

    def do_place(self) -> None:
        market = self.board.pick(self.rng)
        if market is None:
            self.call("markets", "GET", "/markets/", query={"status": "open", "page_size": 20})
            return
        body = self.order_body(market)
        if "client_order_id" in body and self.rng.random() < 0.02:
            self.concurrent_twins(body)
            return
        reply = self.call("place", "POST", "/orders/", body)
        self.accepted(body, reply)
        if reply.status == 201 and "client_order_id" in body and self.rng.random() < 0.25:
            again = self.call("place_retry", "POST", "/orders/", body)
            self.check_retry(body, reply, again)

    def accepted(self, body: dict[str, Any], reply: Reply) -> None:
        """Book what a placement answer says; ``created`` 201 only (a 200 repeats an order counted before)."""
        if reply.status == 201:
            order, trades = reply.body["order"], reply.body["trades"]
            self.stats.add("orders_accepted")
            tif = "POST_ONLY" if order["post_only"] else order["time_in_force"]
            self.stats.add(f"orders:{tif}")
            self.stats.add("trades", len(trades))
            self.stats.add("contracts", sum(t["size"] for t in trades))
            if order["status"] in ("open", "partial"):
                self.resting[order["id"]] = body["market"]
            key = (body["market"], body["side"])
            if body["action"] == "SELL":
                self.holdings[key] = max(0, self.holdings.get(key, 0) - body["size"])
            elif order["filled"]:
                self.holdings[key] = self.holdings.get(key, 0) + order["filled"]
        elif reply.code in ("open_order_limit", "insufficient_balance"):
            if self.resting and self.rng.random() < 0.3:
                self.do_cancel_all()
        elif reply.code == "insufficient_position":
            self.holdings[(body["market"], body["side"])] = 0
        elif reply.status == 404:
            self.anomaly("known market answered 404", f"POST /orders/ {json.dumps(body)} -> {reply.body}")

    def check_retry(self, body: dict[str, Any], first: Reply, again: Reply) -> None:
        """A repeated ``client_order_id`` must return the original order (200) and its trades, and create nothing."""
        self.stats.add("retries_sent")
        if (
            again.status == 200
            and again.body["order"]["id"] == first.body["order"]["id"]
            and [t["id"] for t in again.body["trades"]] == [t["id"] for t in first.body["trades"]]
        ):
            self.stats.add("retries_same")
            return
        if again.status >= 500 or again.status == 429 or again.transport:
            return  # a failure counted already, or throttled: nothing to compare
        self.anomaly(
            "repeated client_order_id did not return the original",
            f"POST /orders/ {json.dumps(body)} twice: 201 {first.body} then {again.status} {again.body}",
        )

    def concurrent_twins(self, body: dict[str, Any]) -> None:
        """The same ``client_order_id`` sent on two connections at once: one order, both answers name it."""
        other = self.client_factory()
        replies: list[Reply] = []

        def twin() -> None:
            replies.append(other.call("place_twin", "POST", "/orders/", body, key=self.agent.key))

        thread = threading.Thread(target=twin, daemon=True)
        thread.start()
        mine = self.call("place_twin", "POST", "/orders/", body)
        thread.join(self.client.timeout * (RETRIES + 2))
        other.close()
        self.stats.add("twins_sent")
        if not replies:
            return
        pair = [mine, replies[0]]
        if any(r.status >= 500 or r.status == 429 or r.transport for r in pair):
            return  # a failure counted already, or throttled: nothing to compare
        ok = [r for r in pair if r.status in (200, 201)]
        statuses = sorted(r.status for r in pair)
        if len(ok) == 2:
            if statuses == [200, 201] and ok[0].body["order"]["id"] == ok[1].body["order"]["id"]:
                self.stats.add("twins_same")
                self.accepted(body, next(r for r in pair if r.status == 201))
                return
        elif not ok and pair[0].code == pair[1].code:
            self.stats.add("twins_same")  # both refused alike (e.g. insufficient_balance): nothing was created
            return
        self.anomaly(
            "concurrent twins with one client_order_id",
            f"POST /orders/ {json.dumps(body)} twice at once -> {[(r.status, r.body) for r in pair]}",
        )

    def do_cancel(self) -> None:
        if not self.resting:
            self.do_place()
            return
        order_id = self.rng.choice(list(self.resting))
        reply = self.call("cancel", "DELETE", f"/orders/{order_id}/")
        if reply.status == 200:
            self.stats.add("cancels")
            self.resting.pop(order_id, None)
        elif reply.code == "order_not_cancellable":
            self.resting.pop(order_id, None)  # filled, expired, or cancelled by a close meanwhile
        elif reply.status == 404:
            self.anomaly("own order answered 404", f"DELETE /orders/{order_id}/ -> {reply.body}")

    def do_cancel_all(self) -> None:
        body: dict[str, Any] = {}
        if self.resting and self.rng.random() < 0.5:
            body["market"] = self.rng.choice(list(self.resting.values()))
        reply = self.call("cancel_all", "POST", "/orders/cancel-all/", body)
        if reply.status == 200:
            self.stats.add("cancel_all_calls")
            self.stats.add("cancel_all_orders", len(reply.body))
            if "market" in body:
                self.resting = {o: m for o, m in self.resting.items() if m != body["market"]}
            else:
                self.resting.clear()

    # -- reads

    def do_orderbook(self) -> None:
        market = self.board.pick(self.rng)
        if market is None:
            return
        reply = self.call("orderbook", "GET", f"/markets/{market.id}/orderbook/")
        if reply.status != 200:
            return
        yes, no = reply.body["yes"], reply.body["no"]
        for levels in (yes, no):
            prices = [Decimal(level["price"]) for level in levels]
            if prices != sorted(prices, reverse=True) or any(level["size"] <= 0 for level in levels):
                self.anomaly("order book levels out of order", f"GET /markets/{market.id}/orderbook/ -> {reply.body}")
        if yes and no and Decimal(yes[0]["price"]) + Decimal(no[0]["price"]) >= 1:
            self.anomaly("crossed order book", f"GET /markets/{market.id}/orderbook/ -> {reply.body}")

    def do_positions(self) -> None:
        reply = self.call("positions", "GET", "/positions/", query={"open": "true"})
        if reply.status != 200:
            return
        self.holdings = {}
        for pos in reply.body["results"]:
            if pos["market_status"] != "open":
                continue
            self.holdings[(pos["market"], "YES")] = pos["yes_shares"] - pos["yes_reserved"]
            self.holdings[(pos["market"], "NO")] = pos["no_shares"] - pos["no_reserved"]
            if min(pos["yes_shares"], pos["no_shares"], pos["yes_reserved"], pos["no_reserved"]) < 0:
                self.anomaly("negative position", f"GET /positions/ -> {pos}")

    def do_me(self) -> None:
        reply = self.call("me", "GET", "/agents/me/")
        if reply.status != 200:
            return
        balance, locked, available = (
            Decimal(reply.body[name]) for name in ("balance", "locked_balance", "available_balance")
        )
        if not (Decimal(0) <= locked <= balance) or available != balance - locked:
            self.anomaly("balance out of bounds", f"GET /agents/me/ -> {reply.body}")

    def do_orders(self) -> None:
        reply = self.call("orders", "GET", "/orders/", query={"status": "resting", "page_size": 200})
        if reply.status == 200 and not reply.body.get("next"):
            self.resting = {o["id"]: o["market"] for o in reply.body["results"]}

    def do_market(self) -> None:
        market = self.board.pick(self.rng)
        if market is not None:
            self.call("market", "GET", f"/markets/{market.id}/")

    def do_trades(self) -> None:
        market = self.board.pick(self.rng)
        if market is not None and self.rng.random() < 0.5:
            self.call("trades", "GET", f"/markets/{market.id}/trades/", query={"page_size": 20})
        else:
            self.call("trades", "GET", "/trades/", query={"page_size": 20})

    def do_ledger(self) -> None:
        self.call("ledger", "GET", "/ledger/", query={"page_size": 20})

    def do_forecast(self) -> None:
        market = self.board.pick(self.rng)
        if market is not None:
            body = {"probability": f"{market.fair:.2f}", "reasoning": "soak: the drifting fair price"}
            if self.call("forecast", "POST", f"/markets/{market.id}/forecast/", body).status == 201:
                self.stats.add("forecasts")

    # -- bad requests: each must be refused with a 4xx, ideally the one named

    def do_probe(self) -> None:
        market = self.board.pick(self.rng)
        market_id = market.id if market else str(uuid.uuid4())
        order = {"market": market_id, "side": "YES", "action": "BUY", "price": "0.50", "size": 1}
        probes: list[tuple[str, int, str, str, Any, dict]] = [
            ("price above 0.99", 400, "POST", "/orders/", {**order, "price": "1.50"}, {}),
            ("price off the tick", 400, "POST", "/orders/", {**order, "price": "0.505"}, {}),
            ("size zero", 400, "POST", "/orders/", {**order, "size": 0}, {}),
            ("side MAYBE", 400, "POST", "/orders/", {**order, "side": "MAYBE"}, {}),
            ("unknown market", 404, "POST", "/orders/", {**order, "market": str(uuid.uuid4())}, {}),
            ("cancel an unknown order", 404, "DELETE", f"/orders/{uuid.uuid4()}/", None, {}),
            ("orderbook of an unknown market", 404, "GET", f"/markets/{uuid.uuid4()}/orderbook/", None, {}),
            ("order without an API key", 401, "POST", "/orders/", order, {"key": None}),
            ("malformed JSON", 400, "POST", "/orders/", None, {"raw": b'{"market": '}),
        ]
        what, expected, method, path, body, options = self.rng.choice(probes)
        key = options.get("key", self.agent.key)
        reply = self.client.call("probe", method, path, body, key=key, raw=options.get("raw"))
        self.stats.add("probes_sent")
        if 400 <= reply.status < 500 and reply.status != 429:
            self.stats.add("probes_refused")
            if reply.status != expected:
                self.stats.add("probes_other_4xx")
                self.stats.sample(
                    "bad request refused with an unexpected 4xx",
                    f"{what}: {method} {path} {json.dumps(body)} -> {reply.status} {reply.body} (expected {expected})",
                )
        elif 200 <= reply.status < 300:
            self.anomaly(
                "bad request accepted", f"{what}: {method} {path} {json.dumps(body)} -> {reply.status} {reply.body}"
            )


# --------------------------------------------------------------------------------------------------------------------
# Operator


class Operator(threading.Thread):
    """Closes soak markets at their deadline or early, expires GTD orders, and resolves closed markets, every half
    second; also asks agents to create markets when fewer than half of ``target`` are open."""

    def __init__(
        self,
        *,
        board: MarketBoard,
        stats: Stats,
        stop: threading.Event,
        rng: random.Random,
        closes: bool,
        resolver: Callable[[str, str], bool] | None,
        create_market: Callable[[], None],
        target: int,
        ends_at: float,
        duration: float,
    ) -> None:
        super().__init__(name="soak-operator", daemon=True)
        self.board, self.stats, self.stop, self.rng = board, stats, stop, rng
        self.closes, self.resolver, self.create_market = closes, resolver, create_market
        self.target, self.ends_at, self.duration = target, ends_at, duration
        self.last_drift = 0.0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.tick(final=False)
                self.stop.wait(0.5)
        except Exception:
            self.stats.sample("operator crashed", traceback.format_exc())
            self.stats.add("operator_crashes")
        finally:
            close_db_connections()

    def resolve_delay(self) -> float:
        return self.rng.uniform(0.2, max(0.3, min(5.0, 0.05 * self.duration)))

    def tick(self, *, final: bool) -> None:
        now = time.monotonic()
        if now - self.last_drift >= 1.0:
            self.board.drift(self.rng)
            self.last_drift = now
        if self.closes:
            self.close_markets(now)
        if self.resolver is not None:
            for market in self.board.all():
                if market.status == "closed" and (final or (market.resolve_at or 0) <= now):
                    outcome = self.rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
                    if self.resolver(market.id, outcome):
                        market.status, market.outcome = "resolved", outcome
                        self.stats.add("markets_resolved")
                        self.stats.add(f"resolved:{outcome}")
        if not final and now < self.ends_at - 0.2 * self.duration and len(self.board.open()) < (self.target + 1) // 2:
            self.create_market()

    def close_markets(self, now: float) -> None:
        from django.db import DatabaseError

        from moltstreet.errors import MoltStreetError
        from trading import lifecycle

        wall = datetime.now(UTC)
        for market in self.board.all():
            if market.status != "open":
                continue
            due = market.deadline <= wall
            early = not due and market.close_early_at is not None and market.close_early_at <= now
            if not (due or early):
                continue
            try:
                lifecycle.market_close(market_id=market.id)
            except (MoltStreetError, DatabaseError) as exc:  # e.g. a lock timeout: next tick
                self.stats.add("operator_retries")
                self.stats.sample("operator action retried", f"close {market.id}: {exc!r}")
                continue
            market.status, market.closed_at, market.resolve_at = "closed", now, now + self.resolve_delay()
            self.stats.add("markets_closed")
            self.stats.add("closed:early" if early else "closed:deadline")
        self.expire_orders(wall)

    def expire_orders(self, wall: datetime) -> None:
        """Expire the GTD orders past ``expires_at`` in the soak markets (what ``run_scheduler`` does)."""
        from django.db import DatabaseError

        from moltstreet.errors import MoltStreetError
        from trading import lifecycle
        from trading.models import Order

        ids = [m.id for m in self.board.all() if m.status == "open"]
        due = (
            Order.objects.filter(market_id__in=ids, status__in=Order.RESTING, expires_at__lte=wall)
            .values_list("market_id", flat=True)
            .distinct()
        )
        for market_id in list(due):
            try:
                self.stats.add("gtd_expired", lifecycle.orders_expire(market_id=market_id, now=wall))
            except (MoltStreetError, DatabaseError) as exc:
                self.stats.add("operator_retries")
                self.stats.sample("operator action retried", f"expire {market_id}: {exc!r}")


def close_db_connections() -> None:
    from django.db import connections

    connections.close_all()  # this thread's connections only


def services_resolver(stats: Stats) -> Callable[[str, str], bool]:
    def resolve(market_id: str, outcome: str) -> bool:
        from django.db import DatabaseError

        from markets.models import Resolver
        from moltstreet.errors import MoltStreetError
        from trading.resolution import market_resolve

        try:
            market_resolve(market_id=market_id, outcome=outcome, resolver=Resolver.operator(None, "soak operator"))
        except (MoltStreetError, DatabaseError) as exc:
            stats.add("operator_retries")
            stats.sample("operator action retried", f"resolve {market_id} {outcome}: {exc!r}")
            return False
        return True

    return resolve


def api_resolver(client: HttpClient, key: str, stats: Stats) -> Callable[[str, str], bool]:
    def resolve(market_id: str, outcome: str) -> bool:
        reply = client.call("resolve", "POST", f"/markets/{market_id}/resolve/", {"outcome": outcome}, key=key)
        if reply.status == 200 and reply.body.get("outcome") == outcome:
            return True
        if reply.status == 202 and (reply.body.get("resolution") or {}).get("outcome") == outcome:
            stats.add("resolutions_proposed")  # final after the server's dispute window
            return True
        stats.add("operator_retries")
        stats.sample(
            "operator action retried", f"POST /markets/{market_id}/resolve/ {outcome} -> {reply.status} {reply.body}"
        )
        return False

    return resolve


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class SoakResult:
    ok: bool
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


class Soak:
    def __init__(self, config: SoakConfig, write: Callable[[str], None]) -> None:
        if config.agents < 2:
            raise ValueError("agents must be at least 2 (somebody has to trade with somebody)")
        if config.markets < 1:
            raise ValueError("markets must be at least 1")
        if config.duration <= 0:
            raise ValueError("the duration must be positive")
        if config.servers < 1:
            raise ValueError("servers must be at least 1")
        self.config = config
        self.write = write
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(f"{self.seed}-soak")
        self.run_id = uuid.uuid4().hex[:6]  # names unique per run, whatever the seed
        self.stats = Stats()
        self.stop = threading.Event()
        self.board = MarketBoard()
        self.agents: list[SoakAgent] = []
        self.urls: list[str] = []
        self.servers: list = []
        self.same_db = False
        self.failures: list[str] = []
        self.created_markets = 0
        self.elapsed = self.stop_seconds = 0.0
        self.run_requests = 0

    # -- helpers

    def client(self, index: int = 0) -> HttpClient:
        return HttpClient(self.urls[index % len(self.urls)], self.stats, self.stop, timeout=self.config.timeout)

    def say(self, text: str) -> None:
        self.write(text)

    # -- phases

    def run(self) -> SoakResult:
        config = self.config
        with ExitStack() as stack:
            if config.url:
                self.urls = [config.url.rstrip("/")]
            else:
                self.start_servers(stack)
            where = ", ".join(self.urls)
            self.say(
                f"soak run {self.run_id}: {config.agents} agents, {config.markets} markets, {config.duration:g} s, "
                f"seed {self.seed}, against {where}"
            )
            self.register_agents()
            self.same_db = self.database_is_shared()
            resolver, closes = self.operator_plan()
            self.create_initial_markets()
            self.trade(resolver, closes)
            self.check(resolver, closes)
        return SoakResult(ok=not self.failures, failures=self.failures, figures=dict(self.stats.counts))

    def start_servers(self, stack: ExitStack) -> None:
        from moltstreet import serving

        env = serving.server_env(
            **{f"MOLTSTREET_RATE_{scope}": GENEROUS_RATE for scope in RATE_SCOPES},
            # The oracle's proposals are final at once, so the soak's markets settle (and the audit sees payouts).
            RESOLUTION_DISPUTE_HOURS="0",
        )
        self.say(f"starting {self.config.servers} daphne server(s) on {redact(env['DATABASE_URL'])}")
        servers = stack.enter_context(serving.running_servers(self.config.servers, env, timeout=60))
        self.servers = servers
        self.urls = [server.url for server in servers]
        stack.callback(self.keep_logs_on_trouble)

    def server_trouble(self) -> bool:
        """5xx, unanswered requests or a dead server: the server logs are worth keeping."""
        s = self.stats
        return bool(s["5xx"] or sum(s.transport.values()) or any(not server.alive() for server in self.servers))

    def keep_logs_on_trouble(self) -> None:
        if self.server_trouble():
            for server in self.servers:
                server.keep_log = True

    def register_agents(self) -> None:
        def register(index: int) -> SoakAgent:
            client = self.client(index)
            try:
                name = f"soak-{self.run_id}-{index}"
                reply = client.call("register", "POST", "/agents/", {"name": name, "description": "soak test agent"})
            finally:
                client.close()
            if reply.status != 201:
                raise SoakAbort(f"registering {name} failed: {reply.status} {reply.transport} {reply.body}")
            return SoakAgent(index=index, name=name, id=reply.body["id"], key=reply.body["api_key"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            self.agents = list(pool.map(register, range(self.config.agents)))
        self.say(f"registered {len(self.agents)} agents soak-{self.run_id}-0..{len(self.agents) - 1}")

    def database_is_shared(self) -> bool:
        """Whether this process's database is the one the server writes: our agents are in it."""
        if not self.config.url:
            return True
        from django.db import DatabaseError

        from agents.models import Agent

        try:
            found = Agent.objects.filter(id=self.agents[0].id, name=self.agents[0].name).exists()
        except DatabaseError:
            found = False
        close_db_connections()
        return found

    def operator_plan(self) -> tuple[Callable[[str, str], bool] | None, bool]:
        config = self.config
        if not config.url:
            self.say("operator: closes and resolutions through the trading services in this process")
            return services_resolver(self.stats), True
        oracle_key = config.oracle_key
        if self.same_db and not oracle_key:
            from agents.models import Agent

            oracle = self.register_extra("oracle")
            Agent.objects.filter(id=oracle.id).update(is_oracle=True)
            oracle_key = oracle.key
        client = self.client()
        if self.same_db:
            self.say(
                "operator: closes through the trading services, resolutions through POST /markets/{id}/resolve/ (oracle)"
            )
            return api_resolver(client, oracle_key, self.stats), True
        if oracle_key:
            self.say(
                "operator: the server's database is not this process's: no closes (the server's scheduler closes at "
                "deadlines), resolutions through POST /markets/{id}/resolve/ with --oracle-key"
            )
            return api_resolver(client, oracle_key, self.stats), False
        self.say(
            "operator: the server's database is not this process's and no --oracle-key was given: "
            "NO operator actions (no early closes, no resolutions); the audit is skipped too"
        )
        return None, False

    def register_extra(self, role: str) -> SoakAgent:
        client = self.client()
        name = f"soak-{self.run_id}-{role}"
        reply = client.call("register", "POST", "/agents/", {"name": name, "description": f"soak {role}"})
        client.close()
        if reply.status != 201:
            raise SoakAbort(f"registering {name} failed: {reply.status} {reply.transport} {reply.body}")
        return SoakAgent(index=-1, name=name, id=reply.body["id"], key=reply.body["api_key"])

    def new_market(self, creator: SoakAgent, deadline_in: float, close_early_in: float | None) -> None:
        client = self.client(creator.index)
        number = self.created_markets + 1
        body = {
            "question": f"Soak {self.run_id} #{number}: will the drifting price end above 0.50?",
            "description": "Created by tools/soak.py; resolved at random by its operator.",
            "category": "soak",
            "deadline": iso(datetime.now(UTC) + timedelta(seconds=deadline_in)),
        }
        reply = client.call("create_market", "POST", "/markets/", body, key=creator.key)
        client.close()
        if reply.status != 201:
            self.stats.sample(
                "market creation refused", f"POST /markets/ {json.dumps(body)} -> {reply.status} {reply.body}"
            )
            return
        self.created_markets += 1
        self.stats.add("markets_created")
        early = time.monotonic() + close_early_in if close_early_in is not None else None
        market = SoakMarket(
            id=reply.body["id"],
            deadline=datetime.fromisoformat(reply.body["deadline"]),
            fair=self.rng.uniform(0.2, 0.8),
            close_early_at=early,
        )
        self.board.add(market)

    def create_initial_markets(self) -> None:
        """About 45% close at their deadline during the run, 20% are closed early by the operator, the rest stay
        open past the end."""
        n, duration = self.config.markets, self.config.duration
        at_deadline = max(1, round(0.45 * n))
        early = max(1, round(0.2 * n)) if n >= 3 else 0
        for i in range(n):
            creator = self.agents[i % len(self.agents)]
            if i < at_deadline:
                self.new_market(creator, self.rng.uniform(0.15, 0.85) * duration, None)
            elif i < at_deadline + early:
                self.new_market(creator, duration + 86400, self.rng.uniform(0.1, 0.8) * duration)
            else:
                self.new_market(creator, duration + 86400, None)
        self.say(f"created {self.created_markets} markets")

    def replenish(self) -> None:
        creator = self.rng.choice(self.agents)
        self.new_market(creator, self.rng.uniform(0.2, 0.6) * self.config.duration, None)

    def trade(self, resolver, closes: bool) -> None:
        config = self.config
        started_requests = self.stats["requests"]
        start = time.monotonic()
        ends_at = start + config.duration
        operator = None
        if resolver is not None or closes:
            operator = Operator(
                board=self.board,
                stats=self.stats,
                stop=self.stop,
                rng=random.Random(f"{self.seed}-operator"),
                closes=closes,
                resolver=resolver,
                create_market=self.replenish,
                target=config.markets,
                ends_at=ends_at,
                duration=config.duration,
            )
        workers = [
            AgentWorker(
                agent,
                self.client(agent.index),
                self.board,
                self.stats,
                self.stop,
                random.Random(f"{self.seed}-agent-{agent.index}"),
                think=config.think,
                run_id=self.run_id,
                client_factory=lambda index=agent.index: self.client(index),
            )
            for agent in self.agents
        ]
        if operator is not None:
            operator.start()
        for worker in workers:
            worker.start()
        progress_every = min(config.progress, max(2.0, config.duration / 4))
        last_t, last_n = start, started_requests
        next_progress = start + progress_every
        try:
            while (now := time.monotonic()) < ends_at:
                time.sleep(max(0.0, min(next_progress, ends_at) - now))
                if time.monotonic() >= next_progress:
                    last_t, last_n = self.progress(start, last_t, last_n)
                    next_progress += progress_every
                dead = [s.name for s in self.servers if not s.alive()]
                if dead:
                    self.failures.append(f"server(s) {', '.join(dead)} died during the run")
                    break
        except KeyboardInterrupt:
            self.failures.append("interrupted")
        finally:
            self.stop.set()
            stopping = time.monotonic()
            limit = config.timeout * (RETRIES + 1) + 5
            for worker in workers:
                worker.join(max(0.0, limit - (time.monotonic() - stopping)))
            stuck = [w.name for w in workers if w.is_alive()]
            if stuck:
                self.failures.append(f"{len(stuck)} agent(s) did not stop within {limit:.0f} s: {stuck[:5]}")
            if operator is not None:
                operator.join(limit)
                if operator.is_alive():
                    self.failures.append("the operator did not stop")
            self.elapsed = time.monotonic() - start
            self.stop_seconds = time.monotonic() - stopping
            self.run_requests = self.stats["requests"] - started_requests
        if operator is not None:  # what became due while the agents stopped, and every closed market resolved
            operator.tick(final=True)
            close_db_connections()

    def progress(self, start: float, last_t: float, last_n: int) -> tuple[float, int]:
        now, s = time.monotonic(), self.stats
        n = s["requests"]
        with s.lock:
            errors4 = sum(c for (status, _), c in s.errors.items() if 400 <= status < 500)
            transport = sum(s.transport.values())
        markets = self.board.all()
        self.say(
            f"[{now - start:6.1f}s] requests {n} ({(n - last_n) / max(1e-9, now - last_t):.0f}/s) "
            f"orders {s['orders_accepted']} trades {s['trades']} cancels {s['cancels']} "
            f"4xx {errors4} 5xx {s['5xx']} transport {transport} anomalies {s['anomalies']} | markets "
            f"open {sum(m.status == 'open' for m in markets)} closed {s['markets_closed']} "
            f"resolved {s['markets_resolved']}"
        )
        return now, n

    # -- after the run

    def check(self, resolver, closes: bool) -> None:
        s = self.stats
        self.say(self.summary())
        if self.same_db:
            audit_text, ledger_text = self.check_database()
        else:
            audit_text = "audit: skipped (the server's database is not this process's)"
            ledger_text = self.check_ledgers_http()
        self.say(audit_text)
        self.say(ledger_text)
        if s["5xx"]:
            self.failures.append(f"{s['5xx']} answer(s) with status 5xx")
        if sum(s.transport.values()):
            self.failures.append(f"{sum(s.transport.values())} request(s) without an HTTP answer")
        if s["anomalies"]:
            self.failures.append(f"{s['anomalies']} client check(s) failed (see 'client checks')")
        if s["agent_crashes"] or s["operator_crashes"]:
            self.failures.append("a soak thread crashed (see 'agent crashed' / 'operator crashed')")
        if s["orders_accepted"] == 0:
            self.failures.append("no order was accepted")
        self.say(self.samples_text())
        if self.server_trouble():
            for server in self.servers:
                server.keep_log = True
                self.say(f"server {server.name} log kept at {server.log_path}; its end:\n{server.output(4000)}")
        if self.failures:
            self.say("result: FAIL\n  " + "\n  ".join(self.failures))
        else:
            self.say("result: PASS")

    def check_database(self) -> tuple[str, str]:
        from django.db.models import Sum

        from agents.models import Agent, LedgerEntry
        from moltstreet.money import ZERO, quantize
        from trading.audit import run_audit
        from trading.models import Trade

        try:
            report = run_audit()
            lines = ["audit:", *("  " + line for line in report.render().splitlines())]
            if report.ok:
                lines.append("  audit clean")
            else:
                self.failures.append(f"audit found {len(report.breaches)} breach(es)")
            ids = [a.id for a in self.agents]
            sums = dict(
                LedgerEntry.objects.filter(agent_id__in=ids)
                .values("agent_id")
                .annotate(s=Sum("amount"))
                .values_list("agent_id", "s")
            )
            mismatched = []
            for agent in Agent.objects.filter(id__in=ids).only("id", "name", "balance"):
                total = quantize(sums.get(agent.id, ZERO))
                if total != agent.balance:
                    mismatched.append(f"{agent.name}: balance {agent.balance}, ledger sums to {total}")
            ledger = [
                f"ledger check: {len(ids)} soak agents, balance == sum of ledger for {len(ids) - len(mismatched)}"
            ]
            ledger += ["  " + m for m in mismatched[:SAMPLES]]
            if mismatched:
                self.failures.append(f"{len(mismatched)} agent(s) whose balance is not the sum of their ledger")
            market_ids = [m.id for m in self.board.all()]
            stored = Trade.objects.filter(market_id__in=market_ids).aggregate(n=Sum("size"))["n"] or 0
            count = Trade.objects.filter(market_id__in=market_ids).count()
            ledger.append(
                f"trades stored in the soak markets: {count} ({stored} contracts); "
                f"answered to takers: {self.stats['trades']} ({self.stats['contracts']} contracts)"
            )
            return "\n".join(lines), "\n".join(ledger)
        finally:
            close_db_connections()

    def check_ledgers_http(self) -> str:
        # Its own stop event: the run's is set, and these reads must still wait out a 429's Retry-After.
        client = HttpClient(self.urls[0], self.stats, threading.Event(), timeout=self.config.timeout)
        mismatched, checked = [], 0
        for agent in self.agents:
            me = client.call("check", "GET", "/agents/me/", key=agent.key)
            total, query = Decimal(0), {"page_size": 200}
            complete = me.status == 200
            while complete:
                page = client.call("check", "GET", "/ledger/", key=agent.key, query=query)
                if page.status != 200:
                    complete = False
                    break
                total += sum(Decimal(row["amount"]) for row in page.body["results"])
                if not page.body.get("next"):
                    break
                query = dict(parse_qsl(urlsplit(page.body["next"]).query))
            if not complete:
                mismatched.append(f"{agent.name}: could not read its balance and ledger")
                continue
            checked += 1
            if total != Decimal(me.body["balance"]):
                mismatched.append(f"{agent.name}: balance {me.body['balance']}, ledger sums to {total}")
        client.close()
        if mismatched:
            self.failures.append(f"{len(mismatched)} agent(s) whose balance is not the sum of their ledger")
        lines = [f"ledger check (through the API): {checked} soak agents, {checked - len(mismatched)} consistent"]
        return "\n".join(lines + ["  " + m for m in mismatched[:SAMPLES]])

    def summary(self) -> str:
        s, config = self.stats, self.config
        elapsed = self.elapsed or config.duration
        with s.lock:
            errors = sorted(s.errors.items(), key=lambda item: (-item[1], item[0]))
            transport = sorted(s.transport.items(), key=lambda item: -item[1])
            latency = {kind: sorted(values) for kind, values in s.latency.items()}
        run_requests = self.run_requests or s["requests"]
        tifs = ", ".join(f"{t} {s[f'orders:{t}']}" for t, _ in TIME_IN_FORCE)
        resolved = ", ".join(f"{o} {s[f'resolved:{o}']}" for o, _ in OUTCOMES)
        lines = [
            "summary:",
            f"  run: {config.agents} agents on {len(self.urls)} server(s), {elapsed:.1f} s of trading "
            f"(agents stopped in {self.stop_seconds:.1f} s), seed {self.seed}",
            f"  requests sent: {s['requests']} ({run_requests} while trading, {run_requests / max(elapsed, 1e-9):.1f}/s)",
            f"  orders accepted: {s['orders_accepted']} ({tifs})",
            f"  trades: {s['trades']} ({s['contracts']} contracts)",
            f"  cancels: {s['cancels']}; cancel-all: {s['cancel_all_calls']} calls, {s['cancel_all_orders']} orders",
            f"  markets: created {s['markets_created']}, closed {s['markets_closed']} (at deadline "
            f"{s['closed:deadline']}, early {s['closed:early']}), resolved {s['markets_resolved']} ({resolved})",
            f"  GTD orders expired by the operator: {s['gtd_expired']}; forecasts: {s['forecasts']}",
            f"  client_order_id repeats: {s['retries_sent']} sent, {s['retries_same']} returned the original; "
            f"concurrent twins: {s['twins_sent']} sent, {s['twins_same']} consistent",
            f"  bad requests: {s['probes_sent']} sent, {s['probes_refused']} refused with a 4xx "
            f"({s['probes_other_4xx']} with another 4xx than expected)",
            f"  throttled (429): {s['throttled']}; retried after Retry-After: {s['retried']}; "
            f"keep-alive reconnects: {s['reconnects']}",
            f"  5xx: {s['5xx']}",
            "  errors by code:" + ("" if errors else " none"),
        ]
        lines += [f"    {status} {code or '-'}: {count}" for (status, code), count in errors]
        lines.append("  transport errors:" + ("" if transport else " none"))
        lines += [f"    {name}: {count}" for name, count in transport]
        lines.append(f"  latency (ms): {'request':<14} {'count':>8} {'p50':>8} {'p99':>8} {'max':>8}")
        everything = sorted(v for values in latency.values() for v in values)
        for kind, values in [*sorted(latency.items()), ("all", everything)]:
            lines.append(
                f"                {kind:<14} {len(values):>8} {percentile(values, 0.5) * 1000:>8.1f} "
                f"{percentile(values, 0.99) * 1000:>8.1f} {(values[-1] if values else 0) * 1000:>8.1f}"
            )
        return "\n".join(lines)

    def samples_text(self) -> str:
        with self.stats.lock:
            samples = {kind: list(texts) for kind, texts in self.stats.samples.items()}
            counts = {kind: self.stats.counts[f"sampled:{kind}"] for kind in samples}
        if not samples:
            return "client checks: all held; no 5xx, no transport errors"
        lines = ["client checks and failures (examples):"]
        for kind, texts in sorted(samples.items()):
            lines.append(f"  {kind} ({counts[kind]}):")
            lines += [f"    {text}" for text in texts]
        return "\n".join(lines)


class SoakAbort(RuntimeError):
    """The soak could not get going (a server that does not start, registration refused)."""


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def run_soak(config: SoakConfig, write: Callable[[str], None]) -> SoakResult:
    """Run one soak (see the module docstring) and write its progress and report line by line."""
    return Soak(config, write).run()


# --------------------------------------------------------------------------------------------------------------------
# Command line


def argument_parser() -> argparse.ArgumentParser:
    """The options of ``tools/soak.py`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="tools/soak.py",
        description=(
            "Soak the exchange: --agents agents trade through the HTTP API for --minutes or --seconds across "
            "--markets markets that close and resolve meanwhile, then the audit runs. Starts its own daphne "
            "server(s) on the database and Redis of DATABASE_URL/REDIS_URL unless --url names a running one. Prints "
            "requests/s, orders, trades, cancels, markets closed and resolved, errors by code, latency p50/p99 and "
            "the audit; exits 1 if the audit is not clean, any 5xx happened, or a client check failed."
        ),
    )
    parser.add_argument("--agents", type=int, default=50, help="Concurrent agents (default %(default)s).")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="Minutes of trading (default 5).")
    length.add_argument("--seconds", type=float, help="Seconds of trading, for short runs.")
    parser.add_argument("--markets", type=int, default=20, help="Markets created at the start (default %(default)s).")
    parser.add_argument("--url", help="Soak an already running server, e.g. http://127.0.0.1:8000.")
    parser.add_argument(
        "--servers",
        "--workers",
        dest="servers",
        type=int,
        default=1,
        help="Daphne processes to start without --url, agents spread over them (default %(default)s).",
    )
    parser.add_argument("--seed", type=int, help="Seed of the agents' choices (default: random, printed).")
    parser.add_argument(
        "--think", type=float, default=0.0, help="Mean pause between one agent's requests, seconds (default 0)."
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="Seconds one request may take (default %(default)s)."
    )
    parser.add_argument(
        "--oracle-key",
        help="With --url on another database: API key of an oracle agent there, to resolve markets through the API.",
    )
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> SoakConfig:
    """The :class:`SoakConfig` of command-line arguments ``argv`` (default ``sys.argv[1:]``). Bad arguments print the
    usage and raise ``SystemExit(2)``, as argparse does."""
    parser = argument_parser()
    options = parser.parse_args(argv)
    if options.oracle_key and not options.url:
        parser.error("--oracle-key only applies with --url.")
    if options.timeout <= 0 or options.think < 0:
        parser.error("--timeout must be positive and --think not negative.")
    if options.seconds is not None:
        duration = options.seconds
    else:
        duration = 60 * (options.minutes if options.minutes is not None else 5)
    return SoakConfig(
        agents=options.agents,
        duration=duration,
        markets=options.markets,
        url=options.url,
        servers=options.servers,
        seed=options.seed,
        think=options.think,
        timeout=options.timeout,
        oracle_key=options.oracle_key,
    )


def setup_django() -> None:
    """Make the checkout importable and set Django up with ``moltstreet.settings`` (read from the environment), unless
    this process already did (under pytest, pytest-django has)."""
    if str(BASE_DIR) not in sys.path:
        sys.path.insert(0, str(BASE_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moltstreet.settings")
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


def main(argv: Sequence[str] | None = None, write: Callable[[str], None] | None = None) -> int:
    """Run the soak the command-line arguments ``argv`` ask for, writing its progress and report with ``write``
    (default: print to stdout, flushed). Returns the exit status: 0 passed; 1 failed (the reasons written last) or
    could not get going (a server that does not start, registration refused). Bad arguments raise ``SystemExit(2)``."""
    config = config_from_args(argv)
    if write is None:

        def write(line: str) -> None:
            print(line, flush=True)

    setup_django()
    from moltstreet.serving import ServerError

    try:
        result = run_soak(config, write)
    except (ValueError, SoakAbort, ServerError) as exc:
        write(f"soak could not run: {exc}")
        return 1
    if not result.ok:
        write("soak failed: " + "; ".join(result.failures))
        return 1
    write("soak passed")
    return 0


__all__ = ["GENEROUS_RATE", "SoakAbort", "SoakConfig", "SoakResult", "main", "run_soak"]

if __name__ == "__main__":
    sys.exit(main())
