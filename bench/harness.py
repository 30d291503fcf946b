"""What the benchmarks share (bench/README.md): a fresh PostgreSQL database of their own, the real server started as
``make run`` or production serves it, agents with credits, an open-loop HTTP load generator, pgbench, and figures.

Every benchmark runs against PostgreSQL and Redis on loopback (``BENCH_DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/moltstreet_bench``, recreated at each start; ``BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/12``, flushed). Call :func:`setup` before importing any model.

Latency is open-loop: requests are due at a fixed rate (request ``i`` at ``t0 + i / rate``) whether or not earlier
ones have been answered, and each latency is measured from the time the request was due, not from when it could be
sent, so a server that falls behind shows its queue in the figures instead of slowing the load down (the
"coordinated omission" that closed-loop generators hide).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/moltstreet_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")

# The servers' settings for a benchmark: no rate limits and no open-order cap (the load is ours), everything else
# as in production.
SERVER_ENV = {
    "MOLTSTREET_RATE_ANON": "",
    "MOLTSTREET_RATE_AGENT_READ": "",
    "MOLTSTREET_RATE_AGENT_WRITE": "",
    "MOLTSTREET_RATE_REGISTER": "",
    "MOLTSTREET_MAX_OPEN_ORDERS": "1000000",
}


def say(line: str) -> None:
    """Print one line at once (the figures are read as they come)."""
    print(line, flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Database


def _admin_dsn(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    return parts._replace(path="/postgres").geturl(), name


def setup(*, fresh: bool = True) -> None:
    """Point this process at the benchmark database and Redis, recreate the database (``fresh``), migrate, flush
    Redis, and set Django up. Call before importing models."""
    import psycopg

    admin, name = _admin_dsn(DATABASE_URL)
    if fresh:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = DATABASE_URL
    os.environ["REDIS_URL"] = REDIS_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moltstreet.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # this process's own log; the servers keep production's
    import django

    django.setup()
    from django.core.management import call_command

    if fresh:
        call_command("migrate", interactive=False, verbosity=0)
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()


# --------------------------------------------------------------------------------------------------------------------
# Servers


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed: .venv/bin/pip install -r requirements.txt")
    return found


APP = "moltstreet.asgi:application"
# The application of moltstreet.asgi with its framework entry points picked by BENCH_ASGI and BENCH_DISPATCH
# (bench/variant_asgi.py; bench/entry_points.py compares them).
VARIANT_APP = "variant_asgi:application"


def server_classes(app: str = APP):
    """``{"daphne": cls, "uvicorn": cls, "gunicorn": cls}``: each started with ``cls(name, env, workers)``, serving
    the ASGI application ``app`` (``module:attribute``; a module of bench/ is importable by the server)."""
    from moltstreet import serving

    class Daphne(serving.DaphneServer):
        """daphne, one process (it has no workers of its own), as ``make run`` serves."""

        def __init__(self, name: str, env: dict[str, str], workers: int = 1):
            if workers != 1:
                raise SystemExit("daphne serves one process; use uvicorn or gunicorn for more workers")
            super().__init__(name, env)
            self.workers = 1

        def command(self) -> list[str]:
            return [app if part == APP else part for part in super().command()]

    class Uvicorn(serving.DaphneServer):
        """``uvicorn --workers N`` (uvloop, httptools), its access log off as daphne's is."""

        def __init__(self, name: str, env: dict[str, str], workers: int = 1):
            super().__init__(name, env)
            self.workers = workers

        def command(self) -> list[str]:
            return [
                _venv_bin("uvicorn"),
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--no-access-log",
                "--timeout-keep-alive",
                "75",
                "--log-level",
                "warning",
            ]

    class Gunicorn(Uvicorn):
        """``gunicorn -k uvicorn_worker.UvicornWorker -w N``."""

        def command(self) -> list[str]:
            return [
                _venv_bin("gunicorn"),
                app,
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-w",
                str(self.workers),
                "-b",
                f"127.0.0.1:{self.port}",
                "--keep-alive",
                "75",
                "--log-level",
                "warning",
            ]

    return {"daphne": Daphne, "uvicorn": Uvicorn, "gunicorn": Gunicorn}


@contextmanager
def running_server(kind: str = "daphne", workers: int = 1, *, app: str = APP, **env: str) -> Iterator[Any]:
    """The real server on the benchmark database (``SERVER_ENV`` and ``env`` over the environment), serving ``app``
    and answering HTTP; stopped on the way out."""
    from moltstreet import serving

    if app != APP:  # a module of bench/ (VARIANT_APP)
        env = {"PYTHONPATH": os.pathsep.join([str(BASE_DIR / "bench"), str(BASE_DIR)]), **env}
    server = server_classes(app)[kind]("bench", serving.server_env(**{**SERVER_ENV, **env}), workers)
    try:
        server.start()
        server.wait_ready(60)
        yield server
    except serving.ServerError as exc:
        raise SystemExit(str(exc)) from exc
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------------------
# Agents and markets


@dataclass
class BenchAgent:
    id: Any
    name: str
    key: str


def make_agents(n: int, prefix: str, credits: Decimal = Decimal("1000000.00")) -> list[BenchAgent]:
    """``n`` registered agents, each granted ``credits`` on top of the 1000.00 (ledgered operator adjustments)."""
    from agents.services import agent_grant_credits, agent_register

    agents = []
    for i in range(n):
        agent, key = agent_register(name=f"{prefix}-{i}")
        agent_grant_credits(agent_id=agent.id, amount=credits, memo="benchmark credits")
        agents.append(BenchAgent(agent.id, agent.name, key))
    return agents


def make_markets(n: int, creator: BenchAgent, label: str) -> list[str]:
    """``n`` open markets created by ``creator`` (paying the fee); their ids as strings."""
    from datetime import timedelta

    from django.utils import timezone

    from agents.models import Agent
    from markets.services import market_create

    agent = Agent.objects.get(id=creator.id)
    deadline = timezone.now() + timedelta(days=30)
    return [
        str(market_create(creator=agent, question=f"Benchmark {label} market {i}?", deadline=deadline).id)
        for i in range(n)
    ]


def audit_line() -> str:
    """``audit clean`` or the breaches, after a run (the benchmark must not have broken the books)."""
    from trading.audit import run_audit

    report = run_audit()
    return "audit clean" if report.ok else "AUDIT FAILED:\n" + report.render()


# --------------------------------------------------------------------------------------------------------------------
# HTTP: a lean keep-alive client over asyncio streams (the load generator must cost less than the server it loads)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; requests on it go one after the other."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """Send one request; ``(status, body, headers)`` with header names in lower case."""
        if self.writer is None:
            await self._connect()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: application/json"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        try:
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("connection closed by the server")
            status = int(status_line.split()[1])
            answer: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                answer[name.strip().lower()] = value.strip()
            if "content-length" in answer:
                content = await self.reader.readexactly(int(answer["content-length"]))
            elif answer.get("transfer-encoding", "").lower() == "chunked":
                content = await self._chunked()
            else:
                content = await self.reader.read()
                self.close()
            if answer.get("connection", "").lower() == "close":
                self.close()
            return status, content, answer
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            self.close()
            raise

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def server_time_ms(headers: dict[str, str]) -> float | None:
    """The app's own time from ``Server-Timing: app;dur=<ms>``, if the server sent it."""
    match = re.search(r"app;dur=([0-9.]+)", headers.get("server-timing", ""))
    return float(match.group(1)) if match else None


@dataclass
class Call:
    """One request of a load: which agent sends it and what."""

    agent: int
    method: str
    path: str
    body: bytes | None = None


@dataclass
class LoadResult:
    rate: float
    duration: float
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # transport errors and unanswered requests

    def record(self, status: int, headers: dict[str, str], latency_ms: float) -> None:
        """One answer: its status, its latency and the server's own time (``Server-Timing``), if it gave one."""
        self.latencies_ms.append(latency_ms)
        self.statuses[status] += 1
        if (server := server_time_ms(headers)) is not None:
            self.server_ms.append(server)

    @property
    def sent(self) -> int:
        return int(self.rate * self.duration)

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300) + sum(self.failures.values())

    @property
    def ok(self) -> int:
        """Requests answered 2xx."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def achieved(self) -> float:
        return self.ok / self.duration

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def describe(self) -> str:
        server = f", server p50 {percentile(self.server_ms, 50):.1f} ms" if self.server_ms else ""
        errors = dict(self.statuses - Counter({s: n for s, n in self.statuses.items() if 200 <= s < 300}))
        return (
            f"{self.rate:.0f}/s offered, {self.achieved:.0f}/s answered 2xx; p50 {self.pct(50):.1f} ms, "
            f"p99 {self.pct(99):.1f} ms, p99.9 {self.pct(99.9):.1f} ms{server}; errors {self.errors}"
            + (f" {errors}" if errors else "")
            + (f" {dict(self.failures)}" if self.failures else "")
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def open_loop(
    base_url: str,
    keys: Sequence[str],
    make_call: Callable[[int], Call],
    *,
    rate: float,
    duration: float,
    timeout: float = 10.0,
) -> LoadResult:
    """Offer ``rate`` requests per second for ``duration`` seconds: request ``i`` (built by ``make_call(i)``) is due
    at ``t0 + i / rate`` and sent by its agent's own connection (``keys[call.agent]``), after that agent's previous
    request if it is still waiting. Latency runs from the due time to the end of the answer. Requests still
    unanswered ``timeout`` seconds after the last one was due count as failures."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    return runner(_open_loop(base_url, keys, make_call, rate=rate, duration=duration, timeout=timeout))


async def _open_loop(base_url, keys, make_call, *, rate, duration, timeout) -> LoadResult:
    parts = urlsplit(base_url)
    result = LoadResult(rate=rate, duration=duration)
    total = int(rate * duration)
    calls = [make_call(i) for i in range(total)]
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in keys]
    headers = [{"Authorization": f"Bearer {key}"} for key in keys]
    loop = asyncio.get_running_loop()

    async def agent_worker(index: int) -> None:
        conn = HttpConnection(parts.hostname, parts.port)
        try:
            while True:
                item = await queues[index].get()
                if item is None:
                    return
                due, call = item
                try:
                    status, _body, answer = await conn.request(call.method, call.path, call.body, headers[index])
                except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.failures[type(exc).__name__] += 1
                    continue
                result.record(status, answer, (loop.time() - due) * 1000)
        finally:
            conn.close()

    workers = [asyncio.create_task(agent_worker(i)) for i in range(len(keys))]
    start = loop.time() + 0.05
    for i, call in enumerate(calls):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queues[call.agent].put_nowait((due, call))
    for queue in queues:
        queue.put_nowait(None)
    _done, pending = await asyncio.wait(workers, timeout=timeout)
    for task in pending:
        task.cancel()
    unanswered = total - result.answered - sum(result.failures.values())
    if unanswered > 0:
        result.failures["unanswered"] += unanswered
    return result


def closed_loop(base_url: str, keys: Sequence[str], make_call: Callable[[int], Call], *, duration: float) -> LoadResult:
    """Each agent (``keys[i]``, its own connection) sends its next request as soon as its previous one is answered,
    for ``duration`` seconds; agent ``i`` sends calls ``i``, ``i + len(keys)``, ... Latency runs from the send to
    the end of the answer; answers after the deadline are not counted. The result's ``rate`` is what was answered
    2xx per second (a closed loop offers no rate of its own)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    return runner(_closed_loop(base_url, keys, make_call, duration=duration))


async def _closed_loop(base_url, keys, make_call, *, duration) -> LoadResult:
    parts = urlsplit(base_url)
    result = LoadResult(rate=0.0, duration=duration)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def agent(index: int) -> None:
        conn = HttpConnection(parts.hostname, parts.port)
        headers = {"Authorization": f"Bearer {keys[index]}"}
        i = index
        try:
            while loop.time() < deadline:
                call = make_call(i)
                i += len(keys)
                sent = loop.time()
                try:
                    status, _body, answer = await conn.request(call.method, call.path, call.body, headers)
                except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.failures[type(exc).__name__] += 1
                    continue
                if loop.time() > deadline:
                    return
                result.record(status, answer, (loop.time() - sent) * 1000)
        finally:
            conn.close()

    await asyncio.gather(*(agent(i) for i in range(len(keys))))
    result.rate = result.achieved
    return result


def order_body(market: str, side: str, price: str = "0.50", size: int = 1, **extra: Any) -> bytes:
    return json.dumps({"market": market, "side": side, "action": "BUY", "price": price, "size": size, **extra}).encode()


# --------------------------------------------------------------------------------------------------------------------
# pgbench: the database's own ceiling on this machine, measured in the same run


def pgbench_tps(*, clients: int, scale: int, seconds: int = 10) -> float:
    """TPC-B-like transactions per second (``pgbench -b tpcb-like -M prepared``) with ``clients`` clients on a
    scratch database initialised at ``scale``; the figure excludes connection time."""
    binary = shutil.which("pgbench") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None
    )
    if binary is None:
        raise SystemExit("pgbench is not installed: apt-get install -y postgresql-contrib (or postgresql-client)")
    import psycopg

    admin, _ = _admin_dsn(DATABASE_URL)
    name = f"moltstreet_pgbench_{scale}"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = _admin_dsn(DATABASE_URL)[0].rsplit("/", 1)[0] + f"/{name}"
    if not exists:
        subprocess.run([binary, "-i", "-q", "-s", str(scale), url], check=True, capture_output=True)  # noqa: S603
    else:  # the same starting point each time: vacuum the history left by the previous run
        subprocess.run(  # noqa: S603  (pgbench on our own scratch database)
            [binary, "-i", "-q", "-s", str(scale), "-I", "v", url], check=True, capture_output=True
        )
    run = subprocess.run(  # noqa: S603
        [binary, "-b", "tpcb-like", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds), url],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", run.stdout)
    if not match:
        raise SystemExit(f"pgbench printed no tps:\n{run.stdout}\n{run.stderr}")
    return float(match.group(1))
