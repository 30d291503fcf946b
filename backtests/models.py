"""Backtests (DESIGN section 11): a strategy replayed on recorded market history, and the simulated fills it got.

A backtest is run by a worker (``backtests.tasks``) from a ``POST /api/v1/backtests/`` of a built-in strategy, or
uploaded finished by an agent that ran its own strategy with the SDK (``reported``: the exchange did not run it).
Its results are written in one transaction with ``status`` ``done`` (never half-written); a run that raises is
``failed`` with its ``error``. A result too large for one request body is uploaded in parts: ``uploading`` until its
last page of executions arrives, then ``done`` in that page's transaction (``backtests.services``). Nothing here moves money: a backtest's credits are simulated.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models

from agents.models import MONEY
from markets.models import PRICE


class Backtest(models.Model):
    """One backtest: its inputs (``strategy``, ``version``, ``params``, ``markets``, ``start``/``end``, ``cash`` in
    credits) and, once ``done``, its results: ``metrics`` (``pnl`` credits, ``return``, ``sharpe``,
    ``max_drawdown`` a fraction of the peak, ``win_rate``, ``trades``, ``brier``; decimals as strings), ``equity`` (``[[time,
    credits], ...]``, thinned for a chart), ``reliability`` (ten bins of the scored forecasts), ``payouts`` and
    ``marked`` (credits by market id), ``refusals`` (count by error code). ``started_at`` is also the claim of the
    worker's attempt (``backtests.services.backtest_run``): a newer attempt replaces it, and only the attempt that
    holds it may write the results. ``uploading``: a reported result whose ``executions_count`` executions are
    being sent in pages (``POST /backtests/{id}/executions/``); its metrics are not final until it is ``done``."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        UPLOADING = "uploading"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="backtests")
    strategy = models.CharField(max_length=200, help_text="A built-in's name, or the module:Class an agent ran.")
    version = models.CharField(max_length=40, blank=True)
    params = models.JSONField(default=dict, blank=True)
    markets = models.ManyToManyField("markets.Market", related_name="backtests")
    start = models.DateTimeField(null=True, blank=True, help_text="Replay from (None: the markets' first event).")
    end = models.DateTimeField(null=True, blank=True, help_text="Replay until (None: the last event).")
    cash = models.DecimalField(default=Decimal("1000.00"), **MONEY)
    reported = models.BooleanField(
        default=False, help_text="Run by the agent on its own machine and uploaded; the exchange did not run it."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    equity = models.JSONField(default=list, blank=True)
    reliability = models.JSONField(default=list, blank=True)
    payouts = models.JSONField(default=dict, blank=True)
    marked = models.JSONField(default=dict, blank=True)
    refusals = models.JSONField(default=dict, blank=True)
    executions_count = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Its executions once done; while uploading, how many were announced. None otherwise.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["agent", "-created_at"], name="backtests_agent_created")]
        constraints = [models.CheckConstraint(condition=models.Q(cash__gt=0), name="backtests_backtest_cash_positive")]

    def __str__(self) -> str:
        return f"{self.strategy} ({self.status})"


class BacktestExecution(models.Model):
    """A simulated fill of a backtest (or a netting of YES and NO contracts): the SDK's ``Execution``. ``price`` on
    the order's own side (credits), ``size`` contracts, ``cash`` the credits it moved (negative: paid), ``reason``
    ``taker``, ``maker`` or ``netting`` (``side`` ``PAIR``, ``action`` ``MERGE``)."""

    backtest = models.ForeignKey(Backtest, on_delete=models.CASCADE, related_name="executions")
    number = models.PositiveIntegerField(help_text="Its place in the backtest, from 0.")
    time = models.DateTimeField()
    market = models.ForeignKey("markets.Market", on_delete=models.CASCADE, related_name="+")
    side = models.CharField(max_length=4)
    action = models.CharField(max_length=5)
    price = models.DecimalField(**PRICE)
    size = models.PositiveIntegerField()
    reason = models.CharField(max_length=10)
    cash = models.DecimalField(**MONEY)
    order = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["backtest", "number"]
        constraints = [
            models.UniqueConstraint(fields=["backtest", "number"], name="backtests_execution_number"),
            models.CheckConstraint(condition=models.Q(size__gt=0), name="backtests_execution_size_positive"),
            # 0.01-0.99 for a fill on its own side; 1.00 for a netting (a YES and a NO merged into 1.00 credit).
            models.CheckConstraint(
                condition=models.Q(price__gte=Decimal("0.01"), price__lte=Decimal("1.00")),
                name="backtests_execution_price_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.size} {self.side} @ {self.price}"
