"""factory-boy factories of the backtests app: backtest rows and their executions, as the worker or an upload writes
them. A backtest moves no money (DESIGN section 11), so these write their rows directly; its agent comes from
:class:`agents.tests.factories.AgentFactory` and its markets from the markets' factories, through the services."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import factory
from django.utils import timezone

from agents.tests.factories import AgentFactory
from backtests.models import Backtest, BacktestExecution
from markets.tests.factories import MarketFactory


class BacktestFactory(factory.django.DjangoModelFactory):
    """A backtest of ``agent`` (a fresh agent unless given) over ``markets`` (a list; one fresh market unless given),
    queued unless told otherwise. ``done=True`` makes it a finished run that started an hour ago; any other
    :class:`Backtest` field (``metrics``, ``equity``, ``status``, …) may be given."""

    class Meta:
        model = Backtest
        skip_postgeneration_save = True  # the markets are a many-to-many set after the row exists

    agent = factory.SubFactory(AgentFactory)
    strategy = "market_maker"
    status = Backtest.Status.QUEUED

    class Params:
        done = factory.Trait(
            status=Backtest.Status.DONE,
            start=factory.LazyFunction(lambda: timezone.now() - timedelta(hours=1)),
            end=factory.LazyFunction(timezone.now),
            started_at=factory.SelfAttribute("start"),
            finished_at=factory.SelfAttribute("end"),
        )

    @factory.post_generation
    def markets(backtest: Backtest, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create:
            backtest.markets.set(extracted if extracted is not None else [MarketFactory()])


class BacktestExecutionFactory(factory.django.DjangoModelFactory):
    """One execution of ``backtest`` (a fresh queued one unless given): by default the next ``number`` of that
    backtest, in its first market, a taker's BUY of 5 YES at 0.40 (cash -2.00), at the backtest's start (or now)
    plus ten minutes and ``number`` minutes."""

    class Meta:
        model = BacktestExecution

    backtest = factory.SubFactory(BacktestFactory)
    number = factory.LazyAttribute(lambda o: o.backtest.executions.count())
    time = factory.LazyAttribute(lambda o: (o.backtest.start or timezone.now()) + timedelta(minutes=10 + o.number))
    market = factory.LazyAttribute(lambda o: o.backtest.markets.order_by("created_at").first())
    side = "YES"
    action = "BUY"
    price = Decimal("0.40")
    size = 5
    reason = "taker"
    cash = Decimal("-2.00")
