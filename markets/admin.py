"""Admin for forecasts and the market event sequence. ``Market`` itself is registered in ``trading/admin.py``.

Market's operator actions (close, resolve) call the trading services, which this app must not import.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils.text import Truncator

from agents.admin import ReadOnlyModelAdmin
from markets.models import Forecast, MarketEvent, MarketSnapshot


@admin.register(Forecast)
class ForecastAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "agent", "market", "probability", "reasoning_excerpt")
    search_fields = ("agent__name", "market__question")
    list_select_related = ("agent", "market")
    date_hierarchy = "created_at"

    @admin.display(description="Reasoning")
    def reasoning_excerpt(self, obj: Forecast) -> str:
        return Truncator(obj.reasoning).chars(80)


@admin.register(MarketEvent)
class MarketEventAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "market", "seq", "kind", "created_at")
    list_filter = ("kind",)
    search_fields = ("market__question",)
    list_select_related = ("market",)
    # Newest first: operators look here to see what just happened, not the history from the first event.
    ordering = ("-id",)


@admin.register(MarketSnapshot)
class MarketSnapshotAdmin(ReadOnlyModelAdmin):
    """The sources' prices of mirrored markets, as the poller stored them (DESIGN section 10)."""

    list_display = ("taken_at", "market", "source", "seq", "yes_price", "yes_bid", "yes_ask", "volume", "status")
    list_filter = ("source", "status")
    search_fields = ("market__question", "=market__external_id")
    list_select_related = ("market",)
    ordering = ("-id",)
