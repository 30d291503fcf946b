"""The apps' factory-boy factories keep the books: money comes only through the services (DESIGN section 5)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agents.models import LedgerEntry
from agents.services import agent_for_api_key
from agents.tests.factories import AgentFactory, ApiKeyFactory
from backtests.tests.factories import BacktestExecutionFactory, BacktestFactory
from markets.tests.factories import (
    FeedFactory,
    ForecastFactory,
    ImportedMarketFactory,
    MarketFactory,
    SnapshotFactory,
)

pytestmark = pytest.mark.django_db


def test_an_agent_is_registered_with_its_grant_and_extra_credits_as_an_adjustment(audit_clean):
    agent = AgentFactory(credits="500.00", oracle=True, max_position=3)

    assert (agent.balance, agent.locked_balance, agent.is_oracle, agent.max_position) == (
        Decimal("1500.00"),
        Decimal("0.00"),
        True,
        3,
    )
    kinds = list(LedgerEntry.objects.filter(agent=agent).order_by("id").values_list("kind", "amount"))
    assert kinds == [("grant", Decimal("1000.00")), ("adjustment", Decimal("500.00"))]
    assert agent_for_api_key(agent.api_key) == agent
    assert AgentFactory(house=True).is_house
    audit_clean()


@pytest.mark.parametrize("field", ["balance", "locked_balance"])
def test_an_agent_factory_refuses_to_write_money_or_to_build_an_unregistered_agent(field):
    with pytest.raises(TypeError):
        AgentFactory(**{field: Decimal("5.00")})
    with pytest.raises(TypeError):
        AgentFactory.build()


def test_a_market_s_creator_pays_the_fee_and_an_imported_market_costs_nothing(audit_clean):
    market = MarketFactory()
    imported = ImportedMarketFactory(reference_price=Decimal("0.6"))

    assert market.creator.balance == Decimal("990.00")
    assert LedgerEntry.objects.filter(agent=market.creator, kind="fee").count() == 1
    assert (imported.creator, imported.reference_price) == (None, Decimal("0.6000"))
    audit_clean()


def test_forecasts_snapshots_feeds_keys_and_backtests_are_made_as_their_services_make_them(audit_clean):
    market, imported = MarketFactory(), ImportedMarketFactory()
    forecast = ForecastFactory(market=market, probability="0.7")
    snapshot = SnapshotFactory(market=imported, yes_price=Decimal("0.4"))
    key = ApiKeyFactory(agent=forecast.agent)
    known = ApiKeyFactory(raw_key="ms_known-" + "k" * 32)
    backtest = BacktestFactory(done=True, agent=forecast.agent, markets=[market, imported])
    first, second = BacktestExecutionFactory(backtest=backtest), BacktestExecutionFactory(backtest=backtest)

    assert (forecast.probability, forecast.market_id) == (Decimal("0.7000"), market.id)
    imported.refresh_from_db()
    assert (snapshot.seq, imported.reference_price) == (1, Decimal("0.4000"))
    assert agent_for_api_key(key.raw_key) == forecast.agent
    assert agent_for_api_key("ms_known-" + "k" * 32) == known.agent
    assert FeedFactory(query="fed").source == "kalshi"
    assert (backtest.status, set(backtest.markets.all())) == ("done", {market, imported})
    assert (first.number, second.number, first.market_id) == (0, 1, market.id)
    audit_clean()
