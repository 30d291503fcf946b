"""The spectator page of a backtest (DESIGN section 11): ``/backtests/<id>/``.

Server-rendered like the other pages (trading/views.py), with its charts drawn as inline SVG from
``backtests.charts``: no script, no CDN, nothing the Content-Security-Policy refuses.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_safe

from backtests import charts, selectors
from backtests.models import Backtest

# Seconds between reloads of a queued, running or uploading backtest's page (a <meta> refresh: no script needed).
REFRESH_SECONDS = 5
HUNDRED = Decimal(100)


def _signed(value: Decimal) -> str:
    return f"{value:+,.2f}"


def _percent(fraction: Decimal, signed: bool = False) -> str:
    return f"{fraction * HUNDRED:{'+' if signed else ''},.2f} %"


def _tone(value: Decimal | None) -> str:
    if value is None or value == 0:
        return ""
    return "up" if value > 0 else "down"


def metric_cards(backtest: Backtest, max_fall: Decimal | None) -> list[dict[str, Any]]:
    """The seven metrics (``moltstreet_client.metrics``) as the page shows them: label, value, a hint and a tone.
    Money in credits, ``return``, ``max_drawdown`` and ``win_rate`` (fractions) in percent; an undefined metric is
    a dash with the reason."""
    m = backtest.metrics
    pnl = charts.decimal_or_none(m.get("pnl"))
    ret = charts.decimal_or_none(m.get("return"))
    sharpe = charts.decimal_or_none(m.get("sharpe"))
    drawdown = charts.decimal_or_none(m.get("max_drawdown"))
    win_rate = charts.decimal_or_none(m.get("win_rate"))
    brier = charts.decimal_or_none(m.get("brier"))
    trades = m.get("trades")
    fall = f"; {max_fall:,.2f} credits on the curve" if max_fall else ""
    return [
        {
            "key": "pnl",
            "label": "P&L",
            "value": _signed(pnl) if pnl is not None else "—",
            "tone": _tone(pnl),
            "hint": "credits: trades, payouts and what is left at its mark",
        },
        {
            "key": "return",
            "label": "Return",
            "value": _percent(ret, signed=True) if ret is not None else "—",
            "tone": _tone(ret),
            "hint": f"on {backtest.cash:,.2f} credits",
        },
        {
            "key": "sharpe",
            "label": "Sharpe",
            "value": f"{sharpe:.2f}" if sharpe is not None else "—",
            "tone": "",
            "hint": "daily returns, annualised" if sharpe is not None else "needs 2 days of varying returns",
        },
        {
            "key": "max_drawdown",
            "label": "Max drawdown",
            "value": _percent(drawdown) if drawdown is not None else "—",
            "tone": "down" if drawdown else "",
            "hint": f"largest fall from a peak{fall}",
        },
        {
            "key": "win_rate",
            "label": "Win rate",
            "value": _percent(win_rate) if win_rate is not None else "—",
            "tone": "",
            "hint": "markets traded at a profit" if win_rate is not None else "no market traded",
        },
        {
            "key": "trades",
            "label": "Trades",
            "value": f"{int(trades):,}" if trades is not None else "—",
            "tone": "",
            "hint": "simulated fills (netting not counted)",
        },
        {
            "key": "brier",
            "label": "Brier score",
            "value": f"{brier:.4f}" if brier is not None else "—",
            "tone": "",
            "hint": "of its stated forecasts, lower is better" if brier is not None else "no scored forecast",
        },
    ]


@require_safe
def backtest_detail(request: HttpRequest, backtest_id: uuid.UUID) -> HttpResponse:
    """``/backtests/<id>/``: who ran which strategy with which parameters, its status (reloading while queued,
    running or uploading: an upload in progress shows how many executions arrived, never its metrics, which are
    not checked until the last page), and once done its metrics, equity curve with the drawdown shaded, each market's YES price over the
    period, the reliability of its forecasts and its executions (the first 500; the API has all)."""
    backtest = get_object_or_404(Backtest.objects.select_related("agent"), id=backtest_id)
    done = backtest.status == Backtest.Status.DONE
    equity = charts.parse_equity(backtest.equity) if done else []
    start, end = charts.backtest_period(backtest, equity)
    chart = charts.equity_chart(equity, cash=backtest.cash, start=start, end=end) if equity else None
    markets = selectors.backtest_markets(backtest, start, end, prices=done)
    for row in markets:
        row.chart = charts.price_chart(row.prices, before=row.before, start=start, end=end) if done else None
    executions = (
        list(selectors.backtest_executions(backtest).select_related("market")[: selectors.EXECUTIONS_SHOWN])
        if done
        else []
    )
    total_executions = sum(row.executions for row in markets)
    return render(
        request,
        "backtests/detail.html",
        {
            "backtest": backtest,
            "done": done,
            "pending": backtest.status in (Backtest.Status.QUEUED, Backtest.Status.RUNNING, Backtest.Status.UPLOADING),
            "refresh_seconds": REFRESH_SECONDS,
            "params": [(key, json.dumps(value)) for key, value in sorted(backtest.params.items())],
            "start": start,
            "end": end,
            "metrics": metric_cards(backtest, chart["max_fall"] if chart else None) if done else [],
            "chart": chart,
            "markets": markets,
            "reliability": charts.reliability_chart(backtest.reliability) if backtest.reliability else None,
            "reliability_bins": backtest.reliability,
            "executions": executions,
            "total_executions": total_executions,
            "executions_api": f"/api/v1/backtests/{backtest.id}/executions/",
        },
    )
