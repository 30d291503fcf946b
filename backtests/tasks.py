"""The backtests' background task (django-tasks): queued by ``POST /api/v1/backtests/``, run by ``manage.py
run_worker`` (the database backend's worker), or at once with the immediate backend (the tests)."""

from __future__ import annotations

from django_tasks import task

from backtests.services import backtest_run
from moltstreet.logs import log_context


@task()
def run_backtest_task(backtest_id: str) -> str | None:
    """Run one backtest (:func:`backtests.services.backtest_run`): its outcome is on the backtest (``done`` or
    ``failed`` with ``error``), so the task itself succeeds either way. Returns the backtest's final status, or
    ``None`` when there was nothing to run. Safe to run again for the same backtest (a worker that died mid-run)."""
    with log_context(backtest_id=backtest_id):
        backtest = backtest_run(backtest_id=backtest_id)
    return backtest.status if backtest is not None else None
