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
========================  =========================================  ==========================  ===========

Over budget: HTTP 429 ``rate_limited`` with ``Retry-After`` (seconds until the oldest counted request leaves the
window; DRF's sliding-window ``SimpleRateThrottle``). The client IP is ``REMOTE_ADDR`` unless ``TRUSTED_PROXIES``
says how many proxies in front of us append to ``X-Forwarded-For`` (an untrusted header would let anyone pick their
own IP, and with it a fresh budget).

A throttle is protection, not bookkeeping: if the cache is unreachable the request is let through and the failure is
logged, so an outage of Redis never stops trading (issue 4, "Redis stopped: trading goes on").
"""

from __future__ import annotations

import logging

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

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
    """Writes (orders, cancels, markets, forecasts, keys) with an API key, counted per agent."""

    scope = "agent_write"

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
