"""POST /api/v1/backtests/ (a built-in run, or an upload with ``reported``), GET the list, one backtest, its
executions and the built-ins. Tasks run at once here (the immediate backend, conftest.py); the worker has its own
tests (test_worker.py)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django_tasks_db.models import DBTaskResult
from moltstreet_client.backtest import run_backtest
from moltstreet_client.metrics import METRICS
from moltstreet_client.strategies import BUILTINS

from agents.models import Agent
from backtests import selectors, services
from backtests.models import Backtest, BacktestExecution
from markets.models import MarketEvent
from testsupport.api import (
    API,
    api_client,
    assert_decimal_string,
    assert_error,
    assert_page,
    assert_time,
    unchanged,
    walk_pages,
)
from trading.tests.factories import new_market

pytestmark = pytest.mark.django_db
URL = f"{API}/backtests/"


def post(agent, body: dict):
    return api_client(agent).post(URL, body)


def run_body(market, **extra) -> dict:
    return {"strategy": "market_maker", "markets": [str(market.id)], **extra}


def nothing_stored() -> None:
    assert not Backtest.objects.exists()
    assert not BacktestExecution.objects.exists()
    assert not DBTaskResult.objects.exists()


# --------------------------------------------------------------------------------------------------------------------
# Running a built-in


def test_a_backtest_is_accepted_then_done_with_its_metrics_and_moves_no_money(traded_market, make_agent, audit_clean):
    agent = make_agent()
    with unchanged(audit_clean):  # balances, positions, orders, trades, ledger, events: all as they were
        response = post(agent, run_body(traded_market, params={"half_spread": "0.03"}, cash="500"))

    assert response.status_code == 202, response.content
    body = response.json()
    backtest = Backtest.objects.get(id=body["id"])
    assert backtest.status == Backtest.Status.DONE, backtest.error
    assert body["status"] == "done"
    assert body["agent"] == agent.name
    assert body["strategy"] == "market_maker" and body["version"] == BUILTINS["market_maker"].version
    assert body["params"] == {"half_spread": "0.03", "skew": "0.002", "size": 5, "max_inventory": 50}
    assert body["markets"] == [str(traded_market.id)]
    assert body["cash"] == "500.00" and body["reported"] is False and body["error"] == ""
    assert set(body["metrics"]) == set(METRICS)
    assert body["metrics"]["trades"] > 0
    pnl = assert_decimal_string(body["metrics"]["pnl"])
    # The P&L identity, on what was stored: executions' cash + payouts + marked value left.
    flows = sum(BacktestExecution.objects.filter(backtest=backtest).values_list("cash", flat=True), Decimal(0))
    held = sum((Decimal(v) for v in [*body["payouts"].values(), *body["marked"].values()]), Decimal(0))
    assert pnl == flows + held
    assert body["payouts"], "the market resolved YES: what was held paid out"
    assert len(body["reliability"]) == 10
    assert body["equity"] and all(len(point) == 2 for point in body["equity"])
    assert_time(body["created_at"]), assert_time(body["started_at"]), assert_time(body["finished_at"])
    agent.refresh_from_db()
    assert agent.balance == Decimal("1000.00") and agent.locked_balance == Decimal("0.00")


def test_the_stored_result_is_the_engines_on_the_same_history(traded_market, make_agent):
    body = post(make_agent(), run_body(traded_market)).json()

    result = run_backtest(BUILTINS["market_maker"](), [selectors.market_history(traded_market)])
    expected = result.as_dict(executions=True)
    assert body["metrics"] == expected["metrics"]
    assert body["equity"] == expected["equity"]
    assert body["payouts"] == expected["payouts"] and body["marked"] == expected["marked"]
    listed, _pages = walk_pages(api_client(), f"{URL}{body['id']}/executions/?page_size=3")
    assert [{k: v for k, v in row.items() if k != "number"} for row in listed] == [
        {**row, "order": row["order"] or ""} for row in expected["executions"]
    ]
    assert [row["number"] for row in listed] == list(range(len(listed)))


def test_a_period_limits_the_replay(traded_market, make_agent):
    times = list(MarketEvent.objects.filter(market=traded_market).order_by("seq").values_list("created_at", flat=True))
    start, end = times[3], times[len(times) // 2]
    body = post(make_agent(), run_body(traded_market, start=start.isoformat(), end=end.isoformat())).json()

    assert body["status"] == "done"
    assert assert_time(body["start"]) == start and assert_time(body["end"]) == end
    executions = BacktestExecution.objects.filter(backtest_id=body["id"])
    assert all(start <= row.time < end for row in executions)
    assert body["payouts"] == {}, "the resolution is after the period"


def test_anyone_reads_a_backtest_and_its_executions_and_only_its_owner_lists_it(traded_market, make_agent):
    owner, other = make_agent(), make_agent()
    first = post(owner, run_body(traded_market)).json()
    second = post(owner, run_body(traded_market, strategy="momentum")).json()
    post(other, run_body(traded_market))

    anonymous = api_client()
    assert anonymous.get(f"{URL}{first['id']}/").json() == first
    assert anonymous.get(f"{URL}{first['id']}/executions/").status_code == 200
    assert_error(anonymous.get(URL), 401, "not_authenticated")
    listed, pages = walk_pages(api_client(owner), f"{URL}?page_size=1")
    assert [row["id"] for row in listed] == [second["id"], first["id"]]  # newest first
    assert pages == 2


@pytest.mark.parametrize("missing", [str(uuid.uuid4()), "not-a-uuid", "0"])
def test_an_unknown_backtest_is_a_404(missing, db):
    assert_error(api_client().get(f"{URL}{missing}/"), 404, "not_found")
    assert_error(api_client().get(f"{URL}{missing}/executions/"), 404, "not_found")


def test_the_built_ins_are_listed_with_their_parameters(db):
    response = api_client().get(f"{URL}strategies/")

    assert response.status_code == 200
    strategies = {row["name"]: row for row in response.json()}
    assert {"market_maker", "momentum", "reference_leaner", "noise"} <= set(strategies)
    maker = strategies["market_maker"]
    assert maker["description"] and maker["version"] == "1"
    params = {param["name"]: param for param in maker["params"]}
    assert params["half_spread"] == {
        "name": "half_spread",
        "type": "decimal",
        "default": "0.02",
        "unit": "credits (YES price)",
        "description": params["half_spread"]["description"],
        "minimum": "0.01",
        "maximum": "0.50",
    }
    assert params["size"]["type"] == "integer" and params["size"]["unit"] == "contracts"
    assert strategies == {name: cls.describe() for name, cls in BUILTINS.items()}


def test_a_run_that_raises_is_failed_with_its_error_and_no_execution(traded_market, make_agent, monkeypatch):
    def broken(self, ctx, trade):
        raise RuntimeError("the strategy's own bug")

    monkeypatch.setattr(BUILTINS["market_maker"], "on_trade", broken)
    body = post(make_agent(), run_body(traded_market)).json()

    backtest = Backtest.objects.get(id=body["id"])
    assert backtest.status == Backtest.Status.FAILED
    assert backtest.error == "RuntimeError: the strategy's own bug"
    assert backtest.metrics == {} and backtest.finished_at is not None
    assert not backtest.executions.exists()


# --------------------------------------------------------------------------------------------------------------------
# Refusals: 400 invalid_request naming the field, nothing stored


def _21_markets(market):
    return [str(market.id)] + [str(uuid.uuid4()) for _ in range(20)]


REFUSALS = {
    "unknown strategy": (lambda m, q: run_body(m, strategy="martingale"), "strategy"),
    "module:Class on the server": (lambda m, q: run_body(m, strategy="os:system"), "strategy"),
    "unknown parameter": (lambda m, q: run_body(m, params={"leverage": 10}), "params"),
    "parameter above its maximum": (lambda m, q: run_body(m, params={"half_spread": "0.90"}), "half_spread"),
    "parameter of the wrong type": (lambda m, q: run_body(m, params={"size": "lots"}), "size"),
    "no market": (lambda m, q: run_body(m, markets=[]), "markets"),
    "21 markets": (lambda m, q: run_body(m, markets=_21_markets(m)), "markets"),
    "unknown market": (lambda m, q: run_body(m, markets=[str(uuid.uuid4())]), "markets"),
    "a market twice": (lambda m, q: run_body(m, markets=[str(m.id), str(m.id)]), "markets"),
    "a market with no history": (lambda m, q: run_body(m, markets=[str(m.id), str(q.id)]), "markets"),
    "end before start": (
        lambda m, q: run_body(m, start="2026-03-02T00:00:00Z", end="2026-03-01T00:00:00Z"),
        "start",
    ),
    "end equal to start": (lambda m, q: run_body(m, start="2026-03-01T00:00:00Z", end="2026-03-01T00:00:00Z"), "end"),
    "a period with no history": (lambda m, q: run_body(m, start="2031-01-01T00:00:00Z"), "markets"),
    "cash zero": (lambda m, q: run_body(m, cash="0"), "cash"),
    "cash negative": (lambda m, q: run_body(m, cash=-5), "cash"),
    "cash not a number": (lambda m, q: run_body(m, cash="lots"), "cash"),
    "cash a boolean": (lambda m, q: run_body(m, cash=True), "cash"),
    "cash with fractions of a cent": (lambda m, q: run_body(m, cash="10.001"), "cash"),
    "a market id that is not a UUID": (lambda m, q: run_body(m, markets=[7]), "markets"),
    "a bad time": (lambda m, q: run_body(m, start="yesterday"), "start"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_bad_input_is_refused_with_the_field_named_and_nothing_stored(case, traded_market, quiet_market, make_agent):
    make_body, field = REFUSALS[case]
    agent = make_agent()

    error = assert_error(post(agent, make_body(traded_market, quiet_market)), 400, "invalid_request")

    assert field in error["detail"] or field in str(error["detail"]), error
    nothing_stored()


def test_a_market_with_no_history_is_named(traded_market, quiet_market, make_agent):
    body = run_body(traded_market, markets=[str(traded_market.id), str(quiet_market.id)])
    error = assert_error(post(make_agent(), body), 400, "invalid_request")
    assert error["detail"] == {"markets": [str(quiet_market.id)]}


def test_a_key_is_needed_to_run_one(traded_market):
    assert_error(api_client().post(URL, run_body(traded_market)), 401, "not_authenticated")
    nothing_stored()


def test_runs_are_rate_limited_per_agent(traded_market, make_agent, settings):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "RATES": {**settings.MOLTSTREET["RATES"], "backtests": "2/hour"}}
    agent, other = make_agent(), make_agent()
    for _ in range(2):
        assert post(agent, run_body(traded_market)).status_code == 202

    assert_error(post(agent, run_body(traded_market)), 429, "rate_limited")
    assert post(other, run_body(traded_market)).status_code == 202
    assert Backtest.objects.count() == 3
    assert api_client(agent).get(URL).status_code == 200  # reads are not counted


# --------------------------------------------------------------------------------------------------------------------
# Uploading a result the SDK computed


def sdk_result(market, strategy: str = "market_maker") -> dict:
    """What ``moltstreet-backtest --upload`` sends: the SDK's result over the market's history."""
    result = run_backtest(BUILTINS[strategy](), [selectors.market_history(market)])
    return {**result.as_dict(), "strategy": "my_bots:Maker", "reported": True}


def test_an_uploaded_result_is_stored_at_once_as_reported(traded_market, make_agent, audit_clean):
    agent = make_agent()
    upload = sdk_result(traded_market)
    with unchanged(audit_clean):
        response = post(agent, upload)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "done" and body["reported"] is True
    assert body["strategy"] == "my_bots:Maker" and body["agent"] == agent.name
    for field in ("metrics", "equity", "payouts", "marked", "reliability", "refusals", "params", "markets"):
        assert body[field] == upload[field], field
    assert body["cash"] == upload["cash"]
    assert assert_time(body["start"]) == assert_time(upload["start"])
    listed, _ = walk_pages(api_client(), f"{URL}{body['id']}/executions/?page_size=50")
    assert [{k: v for k, v in row.items() if k != "number"} for row in listed] == [
        {**row, "order": row["order"] or ""} for row in upload["executions"]
    ]
    assert not DBTaskResult.objects.exists(), "nothing to run"


def _bad_execution(upload, **change):
    upload["executions"][0] = {**upload["executions"][0], **change}
    return upload


UPLOAD_REFUSALS = {
    "an execution in another market": (
        lambda u, other: _bad_execution(u, market=str(other.id)),
        "executions[0].market",
    ),
    "a size of 0": (lambda u, other: _bad_execution(u, size=0), "executions[0].size"),
    "a fractional size": (lambda u, other: _bad_execution(u, size=1.5), "executions[0].size"),
    "a price above 1.00": (lambda u, other: _bad_execution(u, price="1.01"), "executions[0].price"),
    "a price of 0": (lambda u, other: _bad_execution(u, price="0.00"), "executions[0].price"),
    "a price off the tick": (lambda u, other: _bad_execution(u, price="0.555"), "executions[0].price"),
    "an unknown side": (lambda u, other: _bad_execution(u, side="MAYBE"), "executions[0].side"),
    "a bad time": (lambda u, other: _bad_execution(u, time="noon"), "executions[0].time"),
    "a P&L that does not add up": (
        lambda u, other: {**u, "metrics": {**u["metrics"], "pnl": str(Decimal(u["metrics"]["pnl"]) + 1)}},
        "metrics.pnl",
    ),
    "an unknown metric": (lambda u, other: {**u, "metrics": {**u["metrics"], "alpha": "1"}}, "metrics"),
    "a payout in another market": (lambda u, other: {**u, "payouts": {str(other.id): "1.00"}}, "payouts"),
    "executions that are not a list": (lambda u, other: {**u, "executions": {"a": 1}}, "executions"),
    "an empty label": (lambda u, other: {**u, "strategy": " "}, "strategy"),
    "cash of 0": (lambda u, other: {**u, "cash": "0"}, "cash"),
    "end before start": (lambda u, other: {**u, "end": u["start"], "start": u["end"]}, "start"),
    "no market": (lambda u, other: {**u, "markets": []}, "markets"),
}


@pytest.mark.parametrize("case", UPLOAD_REFUSALS, ids=str)
def test_a_bad_upload_is_refused_with_the_field_named_and_nothing_stored(case, traded_market, make_agent):
    change, field = UPLOAD_REFUSALS[case]
    other = new_market(question="Another market")
    upload = change(sdk_result(traded_market), other)

    error = assert_error(post(make_agent(), upload), 400, "invalid_request")

    assert field in error["detail"] or field in str(error["detail"]), error
    nothing_stored()


def test_an_upload_has_at_most_the_executions_allowed(traded_market, make_agent, monkeypatch):
    upload = sdk_result(traded_market)
    assert len(upload["executions"]) > 2
    monkeypatch.setattr(services, "MAX_EXECUTIONS", 2)

    error = assert_error(post(make_agent(), upload), 400, "invalid_request")

    assert error["detail"] == {"executions": len(upload["executions"]), "max": 2}
    nothing_stored()


def test_executions_are_pages_in_order(traded_market, make_agent):
    body = post(make_agent(), run_body(traded_market)).json()
    total = BacktestExecution.objects.filter(backtest_id=body["id"]).count()
    assert total > 2

    first = api_client().get(f"{URL}{body['id']}/executions/?page_size=2").json()
    rows = assert_page(first)
    assert [row["number"] for row in rows] == [0, 1]
    row = rows[0]
    assert set(row) == {"number", "time", "market", "side", "action", "price", "size", "reason", "cash", "order"}
    assert_decimal_string(row["price"]) and assert_decimal_string(row["cash"])
    assert row["reason"] in ("taker", "maker", "netting")
    assert first["next"]
    everything, pages = walk_pages(api_client(), f"{URL}{body['id']}/executions/?page_size=2")
    assert len(everything) == total and pages == (total + 1) // 2


def test_no_backtest_changes_an_agents_money(traded_market, make_agent, audit_clean):
    agent = make_agent()
    before = Agent.objects.order_by("id").values_list("id", "balance", "locked_balance")
    before = list(before)
    for name in BUILTINS:
        params = {"interval": 3600.0} if name == "noise" else {}
        assert post(agent, run_body(traded_market, strategy=name, params=params)).status_code == 202
    post(agent, sdk_result(traded_market))

    assert list(Agent.objects.order_by("id").values_list("id", "balance", "locked_balance")) == before
    assert Backtest.objects.filter(status="done").count() == len(BUILTINS) + 1
    audit_clean()
