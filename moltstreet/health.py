"""``GET /health/``: can this server process reach its database and its channel layer, right now?

``{"status": "ok" | "unavailable", "checks": {"database": {...}, "channel_layer": {...}}}``, 200 when every check
passed, 503 otherwise. Each check is ``{"status": "ok", "latency_ms": …}`` or ``{"status": "unavailable", "error":
"timeout" | <exception class>}`` (no message: hosts and users stay out of a public answer; the log has the details).

* database: ``SELECT 1`` on a connection of this process's pool (the one requests use).
* channel layer: channels-redis: ``PING`` to each of its Redis hosts, with their own short socket timeouts;
  the in-memory layer: always ok.

The endpoint is a plain Django view: no authentication, no rate limit, never cached, and it goes through the same
worker thread as every request, so a worker wedged on something else shows as unhealthy too. It never hangs: both
checks run at once in threads of their own and the answer waits at most ``HEALTH_CHECK_TIMEOUT`` seconds for them.
A check still running from an earlier call (a database that stopped answering) is joined rather than started again,
so a flood of health checks holds at most one database connection and one Redis connection per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

# One thread per check: with single-flight probes, a stuck check never queues another behind it.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="moltstreet-health")


class Probe:
    """A check run in the health threads, at most one at a time: a call while one is running waits for that one."""

    def __init__(self, name: str, check: Callable[[], str | None]):
        self.name = name
        self.check = check
        self._lock = threading.Lock()
        self._running: Future | None = None

    def _timed(self) -> tuple[float, str | None]:
        started = time.perf_counter()
        detail = self.check()
        return time.perf_counter() - started, detail

    def start(self) -> Future:
        with self._lock:
            if self._running is None or self._running.done():
                self._running = _executor.submit(self._timed)
            return self._running


def check_database() -> None:
    """``SELECT 1`` on this thread's connection, handed back to the pool (or closed) afterwards."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


_redis_clients: dict[tuple[Any, ...], redis.Redis] = {}
_redis_clients_lock = threading.Lock()


def _redis_client(host: Any, timeout: float) -> redis.Redis:
    """A client (and connection pool) per channel-layer host, with connect and read timeouts of ``timeout``."""
    key = (repr(host), timeout)
    with _redis_clients_lock:
        client = _redis_clients.get(key)
        if client is None:
            limits: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
            if isinstance(host, str):
                client = redis.Redis.from_url(host, **limits)
            elif isinstance(host, dict):
                options = {k: v for k, v in host.items() if k not in ("address", "socket_timeout")}
                client = redis.Redis.from_url(host["address"], **{**options, **limits})
            else:  # (host, port)
                client = redis.Redis(host=host[0], port=int(host[1]), **limits)
            _redis_clients[key] = client
        return client


def check_channel_layer() -> str:
    """``PING`` every Redis host of the channel layer; the in-memory layer needs nothing. Returns the backend."""
    layer = settings.CHANNEL_LAYERS["default"]
    if layer["BACKEND"].endswith("InMemoryChannelLayer"):
        return "in-memory"
    for host in layer.get("CONFIG", {}).get("hosts") or ["redis://localhost:6379"]:
        _redis_client(host, settings.HEALTH_CHECK_TIMEOUT).ping()
    return "redis"


PROBES = {"database": Probe("database", check_database), "channel_layer": Probe("channel_layer", check_channel_layer)}


def run_checks(timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Run every probe at once and wait at most ``timeout`` seconds (``HEALTH_CHECK_TIMEOUT``) for them all."""
    timeout = settings.HEALTH_CHECK_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    running = {name: probe.start() for name, probe in PROBES.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, future in running.items():
        try:
            elapsed, backend = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            logger.warning("health: %s check did not answer within %.1f s", name, timeout)
            results[name] = {"status": "unavailable", "error": "timeout"}
            continue
        except Exception as exc:
            logger.warning("health: %s check failed (%s: %s)", name, exc.__class__.__name__, exc)
            results[name] = {"status": "unavailable", "error": exc.__class__.__name__}
            continue
        results[name] = {"status": "ok", "latency_ms": round(elapsed * 1000, 2)}
        if backend:
            results[name]["backend"] = backend
    return results


@never_cache
@require_safe
def health_view(request: HttpRequest) -> JsonResponse:
    """``GET /health/``: 200 ``{"status": "ok", ...}`` when the database and channel layer answer, else 503."""
    checks = run_checks()
    healthy = all(check["status"] == "ok" for check in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )
