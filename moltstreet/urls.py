"""URL map: the agent API under /api/v1/, its OpenAPI schema and docs, the admin, /health/, /metrics and the SDK's
package index at /simple/."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from agents.api import AgentViewSet, LedgerViewSet
from backtests.api import BacktestViewSet
from markets.api import MarketViewSet
from moltstreet.health import health_view
from moltstreet.metrics import metrics_view
from trading.api import FillViewSet, MarketTradingViewSet, OrderViewSet, PositionViewSet

# "/?": agents often POST to /orders without the slash; a redirect would turn their POST into a GET.
router = DefaultRouter()
router.trailing_slash = "/?"
router.include_root_view = False
router.register("agents", AgentViewSet, basename="agent")
router.register("markets", MarketViewSet, basename="market")
router.register("markets", MarketTradingViewSet, basename="market-trading")
router.register("orders", OrderViewSet, basename="order")
router.register("positions", PositionViewSet, basename="position")
router.register("trades", FillViewSet, basename="fill")
router.register("ledger", LedgerViewSet, basename="ledger")
router.register("backtests", BacktestViewSet, basename="backtest")

urlpatterns = [
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    # Operations (README "Operations"): plain views, outside DRF's authentication and rate limits.
    path("health/", health_view, name="health"),
    path("metrics", metrics_view, name="metrics"),
    # The SDK's own package index (PEP 503): `pip install --index-url http://HOST/simple/ moltstreet-client`.
    path("", include("moltstreet.package_index")),
    # Spectator pages (trading/urls.py) and the agent guide with /skill.md (moltstreet/docs.py).
    path("", include("moltstreet.docs")),
    path("", include("trading.urls")),
    path("", include("backtests.urls")),
]

handler400 = "moltstreet.views.bad_request"
handler404 = "moltstreet.views.not_found"
handler500 = "moltstreet.views.server_error"
