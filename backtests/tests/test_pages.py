"""The backtest page and the profile's backtests and reliability diagram (DESIGN section 11).

Backtests are rows made by ``BacktestFactory`` (what the worker or an upload writes); forecasts are stated and scored
through the services (``ForecastFactory``), so the diagram is checked against the very forecasts the Brier score was
made of.
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from moltstreet_client import metrics

from agents.models import Agent
from backtests import charts
from backtests.models import Backtest, BacktestExecution
from backtests.selectors import agent_reliability, market_prices
from backtests.tests.factories import BacktestExecutionFactory, BacktestFactory
from markets.models import Forecast, Market
from markets.tests.factories import ForecastFactory, MarketFactory
from testsupport.api import operator_resolver
from trading.resolution import market_resolve
from trading.tests.factories import mint, new_agent

pytestmark = pytest.mark.django_db


def get(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.content.decode()


def iso(at) -> str:
    return at.isoformat().replace("+00:00", "Z")


def done_backtest(agent: Agent, market: Market, **fields) -> Backtest:
    """A finished backtest of 1000.00 credits that started two hours ago: equity up to 1100, down to 1050 (a fall
    of 50), then 1012.50 (87.50 below the peak; a P&L of 12.50, of which 12.00 is the position left at its mark)."""
    now = timezone.now()
    start = now - timedelta(hours=2)
    equity = [
        [iso(start), "1000.00"],
        [iso(start + timedelta(minutes=20)), "1100.00"],
        [iso(start + timedelta(minutes=40)), "1050.00"],
        [iso(start + timedelta(minutes=60)), "1012.50"],
    ]
    defaults = {
        "agent": agent,
        "markets": [market],
        "strategy": "momentum",
        "version": "1.2",
        "params": {"window": 5, "size": 3},
        "start": start,
        "end": now + timedelta(minutes=5),
        "cash": Decimal("1000.00"),
        "status": Backtest.Status.DONE,
        "metrics": {
            "pnl": "12.50",
            "return": "0.012500",
            "sharpe": "1.2345",
            "max_drawdown": "0.079545",
            "win_rate": "0.5000",
            "trades": 2,
            "brier": "0.0900",
        },
        "equity": equity,
        "reliability": metrics.reliability([(Decimal("0.7"), 1)]),
        "marked": {str(market.id): "12.00"},
        "started_at": start,
        "finished_at": now,
    }
    return BacktestFactory(**{**defaults, **fields})


# --------------------------------------------------------------------------------------------------------------------
# The backtest page


def test_a_done_backtest_shows_its_metrics_equity_with_the_drawdown_prices_and_executions(client, market):
    runner = new_agent("quant")
    mint(new_agent(), new_agent(), market, 4, yes_price="0.55")
    mint(new_agent(), new_agent(), market, 2, yes_price="0.62")
    backtest = done_backtest(runner, market)
    # Two executions ten and eleven minutes after the start: a taker's BUY of 5 YES at 0.40, a maker's SELL of 5 NO.
    BacktestExecutionFactory(backtest=backtest)
    BacktestExecutionFactory(
        backtest=backtest, side="NO", action="SELL", price=Decimal("0.45"), cash=Decimal("2.50"), reason="maker"
    )

    html = get(client, f"/backtests/{backtest.id}/")

    assert "momentum" in html and "v1.2" in html
    assert f'href="/agents/{runner.name}/"' in html
    assert "run by the exchange" in html and 'id="reported-badge"' not in html
    assert '<span class="badge badge-bt-done" id="backtest-status">done</span>' in html
    for key, shown in {
        "pnl": "+12.50",
        "return": "+1.25 %",
        "sharpe": "1.23",
        "max_drawdown": "7.95 %",
        "win_rate": "50.00 %",
        "trades": "2",
        "brier": "0.0900",
    }.items():
        assert re.search(rf'id="metric-{key}">{re.escape(shown)}<', html), key
    assert "87.50 credits on the curve" in html  # the fall from the peak of 1100 to 1012.50
    # The equity curve and its drawdown: a closed area in the SVG, no script, no inline style.
    svg = html[html.index('class="bt-chart equity-chart"') : html.index("</svg>")]
    assert re.search(r'<path class="drawdown" id="drawdown-path" d="M[0-9.,L]+Z"/>', svg)
    assert re.search(r'<path class="equity" id="equity-path" d="M[0-9.,L]+"/>', svg)
    assert (
        "style=" not in html[html.index("<main") :]
        and "<script" not in html[html.index("<main") : html.index("</main>")]
    )
    # The market's YES price over the period: the two trades.
    markets = html[html.index('id="backtest-markets"') : html.index('id="executions"')]
    assert market.question in markets and '<path class="price" d="M' in markets
    assert "2 trades in the period" in markets
    assert re.search(r"P&amp;L <b class=\"up\">\+12\.50</b>", markets)  # -2.00 + 2.50 + 12.00 marked
    # The executions, with their reasons and cash.
    rows = re.findall(r'class="execution-row" data-number="(\d+)"', html)
    assert rows == ["0", "1"]
    assert "maker" in html and "+2.50" in html and "-2.00" in html
    assert f"/api/v1/backtests/{backtest.id}/executions/" in html
    assert 'http-equiv="refresh"' not in html
    # Its stated forecast's diagram.
    assert 'id="backtest-reliability"' in html


def test_a_reported_backtest_is_marked_as_reported_by_the_agent(client, market):
    backtest = done_backtest(new_agent(), market, reported=True, strategy="mybot.strategies:Scalper")

    html = get(client, f"/backtests/{backtest.id}/")

    assert re.search(r'id="reported-badge"[^>]*>reported by the agent, not run by the exchange<', html)
    assert "run by the exchange</span>" not in html.replace("not run by the exchange</span>", "")


@pytest.mark.parametrize(
    ("status", "message"),
    [(Backtest.Status.QUEUED, "waiting for a worker"), (Backtest.Status.RUNNING, "A worker is replaying")],
)
def test_a_queued_or_running_backtest_says_so_and_reloads_itself(client, market, status, message):
    backtest = done_backtest(new_agent(), market, status=status, metrics={}, equity=[], reliability=[])

    html = get(client, f"/backtests/{backtest.id}/")

    assert message in html and 'id="backtest-pending"' in html
    assert market.question in html and "window" in html  # its inputs are there from the start
    assert '<meta http-equiv="refresh" content="5">' in html
    assert 'id="backtest-metrics"' not in html and "<svg" not in html[html.index("<main") :]


def test_a_failed_backtest_shows_its_error_escaped_and_no_results(client, market):
    error = "ValueError: <bad> parameter 'window'"
    backtest = done_backtest(new_agent(), market, status=Backtest.Status.FAILED, error=error, metrics={}, equity=[])

    html = get(client, f"/backtests/{backtest.id}/")

    assert 'id="backtest-failed"' in html
    assert "ValueError: &lt;bad&gt; parameter &#x27;window&#x27;" in html
    assert 'id="backtest-metrics"' not in html and 'http-equiv="refresh"' not in html


def test_unknown_and_malformed_backtest_ids_are_404(client, db):
    get(client, f"/backtests/{uuid.uuid4()}/", status=404)
    get(client, "/backtests/not-a-uuid/", status=404)
    get(client, "/backtests/12/", status=404)


def test_the_page_lists_the_first_500_executions_and_links_the_api_for_all(client, market):
    backtest = done_backtest(new_agent(), market)
    BacktestExecution.objects.bulk_create(
        [
            BacktestExecution(
                backtest=backtest,
                number=i,
                time=backtest.start + timedelta(seconds=i),
                market=market,
                side="YES",
                action="BUY",
                price=Decimal("0.50"),
                size=1,
                reason="taker",
                cash=Decimal("-0.50"),
            )
            for i in range(503)
        ]
    )

    html = get(client, f"/backtests/{backtest.id}/")

    assert html.count('class="execution-row"') == 500
    assert "the first 500 of 503" in html and 'id="executions-capped"' in html
    assert f'href="/api/v1/backtests/{backtest.id}/executions/"' in html


def test_the_equity_chart_shades_a_drawdown_only_when_equity_fell_from_a_peak():
    start = timezone.now()
    rising = [(start + timedelta(minutes=i), Decimal(1000 + 10 * i)) for i in range(5)]
    chart = charts.equity_chart(rising, cash=Decimal("1000.00"), start=start, end=start + timedelta(hours=1))
    assert chart["drawdown_path"] == "" and chart["max_fall"] == 0

    dipping = [*rising, (start + timedelta(minutes=9), Decimal("990"))]
    chart = charts.equity_chart(dipping, cash=Decimal("1000.00"), start=start, end=start + timedelta(hours=1))
    assert chart["max_fall"] == Decimal("50")  # from the peak of 1040 to 990
    assert chart["drawdown_path"].startswith("M") and chart["drawdown_path"].endswith("Z")
    # Both step lines run to the end of the period, and the area joins them there.
    assert chart["equity_path"].split("L")[-1].split(",")[0] == chart["peak_path"].split("L")[-1].split(",")[0]


def test_a_markets_price_line_samples_its_trades_in_the_period_and_keeps_the_last(market):
    start = timezone.now()
    for price in ("0.41", "0.42", "0.43", "0.44", "0.45"):
        mint(new_agent(), new_agent(), market, 1, yes_price=price)
    end = timezone.now()
    mint(new_agent(), new_agent(), market, 1, yes_price="0.90")  # after the period

    points, before, count = market_prices(market, start, end, max_points=3)
    assert count == 5 and before is None
    assert [price for _, price in points] == [Decimal("0.41"), Decimal("0.43"), Decimal("0.45")]  # 1st, 3rd, last

    points, before, count = market_prices(market, end, timezone.now())
    assert count == 1 and before == Decimal("0.45") and [p for _, p in points] == [Decimal("0.90")]


# --------------------------------------------------------------------------------------------------------------------
# The profile


def test_a_profile_lists_the_agents_newest_20_backtests(client, market):
    agent = new_agent("busy-quant")
    first = done_backtest(agent, market, strategy="first-one")
    for i in range(20):
        done_backtest(agent, market, strategy=f"strategy-{i}", metrics={"pnl": "-3.25"} if i == 19 else {})
    reported = done_backtest(agent, market, strategy="uploaded", reported=True, status=Backtest.Status.QUEUED)

    html = get(client, f"/agents/{agent.name}/")

    ids = re.findall(r'class="backtest-row" data-backtest-id="([0-9a-f-]+)"', html)
    assert len(ids) == 20 and ids[0] == str(reported.id) and str(first.id) not in ids
    section = html[html.index('id="agent-backtests"') :]
    assert f'href="/backtests/{reported.id}/"' in section and ">reported</span>" in section
    assert "badge-bt-queued" in section and "-3.25" in section and "latest 20" in section


def test_a_profile_without_backtests_or_scored_forecasts_says_so_without_an_empty_chart(client, market):
    agent = new_agent("newcomer")
    ForecastFactory(agent=agent, market=market, probability="0.4")  # not resolved: not scored

    html = get(client, f"/agents/{agent.name}/")

    assert "No backtests yet." in html
    assert 'id="calibration-empty"' in html and "rel-chart" not in html


def _resolved_market(question: str, outcome: str, forecasts: dict[Agent, list[str]]) -> Market:
    market = MarketFactory(creator=new_agent("asker"), question=question)
    for agent, probabilities in forecasts.items():
        for probability in probabilities:
            ForecastFactory(agent=agent, market=market, probability=probability)
    return market_resolve(market_id=market.id, outcome=outcome, resolver=operator_resolver())


def test_the_profile_diagram_counts_exactly_the_forecasts_of_the_brier_score(client, db):
    agent = new_agent("forecaster")
    # Scored (its last forecast in each market): 0.95 YES, 0.95 NO, 0.72 YES, 0.30 NO (an edge: bin 3), 1 YES.
    _resolved_market("A?", "YES", {agent: ["0.10", "0.95"]})  # the first forecast is replaced
    _resolved_market("B?", "NO", {agent: ["0.95"]})
    _resolved_market("C?", "YES", {agent: ["0.72"]})
    _resolved_market("D?", "NO", {agent: ["0.3"]})
    _resolved_market("E?", "YES", {agent: ["1"]})
    # Not scored: a void market, and a market still open.
    _resolved_market("F?", "VOID", {agent: ["0.5"]})
    ForecastFactory(agent=agent, market=MarketFactory(creator=new_agent("asker"), question="G?"), probability="0.5")
    agent.refresh_from_db()

    bins = agent_reliability(agent)

    assert agent.brier_count == 5 == sum(b["count"] for b in bins)
    assert [b["count"] for b in bins] == [0, 0, 0, 1, 0, 0, 0, 1, 0, 3]
    assert bins[9] == {"lower": "0.90", "upper": "1.00", "count": 3, "mean_forecast": "0.9667", "observed": "0.6667"}
    assert metrics.brier(
        [(Decimal("0.95"), 1), (Decimal("0.95"), 0), (Decimal("0.72"), 1), (Decimal("0.3"), 0), (Decimal("1"), 1)]
    ) == agent.brier_score.quantize(Decimal("0.0001"))

    html = get(client, f"/agents/{agent.name}/")

    section = html[html.index('id="calibration"') : html.index('id="agent-backtests"')]
    assert '<svg class="rel-chart"' in section and '<path class="diagonal"' in section
    counts = re.findall(r'<text class="count"[^>]*data-bin="(\d)">(\d+)</text>', section)
    assert [int(n) for _, n in counts] == [0, 0, 0, 1, 0, 0, 0, 1, 0, 3]
    assert section.count('<circle class="dot"') == 3  # the non-empty bins
    assert "Brier score <b>" in section and "over 5 markets" in section
    rows = re.findall(r'<tr class="rel-bin"><td class="nowrap">([0-9.–]+)</td><td class="num">(\d+)</td>', section)
    assert rows[9] == ("0.90–1.00", "3")


def test_a_profile_with_10000_scored_forecasts_takes_the_same_queries_as_with_10(client, db):
    agent = new_agent("prolific")
    url = f"/agents/{agent.name}/"
    probabilities = itertools.cycle(Decimal(p) / 100 for p in range(0, 101, 7))
    scored: list[tuple[Decimal, int]] = []

    def score(n: int) -> None:
        now = timezone.now()
        markets = Market.objects.bulk_create(
            [
                Market(
                    question=f"Scored {uuid.uuid4().hex[:8]}?",
                    deadline=now,
                    status=Market.Status.RESOLVED,
                    outcome="YES" if i % 3 else "NO",
                    resolved_at=now,
                )
                for i in range(n)
            ],
            batch_size=2000,
        )
        forecasts = [Forecast(agent=agent, market=m, probability=next(probabilities)) for m in markets]
        Forecast.objects.bulk_create(forecasts, batch_size=2000)
        scored.extend((f.probability, 1 if m.outcome == "YES" else 0) for f, m in zip(forecasts, markets, strict=True))
        Agent.objects.filter(id=agent.id).update(brier_count=Forecast.objects.filter(agent=agent).count())

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            get(client, url)
        return len(captured)

    score(10)
    small = queries()
    score(9990)
    large = queries()
    assert small == large

    html = get(client, url)
    counts = re.findall(r'<text class="count"[^>]*>(\d+)</text>', html)
    assert [int(n) for n in counts] == [b["count"] for b in metrics.reliability(scored)]
    assert sum(int(n) for n in counts) == 10_000
    assert agent_reliability(agent) == metrics.reliability(scored)
    # Its render time is measured on analysed tables, as bench/ measures pages, not here: ANALYZE's row counts
    # outlive a test's rollback (pg_class is updated in place) and sent later tests' plans to seconds.


# --------------------------------------------------------------------------------------------------------------------
# In a browser


@pytest.fixture
def live_browser():
    """A daphne server on the test database and headless Chromium with trading/tests/test_browser.py's
    Content-Security-Policy listener: ``(server, driver, policy check)``."""
    from testsupport.e2e import chromium, daphne_servers, require_browser
    from trading.tests.test_browser import CSP_LISTENER_JS, PolicyCheck

    require_browser()
    with daphne_servers(1) as [server], chromium() as driver:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_LISTENER_JS})
        yield server, driver, PolicyCheck(driver)


# The box of an element as the browser laid it out, and the fill its stylesheet gave it.
BOX_JS = """
const el = document.querySelector(arguments[0]);
if (!el) return null;
const box = el.getBoundingClientRect();
return {width: box.width, height: box.height, fill: getComputedStyle(el).fill};
"""


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_charts_are_drawn_styled_and_keep_the_content_security_policy(live_browser):
    server, driver, policy = live_browser
    agent = new_agent("charted")
    market = _resolved_market("Charted?", "YES", {agent: ["0.8"]})
    backtest = done_backtest(agent, market)

    policy.open(f"{server.url}/backtests/{backtest.id}/")
    drawdown = driver.execute_script(BOX_JS, "#drawdown-path")
    equity = driver.execute_script(BOX_JS, "svg.equity-chart")
    problems = policy.problems("/backtests/<id>/")
    policy.open(f"{server.url}/agents/{agent.name}/")
    diagram = driver.execute_script(BOX_JS, "#agent-reliability svg.rel-chart")
    dot = driver.execute_script(BOX_JS, "#agent-reliability circle.dot")
    problems += policy.problems("/agents/<name>/ with a reliability diagram")

    assert equity["width"] > 300 and equity["height"] > 100, equity
    assert drawdown["width"] > 50 and drawdown["height"] > 10, drawdown
    # Styled by site.css (SVG's default fill is black; no inline style is allowed to do it).
    assert drawdown["fill"] not in ("", "none", "rgb(0, 0, 0)"), drawdown
    assert diagram["width"] > 200 and diagram["height"] > 200, diagram
    assert dot is not None and dot["width"] > 0, dot
    assert problems == [], "\n".join(problems)
