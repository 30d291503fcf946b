"""Benchmark 3: fan-out of the live feed (bench/README.md, DESIGN section 8, docs/realtime.md).

500 websocket spectators watch one market (``/ws/markets/{id}/``) while crossing 1-contract orders (BUY YES 0.50 and
BUY NO 0.50 in turn from 16 agents, so every second order trades) are placed open-loop at twice the trade rate (100
orders/s for 50 trades/s) for ``--duration`` seconds: by default through the services from a process of their own,
which publishes to the feed through Redis as every writer does, so the server under test only serves the feed (as a
websocket worker behind a load balancer would); ``--load http`` sends them to the same server over HTTP instead. The
server is the real one, daphne as ``make run`` serves, on PostgreSQL with the Redis channel layer as in production.

What it measures, per run:

* **Delivery latency**: for every (spectator, ``trade`` message) pair, the time the spectator received the frame
  minus the trade's ``created_at``. ``created_at`` is stamped inside the trading transaction, just before commit
  (``MarketEvent`` is inserted at the end of the transaction), so the figure is an upper bound of commit-to-receipt
  (it includes the commit itself). Both clocks are this machine's wall clock. Receipt is stamped when the bytes
  reach the client's event loop, before parsing. p50, p99 and max over all pairs.
* **Lost messages**: every spectator must see every ``seq`` after its snapshot's ``seq`` exactly once and in order,
  up to the market's final ``seq`` (read from the database when the load is over; the clients then wait up to
  ``--drain-timeout`` seconds for it). Gaps (seqs skipped), a tail never received, duplicates or late seqs,
  ``resync`` snapshots, ``buffer_overflow`` and other errors, and connections the server closed are all counted and
  printed; ``lost`` is the sum of the seqs a spectator never received as a message.
* **Load**: orders/s offered and answered, HTTP latency (open-loop, from the due time), trades/s actually committed
  (trades in the database over the run's duration), messages/s delivered to all spectators.
* **CPU** over the load and drain window: the server process, Redis, each client process, the load generator (this
  process) and the whole machine, in % of one core, so a reader can tell which one saturated. The spectators are
  spread over ``--client-processes`` processes with a lean websocket client of their own (asyncio protocol, uvloop
  when installed); ``--client websockets`` uses the ``websockets`` library instead, as a cross-check.

Each figure of the summary is the median of ``--runs`` runs (lost figures are also summed over all runs). Each run
connects fresh spectators (each first receives a ``snapshot`` with its ``seq``) before the load starts.

    .venv/bin/python bench/fanout.py                                  # 500 spectators, 50 trades/s, 20 s, 3 runs
    .venv/bin/python bench/fanout.py --spectators 100 --duration 5 --runs 1     # a quick check
    .venv/bin/python bench/fanout.py --client websockets --client-processes 4

Targets (bench/README.md): p99 <= 500 ms with 0 lost must be reached; p99 <= 100 ms is the goal.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing
import os
import threading
import time
from array import array
from collections import Counter
from datetime import datetime
from multiprocessing.connection import wait as wait_connections
from typing import Any

import harness
from harness import Call, median, order_body, percentile, say

P99_MUST_MS = 500.0
P99_GOAL_MS = 100.0
AGENTS = 16
# Every spectator connects from 127.0.0.1, hundreds at once: the server's per-address websocket limits (production's
# 50 open and 60 handshakes a minute) are lifted, as harness.SERVER_ENV lifts the HTTP rate limits.
WEBSOCKET_LIMITS = {"MOLTSTREET_WEBSOCKETS_PER_ADDRESS": "1000000", "MOLTSTREET_WEBSOCKET_HANDSHAKE_RATE": ""}
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------------------------------------------------
# Client side: runs in the client processes (spawned: nothing of Django is imported here)


class Process:
    """What the spectators of one client process share: the latency samples and the drain target."""

    def __init__(self) -> None:
        self.latencies_ms = array("d")
        self.created: dict[str, float] = {}  # created_at string -> epoch seconds (500 spectators see the same ones)
        self.target = float("inf")  # the final seq, once known
        self.pending = 0  # spectators that have not reached the target and are still open
        self.drained: asyncio.Event | None = None

    def epoch(self, created_at: str) -> float:
        value = self.created.get(created_at)
        if value is None:
            value = self.created[created_at] = datetime.fromisoformat(created_at).timestamp()
        return value

    def finished_one(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and self.drained is not None:
            self.drained.set()


class Spectator:
    """One feed's bookkeeping: the seqs it saw against the contract (consecutive after its snapshot's)."""

    __slots__ = (
        "close_code",
        "closed",
        "closing",
        "done",
        "duplicates",
        "early",
        "errors",
        "failure",
        "gaps",
        "last",
        "missing",
        "proc",
        "ready",
        "received",
        "resync_skipped",
        "resyncs",
        "snapshot_seq",
        "trades",
    )

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.snapshot_seq: int | None = None
        self.last = 0  # highest seq received
        self.received = self.trades = self.gaps = self.missing = self.duplicates = 0
        self.resyncs = self.resync_skipped = self.early = 0
        self.errors: Counter = Counter()
        self.close_code: int | None = None
        self.closed = self.closing = self.done = False
        self.failure: str | None = None  # the handshake or snapshot failed
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_message(self, payload: bytes | str, now: float) -> None:
        """One frame: a message, or a batch of them (a JSON array, ``?batch_ms=``)."""
        frame = json.loads(payload)
        for message in frame if isinstance(frame, list) else (frame,):
            self.on_one(message, now)

    def on_one(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        seq = message.get("seq")
        if kind == "snapshot":
            if self.snapshot_seq is None:
                self.snapshot_seq = self.last = seq
                if not self.ready.done():
                    self.ready.set_result(None)
            else:  # reason "resync" (or anything else): what it skipped was never received as a message
                self.resyncs += 1
                if seq > self.last:
                    self.resync_skipped += seq - self.last
                    self.last = seq
        elif seq is not None:
            if self.snapshot_seq is None:
                self.early += 1
                return
            self.received += 1
            last = self.last
            if seq == last + 1:
                self.last = seq
            elif seq > last:
                self.gaps += 1
                self.missing += seq - last - 1
                self.last = seq
            else:
                self.duplicates += 1
                return
            if kind == "trade":
                self.trades += 1
                proc = self.proc
                proc.latencies_ms.append((now - proc.epoch(message["trade"]["created_at"])) * 1000.0)
            if seq >= self.proc.target:
                self.finish()
        elif kind == "error":
            self.errors[message.get("code")] += 1

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.proc.finished_one()

    def lost(self, close_code: int | None) -> None:
        """The server closed the connection (or it dropped)."""
        if self.closing or self.closed:
            return
        self.closed = True
        self.close_code = close_code
        if not self.ready.done():
            self.failure = f"closed before the snapshot ({close_code})"
            self.ready.set_result(None)
        self.finish()


def _mask(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


class RawFeed(asyncio.Protocol):
    """A lean websocket client: HTTP Upgrade, then unmasked server frames parsed straight off the socket buffer;
    pings answered, close frames recorded. Enough for a feed that only sends text frames."""

    def __init__(self, spectator: Spectator, host: str, port: int, path: str) -> None:
        self.s = spectator
        self.host, self.port, self.path = host, port, path
        self.key = base64.b64encode(os.urandom(16))
        self.buf = bytearray()
        self.handshaken = False
        self.fragments: list[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            status = head[0].split(" ", 2)[1] if len(head[0].split(" ")) > 1 else "?"
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()  # noqa: S324 (RFC 6455)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if status != "101" or headers.get("sec-websocket-accept") != accept:
                self.s.failure = f"handshake answered {status}"
                self.s.closing = True
                if not self.s.ready.done():
                    self.s.ready.set_result(None)
                self.transport.close()
                return
            self.handshaken = True
        pos, n = 0, len(buf)
        on_message = self.s.on_message
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:  # servers never mask
                self.fail("masked server frame")
                return
            end = pos + header + length
            if end > n:
                break
            payload = bytes(buf[pos + header : end])
            pos = end
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode == 1 and fin and self.fragments is None:
                on_message(payload, now)
            elif opcode in (1, 2):
                self.fragments = [payload]
                if fin:
                    on_message(b"".join(self.fragments), now)
                    self.fragments = None
            elif opcode == 0 and self.fragments is not None:
                self.fragments.append(payload)
                if fin:
                    on_message(b"".join(self.fragments), now)
                    self.fragments = None
            elif opcode == 9:
                self.transport.write(_mask(10, payload))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.s.lost(self.close_code)
                if not self.s.closing:
                    self.transport.write(_mask(8, payload[:2]))
                self.transport.close()
                return
        del buf[:pos]

    def fail(self, why: str) -> None:
        self.s.errors[why] += 1
        self.s.lost(1002)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.s.lost(self.close_code or 1006)

    def close(self) -> None:
        self.s.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_mask(8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def open_raw(spectator: Spectator, host: str, port: int, path: str) -> RawFeed:
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(lambda: RawFeed(spectator, host, port, path), host, port)
    return protocol


class LibraryFeed:
    """The same spectator over the ``websockets`` library (``--client websockets``); receipt is stamped when the
    library hands the message over."""

    def __init__(self, spectator: Spectator, url: str) -> None:
        self.s, self.url = spectator, url
        self.ws: Any = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        from websockets.asyncio.client import connect

        try:
            self.ws = await connect(self.url, compression=None, max_queue=None, max_size=2**24, open_timeout=60)
        except Exception as exc:
            self.s.failure = f"handshake failed: {exc.__class__.__name__}: {exc}"
            self.s.closing = True
            self.s.ready.set_result(None)
            return
        self.task = asyncio.create_task(self.read())

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                self.s.on_message(message, time.time())
        except ConnectionClosed:
            pass
        # The close frame the server sent, if any: on the sans-I/O protocol in websockets >= 13's asyncio client
        # (the connection object itself no longer has ``close_rcvd``, which crashed this task at every close).
        rcvd = getattr(self.ws.protocol, "close_rcvd", None)
        self.s.lost(rcvd.code if rcvd is not None else 1006)

    def close(self) -> None:
        self.s.closing = True
        if self.ws is not None:
            self.task = asyncio.ensure_future(self.ws.close())


class ParentLink:
    """A client process's end of its pipe to the parent, which stays blocking from start to end.

    The event loop never watches the pipe: under uvloop ``loop.add_reader`` makes the descriptor non-blocking (libuv
    does, and ``remove_reader`` leaves it so), and a ``send`` bigger than the socket's buffer (``wmem_default``,
    208 KiB here; the result carries every latency sample, megabytes in a long run) then fails half-way with
    ``BlockingIOError`` [Errno 11], leaving the parent with a truncated message ("got end of file during message").
    Instead a thread of its own
    receives the parent's commands (``go``, then ``final``) and hands them to the loop; answers (``ready``,
    ``result``) are sent with a blocking ``send`` that waits for the parent to read them, however big."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.commands: asyncio.Queue = asyncio.Queue()
        self.thread = threading.Thread(target=self._read, name="fanout-commands", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError) as exc:  # the parent went away
                message = ("eof", repr(exc))
            try:
                self.loop.call_soon_threadsafe(self.commands.put_nowait, message)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            if message[0] in ("final", "eof"):
                return

    async def command(self, kind: str) -> tuple[Any, ...]:
        """The parent's next command, which must be ``kind``; raises ``RuntimeError`` otherwise (or on EOF)."""
        message = await self.commands.get()
        if message[0] != kind:
            raise RuntimeError(f"expected the command {kind!r} from the parent, got {message!r}")
        return message

    def send(self, kind: str, payload: Any) -> None:
        """Send ``(kind, payload)`` to the parent, blocking until the pipe has taken all of it."""
        self.conn.send((kind, payload))


async def client_async(conn: Any, spec: dict[str, Any]) -> None:
    """One client process's spectators: connect them, answer ``ready``, count what they receive between ``go`` and
    ``final`` (plus the drain), then answer ``result`` with the counts and every latency sample."""
    link = ParentLink(conn)
    proc = Process()
    spectators = [Spectator(proc) for _ in range(spec["count"])]
    feeds: list[Any] = []
    host, port, path = spec["host"], spec["port"], spec["path"]
    gate = asyncio.Semaphore(spec["connect_concurrency"])

    async def connect(spectator: Spectator) -> None:
        async with gate:
            try:
                if spec["client"] == "raw":
                    feeds.append(await open_raw(spectator, host, port, path))
                else:
                    feed = LibraryFeed(spectator, f"ws://{host}:{port}{path}")
                    feeds.append(feed)
                    await feed.start()
                await asyncio.wait_for(asyncio.shield(spectator.ready), spec["connect_timeout"])
            except (OSError, TimeoutError) as exc:
                spectator.failure = spectator.failure or f"{exc.__class__.__name__}: {exc}"

    started = time.perf_counter()
    await asyncio.gather(*(connect(s) for s in spectators))
    connect_s = time.perf_counter() - started
    live = [s for s in spectators if s.failure is None and s.snapshot_seq is not None]
    failures = Counter(s.failure for s in spectators if s.failure is not None or s.snapshot_seq is None)
    link.send("ready", {"connected": len(live), "failures": dict(failures), "connect_s": connect_s})

    await link.command("go")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    _, final_seq, drain_timeout = await link.command("final")
    cpu_load, wall_load = time.process_time() - cpu0, time.perf_counter() - wall0
    drain0 = time.perf_counter()
    proc.drained = asyncio.Event()
    proc.target = final_seq
    proc.pending = len(live)
    for s in live:
        if s.closed or s.last >= final_seq:
            s.done = True
            proc.pending -= 1
    if proc.pending > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.drained.wait(), drain_timeout)
    drain_s = time.perf_counter() - drain0
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for feed in feeds:
        feed.close()
    await asyncio.sleep(0.2)

    totals: Counter = Counter()
    closes: Counter = Counter()
    errors: Counter = Counter()
    for s in live:
        expected = final_seq - s.snapshot_seq
        tail = max(0, final_seq - s.last)
        totals.update(
            spectators=1,
            expected=expected,
            received=s.received,
            trades=s.trades,
            gaps=s.gaps,
            gap_missing=s.missing,
            tail_missing=tail,
            duplicates=s.duplicates,
            resyncs=s.resyncs,
            resync_skipped=s.resync_skipped,
            early=s.early,
            lost=s.missing + tail + s.resync_skipped,
            spectators_with_loss=int(s.missing + tail + s.resync_skipped > 0),
            beyond=max(0, s.last - final_seq),
            reached=int(s.last >= final_seq),
        )
        if s.closed:
            closes[s.close_code] += 1
        errors.update(s.errors)
    link.send(
        "result",
        {
            "totals": dict(totals),
            "closes": dict(closes),
            "errors": dict(errors),
            "cpu_s": cpu,
            "wall_s": wall,
            "cpu_load_s": cpu_load,
            "wall_load_s": wall_load,
            "drain_s": drain_s,
            "drained": proc.pending <= 0,
            "latencies": proc.latencies_ms.tobytes(),
        },
    )


def client_process(conn: Any, spec: dict[str, Any]) -> None:
    """A client process's entry point (spawned)."""
    try:
        import uvloop

        uvloop.run(client_async(conn, spec))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(client_async(conn, spec))


# --------------------------------------------------------------------------------------------------------------------
# CPU accounting (read-only: /proc and Redis INFO)

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    """The processes under ``pid``, children first (``uvicorn --workers N``'s workers), from ``/proc``."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(child) for child in f.read().split()]
                found += children
                pending += children
    return found


def server_cpu(pid: int) -> float:
    """User + system CPU seconds so far of the server process ``pid`` and of the workers it runs (those alive now)."""
    total = process_cpu(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu(child)
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / TICK, total / TICK


def postgres_pids() -> set[int]:
    """The PostgreSQL backends serving the benchmark database now (the server's connections among them)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {row[0] for row in cursor.fetchall()}


def postgres_cpu(pids: set[int]) -> dict[int, float]:
    cpu = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            cpu[pid] = process_cpu(pid)
    return cpu


def event_reads() -> int:
    """Scans of the stored-events table so far. During a run only the consumers read it, to refill a gap in ``seq``
    (``trading.realtime.stored_messages``), so the difference over a run counts their refills."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'markets_marketevent'"
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def redis_cpu() -> float:
    import redis

    info = redis.Redis.from_url(harness.REDIS_URL).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class BacklogSampler:
    """Samples, every ``interval`` seconds in a thread, the messages waiting in Redis for the server process to pick
    up: channels-redis keeps one sorted set per server process (``asgispecific.<process>!``) for all its
    subscribers, capped at ``capacity`` (1000) messages, beyond which new messages are dropped for that process.
    With the pub/sub layer (``CHANNEL_LAYER_BACKEND=pubsub``) nothing waits in a key: the messages not yet read by a
    subscribed server process sit in Redis's output buffer of its connection, sampled as ``pubsub_peak`` (bytes;
    Redis drops a subscriber whose buffer passes ``client-output-buffer-limit pubsub``, 32 MB by default)."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        import redis

        self.client = redis.Redis.from_url(harness.REDIS_URL)
        self.interval = interval
        self.peak = 0
        self.pubsub_peak = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            with contextlib.suppress(Exception):
                keys = list(self.client.scan_iter(match="asgispecific.*", count=100))
                if keys:
                    self.peak = max(self.peak, max(self.client.zcard(k) for k in keys))
                for client in self.client.client_list():
                    if int(client.get("sub", 0)) or int(client.get("psub", 0)):
                        self.pubsub_peak = max(self.pubsub_peak, int(client.get("omem", 0)))

    def __enter__(self) -> BacklogSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(2)


def settle(pid: int, *, below: float = 0.15, window: float = 1.0, timeout: float = 90.0) -> float:
    """Wait until the server process and its workers use less than ``below`` of a core over ``window`` seconds (the
    previous run's backlog worked off), at most ``timeout`` seconds; the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = server_cpu(pid)
        time.sleep(window)
        if server_cpu(pid) - before < below * window:
            break
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------------------------
# One run


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def trader_process(conn: Any, market: str, agent_ids: list[str], rate: float, duration: float) -> None:
    """``--load services``: place the crossing orders through ``trading.orders.order_place`` from a process of
    its own, open loop at ``rate`` per second (latency from the due time), publishing to the feed through Redis as
    any writer does; reports a ``harness.LoadResult``'s figures over ``conn``."""
    harness.setup(fresh=False)
    from agents.models import Agent
    from trading.orders import order_place

    agents = [Agent.objects.get(id=agent_id) for agent_id in agent_ids]
    result = harness.LoadResult(rate=rate, duration=duration)
    conn.recv()  # go
    start = time.monotonic()
    for i in range(int(rate * duration)):
        due = start + i / rate
        if (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        try:
            order_place(
                agent=agents[i % len(agents)],
                market_id=market,
                side="YES" if i % 2 == 0 else "NO",
                action="BUY",
                price="0.50",
                size=1,
            )
        except Exception as exc:
            result.failures[type(exc).__name__] += 1
            continue
        result.statuses[201] += 1
        result.latencies_ms.append((time.monotonic() - due) * 1000)
    conn.send((dict(result.statuses), dict(result.failures), result.latencies_ms))


def drive_services(args, market: str, agent_ids: list[str]) -> harness.LoadResult:
    """The orders of a run placed by :func:`trader_process`; waits for it to finish."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    rate = args.trades_per_second * 2
    process = context.Process(target=trader_process, args=(child, market, agent_ids, rate, args.duration))
    process.start()
    child.close()
    parent.send("go")
    statuses, failures, latencies = parent.recv()
    process.join(10)
    result = harness.LoadResult(rate=rate, duration=args.duration)
    result.statuses.update(statuses)
    result.failures.update(failures)
    result.latencies_ms.extend(latencies)
    return result


def run_once(args, server, keys: list[str], market: str, number: int) -> dict[str, Any]:
    from markets.models import Market, MarketEvent

    def current_seq() -> int:
        return Market.objects.values_list("seq", flat=True).get(id=market)

    tag = f"[run {number}]"
    waited = settle(server.process.pid)
    if waited > 2:
        say(f"{tag} waited {waited:.0f} s for the server to go idle (work left over from before)")
    seq0 = current_seq()
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for count in split(args.spectators, args.client_processes):
        parent, child = context.Pipe()
        spec = {
            "count": count,
            "host": "127.0.0.1",
            "port": server.port,
            "path": f"/ws/markets/{market}/" + (f"?batch_ms={args.batch_ms}" if args.batch_ms else ""),
            "client": args.client,
            "connect_concurrency": args.connect_concurrency,
            "connect_timeout": args.connect_timeout,
        }
        process = context.Process(target=client_process, args=(child, spec), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    try:
        return _drive(args, server, keys, market, tag, seq0, current_seq, pipes, processes, MarketEvent)
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)


def _receive_all(pipes, kind: str, timeout: float, processes=None) -> list[Any]:
    """Every client process's answer ``kind`` (``ready`` or ``result``), in the order of ``pipes``; the pipes are
    read as their answers come (a child's big answer waits in its blocking ``send`` until it is read here). Stops the
    benchmark (``SystemExit``) if one is missing after ``timeout`` seconds, or a process died or answered something
    else."""
    answers: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"client processes did not answer {kind!r} within {timeout:.0f} s")
        for conn in wait_connections([p for i, p in enumerate(pipes) if i not in answers], left):
            index = pipes.index(conn)
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:  # OSError: "got end of file during message", a truncated answer
                process = processes[index] if processes else None
                if process is not None:
                    process.join(2)
                status = f" (exit code {process.exitcode})" if process is not None else ""
                raise SystemExit(
                    f"client process {index} died before answering {kind!r}{status}: {exc!r}; see its traceback above"
                ) from None
            if message[0] != kind:
                raise SystemExit(f"client process {index} answered {message[0]!r}, not {kind!r}")
            answers[index] = message[1]
    return [answers[i] for i in range(len(pipes))]


def _drive(args, server, keys, market, tag, seq0, current_seq, pipes, processes, MarketEvent) -> dict[str, Any]:
    ready = _receive_all(pipes, "ready", args.connect_timeout * 4 + 60, processes)
    connected = sum(r["connected"] for r in ready)
    failures: Counter = Counter()
    for r in ready:
        failures.update(r["failures"])
    connect_s = max(r["connect_s"] for r in ready)
    say(
        f"{tag} {connected} of {args.spectators} spectators connected, each with its snapshot, in {connect_s:.1f} s "
        f"({args.client_processes} client processes, {args.client} client)"
        + (f"; FAILED: {dict(failures)}" if failures else "")
    )

    def make_call(i: int) -> Call:
        return Call(i % AGENTS, "POST", "/api/v1/orders/", order_body(market, "YES" if i % 2 == 0 else "NO"))

    pid = server.process.pid
    server0, redis0, machine0 = server_cpu(pid), redis_cpu(), machine_cpu()
    pg0 = postgres_cpu(postgres_pids())
    reads0 = event_reads()
    with BacklogSampler() as backlog:
        for conn in pipes:
            conn.send(("go",))
        wall0, self0 = time.perf_counter(), time.process_time()
        if args.load == "http":
            load = harness.open_loop(
                server.url, keys, make_call, rate=args.trades_per_second * 2, duration=args.duration
            )
        else:
            load = drive_services(args, market, args.agent_ids)
        load_cpu = time.process_time() - self0
        # Until the last order was answered: longer than --duration when the order process fell behind (a machine
        # short of CPU), and the trade rate the server really faced is then lower than the target.
        load_span = max(time.perf_counter() - wall0, args.duration)
        final = current_seq()
        for conn in pipes:
            conn.send(("final", final, args.drain_timeout))
        results = _receive_all(pipes, "result", args.drain_timeout + 120, processes)
        wall = time.perf_counter() - wall0
    server_s, redis_s = server_cpu(pid) - server0, redis_cpu() - redis0
    pg1 = postgres_cpu(set(pg0) | postgres_pids())
    postgres_s = sum(value - pg0.get(pid, 0.0) for pid, value in pg1.items())
    machine1 = machine_cpu()
    machine_busy, machine_total = machine1[0] - machine0[0], machine1[1] - machine0[1]

    time.sleep(1.5)  # PostgreSQL publishes a backend's table statistics at most once a second, when it goes idle
    refills = event_reads() - reads0
    trades = MarketEvent.objects.filter(
        market_id=market, kind=MarketEvent.Kind.TRADE, seq__gt=seq0, seq__lte=final
    ).count()
    latencies = array("d")
    totals: Counter = Counter()
    closes: Counter = Counter()
    errors: Counter = Counter()
    for r in results:
        chunk = array("d")
        chunk.frombytes(r["latencies"])
        latencies.extend(chunk)
        totals.update(r["totals"])
        closes.update(r["closes"])
        errors.update(r["errors"])
    client_cpu = [r["cpu_s"] / r["wall_s"] * 100 for r in results]
    client_cpu_load = [r["cpu_load_s"] / r["wall_load_s"] * 100 for r in results]
    drain_s = max(r["drain_s"] for r in results)
    drained = all(r["drained"] for r in results)
    values = sorted(latencies)
    lost = totals["lost"] + (args.spectators - connected) * (final - seq0)
    figures = {
        "connected": connected,
        "connect_s": connect_s,
        "offered": load.rate,
        "answered": load.achieved,
        "http_p50": load.pct(50),
        "http_p99": load.pct(99),
        "http_errors": load.errors,
        "trades_per_s": trades / args.duration,
        "trades_per_s_actual": trades / load_span,
        "seqs": final - seq0,
        "samples": len(values),
        "expected_samples": trades * connected,
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": values[-1] if values else float("nan"),
        "messages_per_s": totals["received"] / wall,
        "lost": lost,
        "gaps": totals["gaps"],
        "gap_missing": totals["gap_missing"],
        "tail_missing": totals["tail_missing"],
        "duplicates": totals["duplicates"],
        "resyncs": totals["resyncs"],
        "overflows": errors.get("buffer_overflow", 0),
        "errors": sum(errors.values()),
        "closed": sum(closes.values()),
        "spectators_with_loss": totals["spectators_with_loss"],
        "drain_s": drain_s,
        "drained": drained,
        "backlog": backlog.peak,
        "pubsub_backlog": backlog.pubsub_peak,
        "refills": refills,
        "server_cpu": server_s / wall * 100,
        "redis_cpu": redis_s / wall * 100,
        "postgres_cpu": postgres_s / wall * 100,
        "client_cpu": sum(client_cpu),
        "client_cpu_max": max(client_cpu),
        "client_cpu_load_max": max(client_cpu_load),
        "loadgen_cpu": load_cpu / (load.duration or 1) * 100,
        "machine_cpu": machine_busy / machine_total * 100 * (os.cpu_count() or 1),
        "cores": os.cpu_count() or 1,
        "other_cpu": 0.0,
        "wall_s": wall,
    }
    figures["other_cpu"] = max(
        0.0,
        figures["machine_cpu"]
        - (server_s + postgres_s + redis_s + load_cpu + sum(r["cpu_s"] for r in results)) / wall * 100,
    )
    say(f"{tag} orders: {load.describe()}")
    say(
        f"{tag} trades: {trades} committed in {args.duration:.0f} s = {figures['trades_per_s']:.1f} trades/s "
        f"(target {args.trades_per_second:g}/s), {figures['trades_per_s_actual']:.1f} trades/s over the "
        f"{load_span:.1f} s the orders actually took; {final - seq0} seqs in all"
    )
    say(
        f"{tag} delivery latency, receipt - created_at (upper bound of commit-to-receipt), "
        f"{len(values)} (spectator, trade) pairs of {trades * connected} expected: p50 {figures['p50']:.1f} ms, "
        f"p99 {figures['p99']:.1f} ms, max {figures['max']:.1f} ms"
    )
    say(
        f"{tag} delivery: {totals['received']} messages to {connected} spectators, {figures['messages_per_s']:.0f} "
        f"messages/s; {totals['reached']} of {connected} reached the final seq {final}"
        + (
            f", the last {drain_s:.1f} s after the load ended"
            if drained
            else f" within --drain-timeout {args.drain_timeout:g} s after the load ended"
        )
        + f"; Redis backlog for the server process peaked at {backlog.peak} messages (capacity 1000), pub/sub "
        f"output buffer at {backlog.pubsub_peak / 1024:.0f} KiB; the "
        f"consumers read the stored events {refills} times to refill a gap in seq (PostgreSQL scans of "
        f"markets_marketevent during the run)"
    )
    say(
        f"{tag} lost: {lost} (gaps {totals['gaps']} skipping {totals['gap_missing']} seqs, tail not received within "
        f"the drain timeout "
        f"{totals['tail_missing']}, resync-skipped {totals['resync_skipped']}"
        + (f", spectators never connected {args.spectators - connected}" if connected < args.spectators else "")
        + f"; {totals['spectators_with_loss']} spectators affected); duplicates {totals['duplicates']}, "
        f"resync snapshots {totals['resyncs']}, errors {dict(errors) or 0}, closed by server {dict(closes) or 0}, "
        f"messages before the snapshot {totals['early']}, seqs beyond the final {totals['beyond']}"
    )
    say(
        f"{tag} CPU (% of one core, over {wall:.1f} s of load + drain; {figures['cores']} cores): server "
        f"{figures['server_cpu']:.0f} %, postgres {figures['postgres_cpu']:.0f} %, redis {figures['redis_cpu']:.0f} %, "
        f"clients "
        f"{' + '.join(f'{c:.0f}' for c in client_cpu)} = {figures['client_cpu']:.0f} % "
        f"(busiest during the load {figures['client_cpu_load_max']:.0f} %), load generator "
        f"{figures['loadgen_cpu']:.0f} %, whole machine {figures['machine_cpu']:.0f} % of "
        f"{figures['cores'] * 100} % (other processes {figures['other_cpu']:.0f} %)"
    )
    return figures


# --------------------------------------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit the server runs, and whether the application's files differ from it."""
    import subprocess

    def git(*argv: str) -> str:
        run = subprocess.run(["git", *argv], cwd=harness.BASE_DIR, capture_output=True, text=True, check=False)  # noqa: S603, S607
        return run.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{harness.BASE_DIR} (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench")
    return f"git {commit}" + (" with uncommitted changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spectators", type=int, default=500)
    parser.add_argument("--trades-per-second", type=float, default=50.0, help="Orders are offered at twice this.")
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds of load per run (default 20).")
    parser.add_argument("--runs", type=int, default=3, help="Runs; the summary gives the medians.")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--client", choices=["raw", "websockets"], default="raw")
    parser.add_argument("--connect-concurrency", type=int, default=16, help="Handshakes in flight per process.")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds of orders at 25/s before the runs.")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="Wait for the final seq this long.")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "gunicorn"], default="daphne")
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes (uvicorn, gunicorn).")
    parser.add_argument(
        "--load",
        choices=["services", "http"],
        default="services",
        help="Place the orders through the services from a process of their own (default: the server only serves "
        "the feed, as a websocket worker would), or over HTTP to the same server (its order intake then limits "
        "the trade rate; bench/orders.py measures that).",
    )
    parser.add_argument(
        "--channel-layer",
        choices=["redis", "pubsub"],
        default=os.environ.get("CHANNEL_LAYER_BACKEND", "redis"),
        help="The channels-redis layer of the server and of the order process (CHANNEL_LAYER_BACKEND): "
        "RedisChannelLayer (redis, the default) or RedisPubSubChannelLayer (pubsub).",
    )
    parser.add_argument(
        "--batch-ms",
        type=int,
        default=0,
        help="Spectators take batched frames (?batch_ms=N: a JSON array of the messages of up to N ms, served by "
        "the market's hub, one subscription per server process); 0 (the default): a frame per message.",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    # Inherited by the server (serving.server_env copies this environment) and by the order process (spawned).
    os.environ["CHANNEL_LAYER_BACKEND"] = args.channel_layer
    harness.setup()
    agents = harness.make_agents(AGENTS, "bench-fanout")
    market = harness.make_markets(1, agents[0], "fanout")[0]
    args.agent_ids = [str(a.id) for a in agents]
    runs = []
    with harness.running_server(args.server, args.workers, **WEBSOCKET_LIMITS) as server:
        say(
            f"fan-out: {args.spectators} spectators on market {market}, {args.trades_per_second:g} trades/s "
            f"({args.trades_per_second * 2:g} orders/s from {AGENTS} agents) for {args.duration:g} s, "
            f"{args.runs} runs; server {args.server} x{args.workers} {server.url}, channel layer "
            f"{args.channel_layer}, {f'batched frames of {args.batch_ms} ms' if args.batch_ms else 'a frame per message'}"
            f"; code {code_version()}"
        )
        if args.warmup > 0:  # a fresh server's first requests are slow (connections, caches): not part of a run
            warm = harness.open_loop(
                server.url,
                [a.key for a in agents],
                lambda i: Call(i % AGENTS, "POST", "/api/v1/orders/", order_body(market, "YES" if i % 2 else "NO")),
                rate=25,
                duration=args.warmup,
            )
            say(f"warm-up, no spectators: {warm.describe()}")
        for number in range(1, args.runs + 1):
            runs.append(run_once(args, server, [a.key for a in agents], market, number))
    audit = harness.audit_line()

    def med(name: str) -> float:
        return median([r[name] for r in runs])

    lost_total = sum(r["lost"] for r in runs)
    p99 = med("p99")
    verdict = (
        "MISSED"
        if lost_total or not p99 <= P99_MUST_MS
        else ("goal met" if p99 <= P99_GOAL_MS else "must-reach met, goal missed")
    )
    say("== fan-out ==")
    say(
        f"setup: {args.spectators} spectators ({med('connected'):.0f} connected; median connect "
        f"{med('connect_s'):.1f} s), {args.client_processes} client processes ({args.client}), {args.server} x{args.workers}, "
        f"channel layer {args.channel_layer}, "
        f"{f'batched frames of {args.batch_ms} ms' if args.batch_ms else 'a frame per message'}, "
        f"{args.duration:g} s per run, median of {args.runs} runs"
    )
    say(
        f"load: {med('offered'):.0f} orders/s offered, {med('answered'):.1f}/s answered 2xx, HTTP p50 "
        f"{med('http_p50'):.1f} ms, p99 {med('http_p99'):.1f} ms, errors {sum(r['http_errors'] for r in runs)}; "
        f"{med('trades_per_s'):.1f} trades/s committed (target {args.trades_per_second:g}; "
        f"{med('trades_per_s_actual'):.1f}/s over the time the orders actually took)"
    )
    say(
        f"delivery latency (receipt - trade created_at, an upper bound of commit-to-receipt): p50 {med('p50'):.1f} ms, "
        f"p99 {p99:.1f} ms, max {med('max'):.1f} ms; {med('messages_per_s'):.0f} messages/s delivered"
    )
    say(
        f"lost: {lost_total} over all runs (median {med('lost'):.0f}; gaps {sum(r['gaps'] for r in runs)}, tail "
        f"{sum(r['tail_missing'] for r in runs)} not received within the drain timeout); duplicates {sum(r['duplicates'] for r in runs)}, buffer_overflow "
        f"{sum(r['overflows'] for r in runs)}, errors {sum(r['errors'] for r in runs)}, closed "
        f"{sum(r['closed'] for r in runs)}, resyncs {sum(r['resyncs'] for r in runs)}; all drained: "
        f"{all(r['drained'] for r in runs)} (median drain {med('drain_s'):.1f} s); Redis backlog peak "
        f"{max(r['backlog'] for r in runs)} of 1000 (pub/sub output buffer "
        f"{max(r['pubsub_backlog'] for r in runs) / 1024:.0f} KiB); gap refills from the database (median) {med('refills'):.0f}"
    )
    say(
        f"CPU (% of one core): server {med('server_cpu'):.0f}, postgres {med('postgres_cpu'):.0f}, redis "
        f"{med('redis_cpu'):.0f}, clients "
        f"{med('client_cpu'):.0f} (busiest process {med('client_cpu_max'):.0f}), load generator "
        f"{med('loadgen_cpu'):.0f}, machine {med('machine_cpu'):.0f} of {runs[0]['cores'] * 100} (other processes "
        f"{med('other_cpu'):.0f})"
    )
    say(
        f"targets: p99 <= {P99_MUST_MS:.0f} ms with 0 lost (must), <= {P99_GOAL_MS:.0f} ms (goal): {verdict}; "
        f"took {time.perf_counter() - started:.0f} s"
    )
    say(audit)


if __name__ == "__main__":
    main()
