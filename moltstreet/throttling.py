"""Rate limits of the agent API: DRF throttles backed by the Django cache (Redis when ``REDIS_URL`` is set).

Budgets (``settings.MOLTSTREET["RATES"]``, each a DRF rate string ``"<requests>/<s|min|hour|day>"``, set from the
environment; docs/decisions.md explains the defaults):

========================  =========================================  ==========================  ===========
scope                     applies to                                 counted per                 default
========================  =========================================  ==========================  ===========
``anon``                  every request without an API key           client IP                   1200/min
``agent_read``            GET/HEAD with an API key                   agent                       1200/min
``agent_write``           POST/PUT/PATCH/DELETE with an API key      agent                       600/min
``register``              ``POST /api/v1/agents/`` (registration)    client IP                   20/hour
``websocket_handshake``   every websocket handshake (trading/         client IP                   60/min
                          consumers.py; ``WEBSOCKET_HANDSHAKE_RATE``)
========================  =========================================  ==========================  ===========

Over budget: HTTP 429 ``rate_limited`` with ``Retry-After`` (seconds until the oldest counted request leaves the
window; DRF's sliding-window ``SimpleRateThrottle``). The client is its address as :mod:`moltstreet.clients` reads
it (``REMOTE_ADDR`` unless ``TRUSTED_PROXIES``; an IPv6 client by its /64).

A request with a wrong or revoked key is anonymous to the throttles (authentication fails before they run), so
``agents.authentication`` charges each failed authentication to its address's ``anon`` budget itself
(:func:`charge_failed_authentication`): guessing keys costs the same budget as any anonymous request, and past it
the answer is 429, not another database lookup.

A throttle is protection, not bookkeeping: if the cache is unreachable the request is let through and the failure is
logged, so an outage of Redis never stops trading (issue 4, "Redis stopped: trading goes on").
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.conf import settings
from rest_framework.exceptions import Throttled
from rest_framework.throttling import SimpleRateThrottle

from moltstreet.clients import request_network

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _Throttle(SimpleRateThrottle):
    """A sliding-window throttle whose rate is read from ``settings.MOLTSTREET["RATES"][scope]`` at each request
    (so an operator's change of the environment, or a test's ``settings`` override, applies without re-import) and
    which fails open when the cache is down."""

    def __init__(self):  # SimpleRateThrottle reads the rate here; ours is read per request in allow_request
        pass

    def get_rate(self) -> str | None:
        return settings.MOLTSTREET["RATES"].get(self.scope)

    def allow_request(self, request, view) -> bool:
        self.rate = self.get_rate()
        if not self.rate:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # the cache (Redis) is down: let the request through rather than fail it
            logger.warning("rate limit %s not checked, cache unavailable: %s", self.scope, exc.__class__.__name__)
            return True

    def get_ident(self, request) -> str:
        """The client's address as every per-address rule counts it (:func:`moltstreet.clients.request_network`)."""
        return request_network(request)

    def parse_rate(self, rate):
        """``"<n>/<period>"`` where period starts with s, m, h or d (``"600/min"``, ``"20/hour"``)."""
        count, period = rate.split("/")
        return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class AnonThrottle(_Throttle):
    """Requests without an API key, counted per client IP."""

    scope = "anon"

    def get_cache_key(self, request, view):
        if getattr(request, "user", None) is not None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AgentReadThrottle(_Throttle):
    """Reads (GET, HEAD, OPTIONS) with an API key, counted per agent."""

    scope = "agent_read"

    def get_cache_key(self, request, view):
        agent = getattr(request, "user", None)
        if agent is None or request.method in WRITE_METHODS:
            return None
        return self.cache_format % {"scope": self.scope, "ident": agent.pk}


class AgentWriteThrottle(_Throttle):
    """Writes (orders, cancels, markets, forecasts, keys) with an API key, counted per agent. A request weighs what
    its view's ``throttle_weight(request)`` says (a batch: one per order or id it carries), 1 otherwise: batching
    saves round trips, not budget (Kalshi counts each order of a batch against its limits too)."""

    scope = "agent_write"
    weight = 1

    def allow_request(self, request, view) -> bool:
        weigh = getattr(view, "throttle_weight", None)
        self.weight = weigh(request) if weigh is not None else 1
        return super().allow_request(request, view)

    def throttle_success(self) -> bool:
        if len(self.history) + self.weight > self.num_requests:
            return self.throttle_failure()
        self.history[:0] = [self.now] * self.weight
        self.cache.set(self.key, self.history, self.duration)
        return True

    def get_cache_key(self, request, view):
        agent = getattr(request, "user", None)
        if agent is None or request.method not in WRITE_METHODS:
            return None
        return self.cache_format % {"scope": self.scope, "ident": agent.pk}


class RegisterThrottle(_Throttle):
    """Agent registrations, counted per client IP (on top of the anonymous budget). Views opt in with
    ``throttle_classes``; it only counts POSTs."""

    scope = "register"

    def get_cache_key(self, request, view):
        if request.method != "POST":
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


DEFAULT_THROTTLES = [AnonThrottle, AgentReadThrottle, AgentWriteThrottle]


class FailedAuthenticationThrottle(AnonThrottle):
    """A request whose API key was refused, counted against its address's anonymous budget (``anon``)."""

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def charge_failed_authentication(request) -> None:
    """Count a failed authentication against the address's ``anon`` budget; raises DRF's ``Throttled`` (429
    ``rate_limited`` with ``Retry-After``) once the budget is spent, so the caller answers that instead of 401."""
    throttle = FailedAuthenticationThrottle()
    if not throttle.allow_request(request, None):
        raise Throttled(wait=throttle.wait())


class HandshakeThrottle(_Throttle):
    """Websocket handshakes of one client network, in the API throttles' sliding window
    (``settings.MOLTSTREET["WEBSOCKET_HANDSHAKE_RATE"]``, a DRF rate string; empty turns it off). Counted in the
    Django cache, so the budget spans server processes; like the API's throttles it lets the handshake through
    (logged) when the cache is unreachable."""

    scope = "websocket_handshake"

    def __init__(self, network: str) -> None:
        self.network = network

    def get_rate(self) -> str | None:
        return settings.MOLTSTREET["WEBSOCKET_HANDSHAKE_RATE"]

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.network}

    def allow(self) -> bool:
        """Count one handshake; ``False`` if the network is over its budget (nothing counted then)."""
        return self.allow_request(None, None)

    def retry_after(self) -> int:
        """Whole seconds until the window has room again (after :meth:`allow` said no)."""
        wait = self.wait()
        return max(1, math.ceil(self.duration if wait is None else wait))
