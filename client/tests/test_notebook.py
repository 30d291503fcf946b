"""``examples/strategy_development.ipynb`` runs, top to bottom, against a live server: it fetches a market's recorded
history with the SDK, backtests the strategy it defines, prints the metrics with a P&L identity of 0.00 and draws
the equity curve and the reliability diagram (nbclient, an ipykernel kernel, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.multiprocess

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "strategy_development.ipynb"
# The YES prices of the market's trades, in cents: a walk that jumps 2-5 cents, so that prints go through quotes
# made a couple of cents from the recent mean.
WALK = [50, 52, 49, 51, 48, 53, 50, 55, 51, 47, 50, 46, 49, 52, 48, 54, 50, 56, 52, 49, 45, 48, 51, 47, 53, 50]


def test_the_committed_notebook_carries_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.fixture
def traded_market(make_client, market_of):
    """A market with a trade at each price of ``WALK`` (a maker rests, a taker crosses it: the side alternates),
    then closed and resolved YES by an operator; its id."""
    from testsupport.api import operator_resolver
    from trading.lifecycle import market_close
    from trading.resolution import market_resolve

    maker, taker = make_client(), make_client()
    market = market_of(maker, question="Will the notebook's market resolve YES?")
    for i, cents in enumerate(WALK):
        yes, no = f"0.{cents:02d}", f"0.{100 - cents:02d}"
        if i % 2:  # a YES buyer lifts an offer: the maker bids NO at 1 - price
            maker.place_order(market.id, "NO", "BUY", no, 3)
            result = taker.place_order(market.id, "YES", "BUY", yes, 3, time_in_force="IOC")
        else:  # a NO buyer hits a YES bid
            maker.place_order(market.id, "YES", "BUY", yes, 3)
            result = taker.place_order(market.id, "NO", "BUY", no, 3, time_in_force="IOC")
        assert result.order.filled == 3
    market_close(market_id=market.id)
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    return str(market.id)


def test_the_notebook_backtests_a_strategy_on_a_live_servers_history_and_draws_its_charts(
    base_url, traded_market, monkeypatch, tmp_path
):
    monkeypatch.setenv("MOLTSTREET_URL", base_url)
    monkeypatch.setenv("MOLTSTREET_MARKET", traded_market)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert f"server: {base_url}" in text
    assert f"{len(WALK)} trades" in text
    trades = next(line for line in text.splitlines() if line.strip().startswith("trades:"))
    assert int(trades.split(":")[1]) > 0
    assert "P&L identity (cash flows + payouts + marked - pnl): 0.00" in text
    brier = next(line for line in text.splitlines() if line.strip().startswith("brier:"))
    assert brier.split(":")[1].strip() != "None"
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == 2  # the equity curve and the reliability diagram
