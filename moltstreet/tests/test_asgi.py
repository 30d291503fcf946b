"""``moltstreet.asgi``: HTTP is served by ``SyncChainASGIHandler``, the one override of Django's own
``get_asgi_application()``, kept because bench/entry_points.py measured it worth more than 10 % (docs/performance.md,
"Framework entry points"). What it guarantees: a request passes every middleware of ``settings.MIDDLEWARE`` and the
view in one synchronous call, entered once on a worker thread (not one ``sync_to_async`` hop per middleware hook as
Django's async chain makes), and the answer is the one Django's own handler gives.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from channels.testing import HttpCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

from moltstreet.asgi import SyncChainASGIHandler, application
from testsupport.hops import current_hop, install_hop_counter

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/v1/markets/?page_size=1"

# What each probe saw, in call order: (probe, "request" | "response", thread id, sync_to_async hops so far).
seen: list[tuple[int, str, int, int]] = []


class Probe:
    """A middleware that records, on the way in and on the way out, its thread and how many ``sync_to_async`` hops
    had been made so far. One sits before every middleware of the chain and one after the last: a probe reached
    means the middleware before it passed the request on. Like ``AccessLogMiddleware`` it runs in the mode of the
    chain it is put in (sync or async), so it changes neither chain."""

    sync_capable = True
    async_capable = True
    index = -1

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        seen.append((self.index, "request", threading.get_ident(), current_hop()))
        response = self.get_response(request)
        seen.append((self.index, "response", threading.get_ident(), current_hop()))
        return response

    async def _acall(self, request: Any) -> Any:
        seen.append((self.index, "request", threading.get_ident(), current_hop()))
        response = await self.get_response(request)
        seen.append((self.index, "response", threading.get_ident(), current_hop()))
        return response


# Probe0 ... ProbeN, importable by dotted path as MIDDLEWARE needs.
PROBES = [type(f"Probe{i}", (Probe,), {"index": i}) for i in range(32)]
globals().update({probe.__name__: probe for probe in PROBES})


@pytest.fixture(autouse=True)
def allowed_host(settings):
    settings.ALLOWED_HOSTS = ["testserver"]


@pytest.fixture
def count_hops(monkeypatch):
    """Count every entry of a ``sync_to_async`` call into its worker thread (``current_hop()``, read by the probes)."""
    install_hop_counter(monkeypatch)
    seen.clear()
    yield
    seen.clear()


def probed(middleware: list[str]) -> list[str]:
    """``middleware`` with a probe before each one and after the last."""
    assert len(middleware) < len(PROBES)
    chain = []
    for i, name in enumerate(middleware):
        chain += [f"{__name__}.Probe{i}", name]
    return [*chain, f"{__name__}.Probe{len(middleware)}"]


def get(app: Any) -> dict[str, Any]:
    """``GET PATH`` through an ASGI app; the response's status, headers (lower-case names) and body."""

    async def scenario() -> dict[str, Any]:
        communicator = HttpCommunicator(app, "GET", PATH, headers=[(b"host", b"testserver")])
        response = await communicator.get_response(timeout=10)
        response["headers"] = {name.decode().lower(): value.decode() for name, value in response["headers"]}
        return response

    return async_to_sync(scenario)()


def test_http_is_served_by_the_sync_chain_handler_and_websockets_by_the_feeds():
    assert isinstance(application.application_mapping["http"], SyncChainASGIHandler)
    assert set(application.application_mapping) == {"http", "websocket"}


def test_a_request_passes_every_middleware_and_the_view_in_one_worker_thread_entered_once(settings, count_hops):
    with override_settings(MIDDLEWARE=probed(settings.MIDDLEWARE)):
        handler = SyncChainASGIHandler()  # the chain is built when the handler is
        response = get(handler)

    assert response["status"] == 200
    probes = len(settings.MIDDLEWARE) + 1
    # In through every probe in order, out in reverse: every middleware passed the request on and the answer back.
    assert [(i, way) for i, way, _, _ in seen] == [(i, "request") for i in range(probes)] + [
        (i, "response") for i in reversed(range(probes))
    ]
    threads = {thread for _, _, thread, _ in seen}
    hops = {hop for _, _, _, hop in seen}
    assert len(threads) == 1 and len(hops) == 1, (threads, hops)  # one thread, no hop anywhere in the chain
    assert threads != {threading.get_ident()}  # not the test's thread: the handler's worker thread


def test_django_s_own_async_chain_hops_between_middleware_which_the_test_above_would_see(settings, count_hops):
    """The control: the same probes under Django's own handler see hops inside the chain, so the test above can
    fail."""
    with override_settings(MIDDLEWARE=probed(settings.MIDDLEWARE)):
        response = get(ASGIHandler())

    assert response["status"] == 200
    assert len({hop for _, _, _, hop in seen}) > len(settings.MIDDLEWARE)


def test_the_answer_is_the_one_django_s_own_handler_gives():
    ours, django_s = get(application), get(ASGIHandler())

    assert ours["status"] == django_s["status"] == 200
    assert ours["body"] == django_s["body"]
    varying = {"server-timing", "x-request-id"}  # the time spent and a fresh id per request
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == {
        k: v for k, v in django_s["headers"].items() if k not in varying
    }
    assert varying <= set(ours["headers"])
