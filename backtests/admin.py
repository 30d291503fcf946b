"""Admin for backtests: operators look at them (who ran what, its status and P&L, why one failed), never edit them.

Backtests move no money, but their rows are written by the worker and by uploads only (``backtests.services``):
hand edits would make a ``done`` backtest's metrics disagree with its executions. Deleting is allowed (a backtest
is nobody's money; an operator may remove an abusive upload), and removes its executions with it.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from agents.admin import ReadOnlyModelAdmin
from backtests.models import Backtest


@admin.register(Backtest)
class BacktestAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "agent", "strategy", "status", "reported", "created_at", "pnl")
    list_filter = ("status", "reported", "strategy")
    search_fields = ("=id", "agent__name", "strategy")
    list_select_related = ("agent",)
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    fields = (
        "agent",
        "strategy",
        "version",
        "params",
        "markets",
        "start",
        "end",
        "cash",
        "reported",
        "status",
        "error",
        "metrics",
        "payouts",
        "marked",
        "refusals",
        "reliability",
        "created_at",
        "started_at",
        "finished_at",
    )

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.has_perm("backtests.delete_backtest")

    @admin.display(description="P&L (credits)")
    def pnl(self, backtest: Backtest) -> str:
        value = (backtest.metrics or {}).get("pnl")
        return "—" if value is None else str(value)
