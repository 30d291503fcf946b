"""Spectator pages (DESIGN section 9)."""

from django.urls import path, re_path

from trading import views

app_name = "pages"

urlpatterns = [
    path("", views.market_list, name="markets"),
    path("markets/<uuid:market_id>/", views.market_detail, name="market"),
    path("agents/", views.agent_list, name="leaderboard"),
    # Any name without "/" or NUL (PostgreSQL text cannot hold NUL: a lookup with one would fail instead of 404).
    re_path(r"^agents/(?P<name>[^/\x00]+)/$", views.agent_detail, name="agent"),
]
