"""The SDK against a running server: ``MarketHistory.fetch`` reads over HTTP the same history the worker reads from the
database, and the client's backtest calls (run, upload, read) work end to end."""

from __future__ import annotations

import pytest
from moltstreet_client import Client
from moltstreet_client.backtest import MarketHistory, run_backtest
from moltstreet_client.strategies import BUILTINS

from backtests import selectors


@pytest.mark.django_db(transaction=True)
def test_the_sdk_backtests_over_http_what_the_server_backtests_from_its_database(
    live_server, traded_market, make_agent
):
    agent = make_agent()
    with Client(live_server.url, agent.api_key, trust_env=False, max_retries=0) as client:
        history = MarketHistory.fetch(client, traded_market.id)
        assert history.events == selectors.market_events(traded_market)
        result = run_backtest(BUILTINS["market_maker"](), [history])

        uploaded = client.upload_backtest(result)
        ran = client.create_backtest("market_maker", [traded_market.id])

        assert uploaded["reported"] is True and uploaded["status"] == "done"
        assert ran["reported"] is False and ran["status"] == "done"  # the immediate backend: run before the answer
        assert client.backtest(ran["id"])["metrics"] == uploaded["metrics"] == result.as_dict()["metrics"]
        executions = list(client.backtest_executions(ran["id"], page_size=2))
        assert executions == list(client.backtest_executions(uploaded["id"]))
        assert executions and len(executions) == len(result.executions)
        assert [row["id"] for row in client.backtests()] == [ran["id"], uploaded["id"]]
        assert {row["name"] for row in client.backtest_strategies()} == set(BUILTINS)
