"""Prometheus metrics (prometheus-client) and the ``/metrics`` endpoint.

What is measured, and where:

* ``moltstreet_http_requests_total{method, route, status}`` and ``moltstreet_http_request_duration_seconds{route}``:
  every HTTP request, in ``moltstreet.middleware.AccessLogMiddleware``. ``route`` is the URL pattern's name
  (``order-list``, ``market-detail``, ``health``), never the raw path, so ids in URLs cannot multiply the series;
  ``static`` for static files, ``unmatched`` for a path no pattern matched.
* ``moltstreet_order_place_duration_seconds{result}``: the order service (``trading.orders.order_place``, locks,
  matching and commit), ``result`` ``created``, ``duplicate`` (a repeated ``client_order_id``), ``refused`` (a
  domain error) or ``error``; ``moltstreet_orders_placed_total{time_in_force, status}`` (the new order's status
  after matching), ``moltstreet_orders_refused_total{code}``, ``moltstreet_trades_total`` and
  ``moltstreet_contracts_traded_total``, counted when the order's transaction commits.
* ``moltstreet_websocket_connections{feed}``: open live-feed connections (``market``, ``agent``), in
  ``trading.consumers``.

Several server processes (uvicorn ``--workers``): with ``PROMETHEUS_MULTIPROC_DIR`` set (the Dockerfile sets
``/tmp/prometheus``), each process writes its values to files there and ``/metrics`` (answered by any one of them)
sums them all (prometheus-client's multiprocess mode). The gauge counts live processes only: a scrape forgets the
gauges of processes that are gone. Counters of a replaced worker keep adding up; an empty directory (a tmpfs, as
docker-compose.yml mounts) starts every count from zero. Without the variable, each process reports its own values
only (right for one daphne process or one worker).

``/metrics`` answers only clients in ``METRICS_ALLOWED_IPS`` (loopback only by default) or with
``Authorization: Bearer <METRICS_TOKEN>``; anyone else gets 403 (docs/decisions.md).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import re
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from moltstreet.clients import request_address
from moltstreet.errors import error_body

logger = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _prepare_multiprocess_dir() -> None:
    """Create ``PROMETHEUS_MULTIPROC_DIR`` if needed, and remove the files named after this process's id: they are
    a dead process's (a restarted container reuses ids), whose values must not carry over. Runs before any metric
    of this process exists."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    for path in Path(directory).glob(f"*_{os.getpid()}.db"):
        path.unlink(missing_ok=True)


_prepare_multiprocess_dir()

# Seconds. HTTP requests here take from under a millisecond (a cached read) to a few seconds (a lock wait that times
# out at MOLTSTREET_LOCK_TIMEOUT_MS); an order takes a few milliseconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "moltstreet_http_requests",
    "HTTP requests answered, by method, route (the URL pattern's name) and status code.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "moltstreet_http_request_duration_seconds",
    "Time the application spent on an HTTP request, by route.",
    ["route"],
    buckets=_BUCKETS,
)
ORDER_SECONDS = Histogram(
    "moltstreet_order_place_duration_seconds",
    "Time of the order service (validation, locks, matching, commit), by result.",
    ["result"],
    buckets=_BUCKETS,
)
ORDERS_PLACED = Counter(
    "moltstreet_orders_placed",
    "Orders accepted, by time in force and the order's status right after matching.",
    ["time_in_force", "status"],
)
ORDERS_REFUSED = Counter("moltstreet_orders_refused", "Orders refused, by error code.", ["code"])
TRADES = Counter("moltstreet_trades", "Trades executed.")
CONTRACTS = Counter("moltstreet_contracts_traded", "Contracts traded.")
WEBSOCKETS = Gauge(
    "moltstreet_websocket_connections",
    "Open live-feed websocket connections, by feed (market, agent).",
    ["feed"],
    multiprocess_mode="livesum",
)


def route_of(request: HttpRequest) -> str:
    """The metrics label of a request's route: its URL pattern's name (``namespace:name``), else the pattern."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name or str(match.route) or "unnamed"
    if request.path.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    return "unmatched"


# --------------------------------------------------------------------------------------------------------------------
# /metrics


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def metrics_allowed(request: HttpRequest) -> bool:
    """Whether ``request`` may read ``/metrics``: its bearer token is ``METRICS_TOKEN`` (when set), or its client IP
    is in ``METRICS_ALLOWED_IPS``."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return True
    address = request_address(request)
    return address is not None and any(address in net for net in _networks(tuple(settings.METRICS_ALLOWED_IPS)))


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _forget_dead_processes(directory: str) -> None:
    """Drop the live-gauge files of server processes that are gone (a worker that crashed and was replaced), so
    their open connections stop counting. Counters and histograms of dead processes are kept: they only add up."""
    for path in Path(directory).glob("gauge_live*.db"):
        found = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if found is None:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            pass  # alive, another user's


def registry() -> CollectorRegistry:
    """What ``/metrics`` reports: every process's values from ``PROMETHEUS_MULTIPROC_DIR`` when set, else this
    process's own (with its CPU, memory and garbage-collection metrics)."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory:
        return REGISTRY
    _forget_dead_processes(directory)
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected, path=directory)
    return collected


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the Prometheus text format, for allowed clients only (403 in the error shape otherwise)."""
    if not metrics_allowed(request):
        return JsonResponse(
            error_body("permission_denied", "Metrics are only served to allowed addresses or with the metrics token."),
            status=403,
        )
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
