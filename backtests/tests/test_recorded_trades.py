"""Every built-in strategy backtested on the server over real Polymarket executions (``../shared/data``) replayed
through the exchange's services: the P&L identity holds to the cent, and the backtests move no money."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from moltstreet_client.backtest import run_backtest
from moltstreet_client.metrics import pnl_identity_gap
from moltstreet_client.strategies import BUILTINS

from backtests import selectors
from backtests.models import Backtest, BacktestExecution
from backtests.tests.conftest import spread_in_time
from markets.models import Market
from markets.services import snapshot_record
from testsupport.api import API, api_client, operator_resolver, unchanged
from trading import replay
from trading.lifecycle import market_close
from trading.resolution import market_resolve

pytestmark = pytest.mark.django_db

TRADES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "polymarket" / "fed-march-2026-trades.csv"
# Two of the file's questions, backtested together (one cash balance), each with the outcome it is resolved to and
# the stretch of its executions replayed (oldest first): the first question's price moves between 0.97 and 0.98 from
# its 628th execution on; the second's stays at 0.02.
ROWS = 120
QUESTIONS = {
    "Will there be no change in Fed interest rates after the March 2026 meeting?": ("YES", slice(600, 600 + ROWS)),
    "Will the Fed decrease interest rates by 25 bps after the March 2026 meeting?": ("NO", slice(0, ROWS)),
}
# Parameters that make the built-ins act on these nearly flat markets (prices move one tick at a time, events ten
# simulated minutes apart): momentum reacts to one tick and its bids rest two hours; the noise trader's turns are an
# hour apart, so that the history's days are ~70 turns, not 60,000.
PARAMS = {
    "market_maker": {"half_spread": "0.01", "max_inventory": 200},
    "momentum": {"lookback": 1, "threshold": "0.01", "rest_seconds": 7200.0},
    "reference_leaner": {"edge": "0.01"},
    "noise": {"interval": 3600.0, "seed": 7},
}


@pytest.fixture
def polymarket_markets(db):
    """For each question, ``ROWS`` of its real executions replayed oldest first with a source snapshot (a little
    away from the last trade) after every fortieth, then the market closed and resolved; its events spread ten
    minutes apart (two to three days). Returns the two markets."""
    if not TRADES.exists():
        pytest.fail(f"the recorded trades are missing: {TRADES}")
    rows, malformed = replay.read_trades(TRADES)
    assert not malformed
    exchange = replay.LocalExchange()
    markets = []
    for question, (outcome, stretch) in QUESTIONS.items():
        mine = [row for row in rows if row.question == question][stretch]
        ids, _created = replay.ensure_markets_local(mine, scale=replay.DEFAULT_SCALE)
        market_id = ids[question]
        for chunk in range(0, ROWS, 40):
            report = replay.replay(mine[chunk : chunk + 40], exchange, market_ids=ids)
            assert report.replayed > 0, report
            last = Market.objects.get(id=market_id).last_price
            reference = last - Decimal("0.03") if last > Decimal("0.5") else last + Decimal("0.03")
            snapshot_record(
                market_id=market_id,
                source="polymarket",
                values={"yes_price": reference, "yes_bid": None, "yes_ask": None, "volume": None, "status": "open"},
                taken_at=timezone.now() + timedelta(hours=chunk),
            )
        market_close(market_id=market_id)
        market_resolve(market_id=market_id, outcome=outcome, resolver=operator_resolver())
        spread_in_time(Market.objects.get(id=market_id), step=timedelta(minutes=10))
        markets.append(Market.objects.get(id=market_id))
    return markets


def test_every_built_in_on_real_trades_keeps_the_pnl_identity_and_moves_no_money(
    polymarket_markets, make_agent, audit_clean
):
    agent = make_agent()
    histories = [selectors.market_history(market) for market in sorted(polymarket_markets, key=lambda m: str(m.id))]
    assert all(history.trades > 0 and history.snapshots == ROWS // 40 for history in histories)
    market_ids = [history.market for history in histories]

    traded = {}
    with unchanged(audit_clean):
        for name, cls in BUILTINS.items():
            result = run_backtest(cls(**PARAMS[name]), histories)
            assert pnl_identity_gap(result) == Decimal("0"), name
            traded[name] = result.metrics["trades"]

            response = api_client(agent).post(
                f"{API}/backtests/",
                {"strategy": name, "params": PARAMS[name], "markets": market_ids},
            )
            assert response.status_code == 202, response.content
            backtest = Backtest.objects.get(id=response.json()["id"])
            assert backtest.status == Backtest.Status.DONE, (name, backtest.error)
            # The server's run is the engine's, to the cent, and its stored rows keep the identity.
            assert backtest.metrics == result.as_dict()["metrics"], name
            flows = sum(
                BacktestExecution.objects.filter(backtest=backtest).values_list("cash", flat=True), Decimal("0")
            )
            left = sum((Decimal(v) for v in [*backtest.payouts.values(), *backtest.marked.values()]), Decimal("0"))
            assert Decimal(backtest.metrics["pnl"]) == flows + left, name
            assert backtest.executions.count() == len(result.executions), name
    assert all(traded.values()), f"a built-in that never traded proves nothing here: {traded}"
