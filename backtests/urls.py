"""The backtest's spectator page (DESIGN section 11); the API's routes are in moltstreet/urls.py."""

from django.urls import path

from backtests import views

app_name = "backtests"

urlpatterns = [
    # An id that is not a UUID matches nothing: a 404, as for /markets/<id>/.
    path("backtests/<uuid:backtest_id>/", views.backtest_detail, name="detail"),
]
