"""The worker: backtests queued in the database (django-tasks-db) and run by ``manage.py run_worker``; a run is
written whole or not at all, and a backtest a dead worker left ``running`` runs again cleanly."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models.query import QuerySet
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from moltstreet_client.backtest import run_backtest
from moltstreet_client.strategies import BUILTINS

from backtests import selectors, services
from backtests.models import Backtest, BacktestExecution
from backtests.tests.conftest import DATABASE
from backtests.tests.factories import BacktestExecutionFactory
from testsupport.api import API, api_client, unchanged

URL = f"{API}/backtests/"


@pytest.fixture
def database_tasks(settings):
    """Tasks queued in the database, as in production; the test runs the worker itself."""
    settings.TASKS = DATABASE


def run_worker(**options) -> str:
    """One pass of ``manage.py run_worker``: every task ready, then exit."""
    out = io.StringIO()
    call_command(
        "run_worker", batch=True, reload=False, startup_delay=False, interval=0, verbosity=0, stdout=out, **options
    )
    return out.getvalue()


def queue(agent, market, **extra) -> Backtest:
    response = api_client(agent).post(URL, {"strategy": "market_maker", "markets": [str(market.id)], **extra})
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    return Backtest.objects.get(id=response.json()["id"])


def expected_executions(market) -> list[tuple]:
    result = run_backtest(BUILTINS["market_maker"](), [selectors.market_history(market)])
    return [(e.time, str(e.market), e.side, e.action, e.price, e.size, e.reason, e.cash) for e in result.executions]


def stored_executions(backtest) -> list[tuple]:
    rows = BacktestExecution.objects.filter(backtest=backtest).order_by("number")
    return [(r.time, str(r.market_id), r.side, r.action, r.price, r.size, r.reason, r.cash) for r in rows]


@pytest.mark.django_db(transaction=True)
def test_a_queued_backtest_is_run_by_one_worker_pass(
    traded_market, make_agent, database_tasks, signals_restored, audit_clean
):
    agent = make_agent()
    with unchanged(audit_clean):
        backtest = queue(agent, traded_market)
        [task] = DBTaskResult.objects.all()
        assert task.status == "READY" and task.args_kwargs["kwargs"] == {"backtest_id": str(backtest.id)}

        run_worker()

    backtest.refresh_from_db()
    assert backtest.status == Backtest.Status.DONE, backtest.error
    assert backtest.metrics["trades"] > 0
    assert stored_executions(backtest) == expected_executions(traded_market)
    task.refresh_from_db()
    assert task.status == "SUCCESSFUL" and task.return_value == "done"
    assert api_client().get(f"{URL}{backtest.id}/").json()["status"] == "done"


class WorkerKilled(BaseException):
    """Stands for the worker process dying (SIGKILL, out of memory): nothing of the run's code catches it."""


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_writing_leaves_nothing_half_written_and_the_rerun_is_clean(
    traded_market, make_agent, database_tasks, signals_restored, monkeypatch, settings
):
    backtest = queue(make_agent(), traded_market)
    real_bulk_create = QuerySet.bulk_create

    def dies_after_writing(self, objs, *args, **kwargs):
        real_bulk_create(self, objs, *args, **kwargs)
        if self.model is BacktestExecution:
            raise WorkerKilled()

    monkeypatch.setattr(QuerySet, "bulk_create", dies_after_writing)
    run_worker()
    monkeypatch.undo()

    backtest.refresh_from_db()
    assert backtest.status == Backtest.Status.RUNNING and backtest.started_at is not None
    assert not BacktestExecution.objects.filter(backtest=backtest).exists(), "the write was rolled back whole"
    assert backtest.metrics == {}
    # As if an older attempt had got its executions in: the re-run must replace them, not add to them.
    BacktestExecutionFactory(
        backtest=backtest, number=0, market=traded_market, price=Decimal("0.99"), size=999, cash=Decimal("-989.01")
    )

    # Not stale yet: a worker that starts leaves it to the one presumed still running it.
    run_worker()
    backtest.refresh_from_db()
    assert backtest.status == Backtest.Status.RUNNING

    settings.MOLTSTREET = {**settings.MOLTSTREET, "BACKTEST_STALE_SECONDS": 0}
    out = run_worker()

    assert f"Queued again 1 backtest(s) left by a stopped worker: {backtest.id}" in out
    backtest.refresh_from_db()
    assert backtest.status == Backtest.Status.DONE, backtest.error
    assert stored_executions(backtest) == expected_executions(traded_market)
    assert not BacktestExecution.objects.filter(backtest=backtest, size=999).exists()


@pytest.mark.django_db
def test_when_two_attempts_overlap_only_the_latest_writes(traded_market, make_agent, database_tasks, monkeypatch):
    backtest = queue(make_agent(), traded_market)
    real_run = services.run_backtest
    calls = []

    def overtaken(*args, **kwargs):
        result = real_run(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # while the first attempt computes, a second one claims the backtest and finishes
            second = services.backtest_run(backtest_id=backtest.id)
            assert second.status == Backtest.Status.DONE
        return result

    monkeypatch.setattr(services, "run_backtest", overtaken)
    first = services.backtest_run(backtest_id=backtest.id)

    assert len(calls) == 2
    assert first.status == Backtest.Status.DONE
    assert stored_executions(backtest) == expected_executions(traded_market), "written once, not twice"


@pytest.mark.django_db
def test_a_finished_or_reported_backtest_is_not_run_again(traded_market, make_agent, monkeypatch):
    response = api_client(make_agent()).post(URL, {"strategy": "market_maker", "markets": [str(traded_market.id)]})
    backtest = Backtest.objects.get(id=response.json()["id"])  # run at once: the immediate backend
    assert backtest.status == Backtest.Status.DONE
    finished_at = backtest.finished_at

    assert services.backtest_run(backtest_id=backtest.id) is None
    Backtest.objects.filter(id=backtest.id).update(status=Backtest.Status.QUEUED, reported=True)
    assert services.backtest_run(backtest_id=backtest.id) is None
    backtest.refresh_from_db()
    assert backtest.finished_at == finished_at


@pytest.mark.django_db
def test_a_queued_backtest_with_its_task_waiting_is_not_queued_twice(traded_market, make_agent, database_tasks):
    backtest = queue(make_agent(), traded_market)
    Backtest.objects.filter(id=backtest.id).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.backtest_requeue_stale(older_than=timedelta(minutes=1)) == []
    assert DBTaskResult.objects.count() == 1

    DBTaskResult.objects.all().delete()  # the task was lost
    assert services.backtest_requeue_stale(older_than=timedelta(minutes=1)) == [str(backtest.id)]
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db
def test_the_health_check_fails_while_a_backtest_waits_too_long(traded_market, make_agent, database_tasks, settings):
    out = io.StringIO()
    call_command("run_worker", check=True, stdout=out)
    assert out.getvalue().strip() == "ok"

    backtest = queue(make_agent(), traded_market)
    call_command("run_worker", check=True, stdout=io.StringIO())  # just queued: fine
    Backtest.objects.filter(id=backtest.id).update(created_at=timezone.now() - timedelta(hours=1))
    with pytest.raises(CommandError, match="1 backtest"):
        call_command("run_worker", check=True, stdout=io.StringIO())


def test_the_scheduler_queues_again_a_backtest_a_dead_worker_left_running(
    traded_market, make_agent, database_tasks, settings
):
    """Workers sweep when they start; the scheduler's pass sweeps while they run, so a worker killed mid-run is not
    waited on until the next restart."""
    from trading.management.commands.run_scheduler import _sweep_backtests, run_pass

    assert "_sweep_backtests" in run_pass.__code__.co_names  # one of the pass's jobs (run_pass recycles connections)

    backtest = queue(make_agent(), traded_market)
    DBTaskResult.objects.all().delete()  # its task was taken by a worker that then died
    Backtest.objects.filter(id=backtest.id).update(
        status=Backtest.Status.RUNNING, started_at=timezone.now() - timedelta(hours=1)
    )
    settings.MOLTSTREET = {**settings.MOLTSTREET, "BACKTEST_STALE_SECONDS": 60}
    _sweep_backtests()
    [task] = DBTaskResult.objects.filter(args_kwargs__kwargs__backtest_id=str(backtest.id))
    assert task.status == "READY"  # a worker runs it as any queued backtest (the tests above)
