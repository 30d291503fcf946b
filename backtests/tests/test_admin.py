"""The operators' admin of backtests: a read-only list with the P&L, a view-only page, no hand edits."""

from __future__ import annotations

import pytest
from django.urls import reverse

from backtests.models import Backtest
from testsupport.api import API, api_client

pytestmark = pytest.mark.django_db


def test_operators_see_backtests_with_their_pnl_and_cannot_edit_them(admin_client, traded_market, make_agent):
    agent = make_agent("admin-viewed")
    body = (
        api_client(agent)
        .post(f"{API}/backtests/", {"strategy": "market_maker", "markets": [str(traded_market.id)]})
        .json()
    )
    backtest = Backtest.objects.get(id=body["id"])

    changelist = reverse("admin:backtests_backtest_changelist")
    for query in ("", f"?q={backtest.id}", "?q=admin-viewed", "?q=not-a-uuid", "?status__exact=done"):
        response = admin_client.get(changelist + query)
        assert response.status_code == 200, query
    page = admin_client.get(changelist).content.decode()
    assert body["metrics"]["pnl"] in page and "market_maker" in page and agent.name in page

    change = reverse("admin:backtests_backtest_change", args=[backtest.id])
    response = admin_client.get(change)
    assert response.status_code == 200
    assert b'name="_save"' not in response.content  # view-only
    assert admin_client.get(reverse("admin:backtests_backtest_add")).status_code == 403
    admin_client.post(change, {"strategy": "edited"})
    backtest.refresh_from_db()
    assert backtest.strategy == "market_maker"
