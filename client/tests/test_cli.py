"""``moltstreet-backtest`` and ``moltstreet-run`` end to end, as installed console scripts, against a live server: a
market with trades made here, a strategy from the user's own directory, its metrics, executions and upload."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest
from moltstreet_client import MarketHistory, run_backtest
from moltstreet_client.metrics import pnl_identity_gap

pytestmark = pytest.mark.multiprocess

D = Decimal
BIN = Path(sys.executable).parent
STRATEGY = textwrap.dedent(
    '''
    from decimal import Decimal

    from moltstreet_client.strategy import Param, Strategy


    class TakeTheAsk(Strategy):
        """Buys ``size`` YES at the best ask after each trade, up to ``limit`` contracts; bids 0.01 below the last
        trade for the same size; states the last price as its forecast."""

        params = {"size": Param(1, "contracts", "Contracts per order.", 1), "limit": Param(3, "contracts", "Most held.")}

        def on_trade(self, ctx, trade):
            ctx.forecast(trade.price)
            if ctx.best_ask is not None and ctx.yes_shares + self.size <= self.limit:
                ctx.buy("YES", ctx.best_ask, self.size, time_in_force="IOC")


    class Quoter(Strategy):
        """Rests one YES bid at ``price`` and stays."""

        params = {"price": Param(Decimal("0.20"), "credits", "The bid.")}

        def on_start(self, ctx):
            ctx.buy("YES", self.price, 2)
    '''
)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "my_bots.py").write_text(STRATEGY)
    return tmp_path


def cli(name: str, *args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(  # noqa: S603  (the installed console scripts, with the test's own arguments)
        [str(BIN / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_PROXY": "*", **(env or {})},
    )
    if check:
        assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def traded_market(make_client, market_of):
    """A market with a resting ask and bid and four trades at 0.40-0.55 between two agents."""
    alice, bob = make_client(), make_client()
    market = market_of(alice)
    alice.place_order(market.id, "NO", "BUY", "0.40", 20)  # a YES ask at 0.60 for the strategy to take
    alice.place_order(market.id, "YES", "BUY", "0.30", 20)
    for yes, no in (("0.40", "0.60"), ("0.45", "0.55"), ("0.55", "0.45"), ("0.50", "0.50")):
        alice.place_order(market.id, "YES", "BUY", yes, 2)
        bob.place_order(market.id, "NO", "BUY", no, 2)
    return alice, bob, market


def test_moltstreet_backtest_prints_metrics_and_writes_executions(make_client, market_of, base_url, workdir):
    _alice, _bob, market = traded_market(make_client, market_of)
    out = cli(
        "moltstreet-backtest",
        "my_bots:TakeTheAsk",
        "--url",
        base_url,
        "--market",
        market.id,
        "--cash",
        "500",
        "--param",
        "size=2",
        "--param",
        "limit=4",
        "--executions",
        "out.csv",
        cwd=workdir,
    )
    text = out.stdout
    for label in ("P&L", "Return", "Sharpe", "Max drawdown", "Win rate", "Trades", "Brier"):
        assert label in text, text
    assert "starting with 500.00 credits" in text and "2 executions written to out.csv" in text, text

    # The same backtest in-process gives the same figures: the CLI fetched the whole history through the API.
    from moltstreet_client import Client
    from moltstreet_client.strategy import load_strategy

    sys.path.insert(0, str(workdir))
    try:
        cls = load_strategy("my_bots:TakeTheAsk")
    finally:
        sys.path.remove(str(workdir))
    with Client(base_url) as client:
        history = MarketHistory.fetch(client, market.id)
    result = run_backtest(cls(size=2, limit=4), history, cash="500")
    assert pnl_identity_gap(result) == 0
    assert f"{result.metrics['pnl']:.2f} credits" in text
    assert f"Trades        {result.metrics['trades']}" in text

    with (workdir / "out.csv").open() as rows:
        executions = list(csv.DictReader(rows))
    assert [(e["side"], e["action"], e["price"], e["size"], e["reason"]) for e in executions] == [
        ("YES", "BUY", "0.60", "2", "taker"),
        ("YES", "BUY", "0.60", "2", "taker"),
    ]
    assert executions == [{k: str(v) for k, v in e.as_dict().items()} for e in result.executions]

    as_json = cli(
        "moltstreet-backtest",
        "my_bots:TakeTheAsk",
        "--url",
        base_url,
        "--market",
        market.id,
        "--executions",
        "out.json",
        "--json",
        cwd=workdir,
    )
    data = json.loads(as_json.stdout)
    assert data["markets"] == [market.id] and data["metrics"]["trades"] == 3  # limit 3, size 1
    assert len(json.loads((workdir / "out.json").read_text())) == 3


def test_moltstreet_backtest_uploads_the_result_as_reported(make_client, market_of, base_url, workdir):
    alice, _bob, market = traded_market(make_client, market_of)
    out = cli(
        "moltstreet-backtest",
        "my_bots:TakeTheAsk",
        "--url",
        base_url,
        "--market",
        market.id,
        "--upload",
        "--json",
        cwd=workdir,
        env={"MOLTSTREET_API_KEY": alice.api_key},
    )
    data = json.loads(out.stdout)
    stored = alice.backtest(data["uploaded"]["id"])
    assert stored["reported"] is True and stored["status"] == "done"
    assert stored["strategy"] == "TakeTheAsk" and stored["markets"] == [market.id]
    assert D(stored["metrics"]["pnl"]) == D(data["metrics"]["pnl"])
    executions = list(alice.backtest_executions(stored["id"]))
    assert [(e["side"], e["price"], e["size"], e["reason"]) for e in executions] == [("YES", "0.60", 1, "taker")] * 3
    assert stored["id"] in {b["id"] for b in alice.backtests()}
    assert {s["name"] for s in alice.backtest_strategies()} >= {"market_maker", "momentum", "reference_leaner"}


def test_moltstreet_backtest_explains_what_is_wrong(make_client, market_of, base_url, workdir):
    _alice, _bob, market = traded_market(make_client, market_of)
    args = ["--url", base_url, "--market", market.id]
    cases = [
        (["my_bots:Nope", *args], "Cannot load strategy"),
        (["my_bots:TakeTheAsk", *args, "--param", "size=0"], "size must be"),
        (["my_bots:TakeTheAsk", *args, "--param", "colour=red"], "Unknown parameter 'colour'"),
        (["my_bots:TakeTheAsk", *args, "--cash", "-5"], "cash must be a positive"),
        (["my_bots:TakeTheAsk", *args, "--upload"], "--upload needs the agent's API key"),
        (["my_bots:TakeTheAsk", *args, "--executions", "out.txt"], ".csv or .json"),
        (["my_bots:TakeTheAsk", "--url", base_url, "--market", "00000000-0000-0000-0000-000000000000"], "not_found"),
    ]
    for argv, message in cases:
        done = cli("moltstreet-backtest", *argv, cwd=workdir, check=False, env={"MOLTSTREET_API_KEY": ""})
        assert done.returncode == 1 and message in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr
    usage = cli("moltstreet-backtest", "my_bots:TakeTheAsk", cwd=workdir, check=False)
    assert usage.returncode == 2 and "--market" in usage.stderr
    assert "--upload" in cli("moltstreet-backtest", "--help", cwd=workdir).stdout
    assert "--keep-orders" in cli("moltstreet-run", "--help", cwd=workdir).stdout
    run_args = ["my_bots:TakeTheAsk", *args, "--key", "k", "--heartbeat", "3"]
    refused = cli("moltstreet-run", *run_args, cwd=workdir, check=False)
    assert refused.returncode == 1 and "--heartbeat must be from 5 to 300 seconds" in refused.stderr, refused.stderr


def test_moltstreet_run_trades_live_until_interrupted(make_client, market_of, base_url, workdir):
    from agents.models import Agent

    trader = make_client()
    market = market_of(make_client())
    agent = Agent.objects.get(name=trader.me().name)
    process = subprocess.Popen(  # noqa: S603  (the installed console script)
        [str(BIN / "moltstreet-run"), "my_bots:Quoter", "--url", base_url, "--market", market.id, "--heartbeat", "30"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "*", "MOLTSTREET_API_KEY": trader.api_key},
    )
    try:
        deadline = time.monotonic() + 30
        while not list(trader.orders(market=market.id, status="resting")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        [order] = trader.orders(market=market.id, status="resting")
        assert (order.side, order.action, order.price, order.size) == ("YES", "BUY", D("0.20"), 2)
        agent.refresh_from_db()
        assert agent.heartbeat_timeout == 30 and agent.heartbeat_deadline is not None, "--heartbeat armed the switch"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, (stdout, stderr)
    assert "Running Quoter as" in stdout and "Stopped: 1 orders" in stdout, stdout
    assert list(trader.orders(market=market.id, status="resting")) == [], "withdrawn on Ctrl-C"
    agent.refresh_from_db()
    assert (agent.heartbeat_timeout, agent.heartbeat_deadline) == (None, None), "then the switch disarmed"
