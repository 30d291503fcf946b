"""Fixtures of the backtests tests: tasks run at once (django-tasks' immediate backend) unless a test switches to the
database backend, and markets with recorded history made through the exchange's own services."""

from __future__ import annotations

import signal
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from markets.models import Market, MarketEvent
from markets.tests.factories import SnapshotFactory
from testsupport.api import operator_resolver
from trading.lifecycle import market_close
from trading.resolution import market_resolve
from trading.tests.factories import mint, new_agent, new_market, place

IMMEDIATE = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend", "QUEUES": ["default"]}}
DATABASE = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}


@pytest.fixture(autouse=True)
def _immediate_tasks(settings):
    """``POST /backtests/`` runs its backtest before it answers (the worker's tests switch to ``DATABASE``)."""
    settings.TASKS = IMMEDIATE


def spread_in_time(market: Market, *, start=None, step: timedelta = timedelta(minutes=10)) -> None:
    """Give the market's events times ``step`` apart from ``start`` (default 3 days ago), in seq order: recorded
    within milliseconds by the test, they would all fall on one simulated instant. Times only; nothing else moves."""
    start = start or timezone.now() - timedelta(days=3)
    for event in MarketEvent.objects.filter(market=market).order_by("seq"):
        MarketEvent.objects.filter(id=event.id).update(created_at=start + step * event.seq)


@pytest.fixture
def traded_market(db):
    """A market with a book, twelve trades at prices swinging upwards, two source snapshots, then closed and resolved
    YES; its events spread over about a day and a half. Returns the market."""
    alice, bob, carol = new_agent("alice"), new_agent("bob"), new_agent("carol")
    market = new_market(question="Will the backtest find trades?")
    Market.objects.filter(id=market.id).update(source="kalshi", external_id="KXBT-1")
    prices = ["0.40", "0.46", "0.39", "0.47", "0.41", "0.50", "0.44", "0.55", "0.49", "0.60", "0.52", "0.65"]
    for i, price in enumerate(prices):
        mint(alice, bob, market, 5 + i, yes_price=price)
        if i in (3, 8):
            SnapshotFactory(
                market=market,
                source="kalshi",
                yes_price=Decimal(price) + Decimal("0.05"),
                taken_at=timezone.now() + timedelta(hours=i),
            )
    place(carol, market, "YES", "BUY", "0.50", 20)  # a resting bid
    place(bob, market, "NO", "BUY", "0.30", 20)  # a resting ask at the YES price 0.70
    market_close(market_id=market.id)
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    spread_in_time(market, step=timedelta(minutes=30))
    return Market.objects.get(id=market.id)


@pytest.fixture
def quiet_market(db):
    """An open market where nothing but its creation was recorded: no history to backtest."""
    return new_market(question="Will anyone trade here?")


@pytest.fixture
def signals_restored():
    """The worker installs its own SIGINT/SIGTERM handlers; put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
