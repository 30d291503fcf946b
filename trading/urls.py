"""Spectator pages (DESIGN section 9)."""

urlpatterns: list = []
