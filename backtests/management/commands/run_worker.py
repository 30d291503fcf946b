"""``manage.py run_worker``: the worker that runs queued backtests (DESIGN section 11).

A thin wrapper of django-tasks-db's own worker (``manage.py db_worker``; every option of it works here: ``--batch``,
``--max-tasks``, ``--interval``, ``--queue-name``, ``--no-reload``...). Before it starts it queues again the backtests
a dead worker left ``running`` (or ``queued`` without a task) for longer than ``MOLTSTREET_BACKTEST_STALE_SECONDS``
(:func:`backtests.services.backtest_requeue_stale`): a backtest is written in one transaction, so running it again is
always clean. Uploads in parts left ``uploading`` that long are marked ``failed`` ("upload not finished",
:func:`backtests.services.backtest_fail_stale_uploads`): nothing is deleted without a trace.

``run_worker --check`` is the health check (docker-compose.yml): exit 0 while no backtest has waited ``queued`` or
stayed ``running`` longer than that, 1 otherwise (the workers are stopped, stuck or too few), or if the database is
unreachable.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import CommandError
from django.db.models import Q
from django.utils import timezone
from django_tasks_db.management.commands import db_worker

from backtests.models import Backtest
from backtests.services import backtest_fail_stale_uploads, backtest_requeue_stale


class Command(db_worker.Command):
    help = "Run queued backtests (django-tasks-db's db_worker), after queueing again those a dead worker left behind."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--check",
            action="store_true",
            help="Health check: fail if a backtest has been queued or running longer than "
            "MOLTSTREET_BACKTEST_STALE_SECONDS; run nothing.",
        )

    def handle(self, *args, **options) -> None:
        if options.pop("check"):
            self.check_health()
            return
        abandoned = backtest_fail_stale_uploads()
        if abandoned:
            self.stdout.write(f"Marked failed {len(abandoned)} unfinished upload(s): {', '.join(abandoned)}")
        requeued = backtest_requeue_stale()
        if requeued:
            self.stdout.write(
                f"Queued again {len(requeued)} backtest(s) left by a stopped worker: {', '.join(requeued)}"
            )
        super().handle(*args, **options)

    def check_health(self) -> None:
        cutoff = timezone.now() - timedelta(seconds=settings.MOLTSTREET["BACKTEST_STALE_SECONDS"])
        late = Backtest.objects.filter(
            Q(status=Backtest.Status.QUEUED, created_at__lt=cutoff)
            | Q(status=Backtest.Status.RUNNING, started_at__lt=cutoff)
        ).count()
        if late:
            raise CommandError(
                f"{late} backtest(s) queued or running for longer than the stale age: no worker keeps up."
            )
        self.stdout.write("ok")
