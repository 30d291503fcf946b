"""The first requests of a fresh worker, at once: the operation each route declares is built by drf-spectacular,
whose extensions import their target classes on first use with class-level state. Two threads doing that at once
failed (an AttributeError, a 500 on ``POST /orders/``; seen by bench/orders.py --case closed on uvicorn workers)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from django.urls import resolve
from drf_spectacular import plumbing
from drf_spectacular.extensions import OpenApiViewExtension

from moltstreet import strict


@pytest.fixture
def lazy_extension(monkeypatch):
    """An extension whose target class is still a string (as every one is in a fresh process) and whose import
    fails slowly (an optional package that is not installed), so that concurrent first builds overlap."""

    class NotInstalled(OpenApiViewExtension):
        target_class = "moltstreet_not_installed.views.View"

        def view_replacement(self):  # pragma: no cover - never matches
            return self.target

    real = plumbing.import_string

    def slow_import(path):
        time.sleep(0.05)
        return real(path)

    monkeypatch.setattr(plumbing, "import_string", slow_import)
    monkeypatch.setattr(strict, "_DECLARED", {})
    yield NotInstalled
    OpenApiViewExtension._registry.remove(NotInstalled)


def first_builds_at_once(threads: int = 6) -> list[BaseException]:
    request = SimpleNamespace(method="GET", resolver_match=resolve("/api/v1/markets/"))
    start, errors = threading.Barrier(threads), []

    def build() -> None:
        start.wait()
        try:
            assert "search" in strict.declared_query_parameters(request)[0]
        except BaseException as exc:  # every failure is the finding
            errors.append(exc)

    workers = [threading.Thread(target=build) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    return errors


def test_concurrent_first_builds_of_a_routes_declared_parameters_all_succeed(lazy_extension):
    assert first_builds_at_once() == []
    assert lazy_extension.target_class is None  # loaded once, found missing


def test_negative_control_without_the_lock_concurrent_first_builds_fail(lazy_extension, monkeypatch):
    class NoLock:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(strict, "_BUILDING", NoLock())
    errors = first_builds_at_once()
    assert errors and all(isinstance(error, AttributeError) for error in errors), errors
