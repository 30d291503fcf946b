"""``python manage.py bootstrap --data ../shared/data``: what ``make run`` does after ``migrate``."""

import os
import secrets
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from markets.importers import import_forecastbench
from markets.models import Market
from moltstreet.progress import Progress
from trading import replay
from trading.audit import run_audit
from trading.lifecycle import market_close
from trading.models import Trade
from trading.resolution import market_resolve

FORECASTBENCH_MARK = "ForecastBench"
REPLAY_MARK = "ylcoder/random-walk"
# The operator password earlier versions set by default: an account still using it gets a new password.
PUBLISHED_PASSWORD = "moltstreet"  # noqa: S105 (the published one, to recognise and replace)


class Command(BaseCommand):
    help = (
        "Prepare the database for a first run. Always: make sure the operator account exists (Django superuser "
        "MOLTSTREET_ADMIN_USER, default 'operator') with a strong password: MOLTSTREET_ADMIN_PASSWORD (checked by "
        "the password validators; required when DEBUG is off), or with --random-password (or DEBUG on) a random one, "
        "printed once. An account still on the password earlier versions published gets a new one. "
        "On a database without markets: import the ForecastBench prediction-market questions under <data>/forecastbench "
        "so that a newcomer sees both real history and real open markets: questions whose real outcome is known are "
        "resolved to it; questions whose deadline has passed without a known outcome are reopened for trading for "
        "--reopen-days days (marked historical); questions with a future deadline stay open until it. Then replay the "
        "oldest --replay-limit real Polymarket trades under <data>/polymarket into four open markets (the rest can "
        "follow with `manage.py replay_trades <csv>`, which skips the rows already replayed). "
        "Whatever is already done is skipped; an interrupted bootstrap resumes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--random-password",
            action="store_true",
            help="Without MOLTSTREET_ADMIN_PASSWORD, give a new operator account a random password and print it once "
            "(`make run`); otherwise that variable is required when DEBUG is off.",
        )
        parser.add_argument("--data", default="../shared/data", help="Directory with forecastbench/ and polymarket/.")
        parser.add_argument("--reopen-days", type=int, default=30, help="Trading days of reopened past questions.")
        parser.add_argument("--market-days", type=int, default=30, help="Trading days of the replayed markets.")
        parser.add_argument(
            "--scale", type=replay.parse_scale, default=replay.DEFAULT_SCALE, help="Contracts per share."
        )
        parser.add_argument(
            "--replay-limit",
            type=int,
            default=1000,
            help="Replay the N oldest trades (default %(default)s: about a minute on SQLite).",
        )

    def handle(self, *args, **options) -> None:
        started = time.monotonic()
        self._operator(random_password=options["random_password"])
        data = Path(options["data"])
        markets = Market.objects.count()
        imported = Market.objects.filter(attribution__contains=FORECASTBENCH_MARK).exists()
        replayed = Trade.objects.filter(market__attribution__contains=REPLAY_MARK).exists()
        if markets and not (imported and not replayed):
            self.stdout.write(
                f"The database already has {markets} markets: nothing to import "
                "(import_forecastbench and replay_trades add real data by hand)."
            )
            return
        if not data.is_dir():
            self.stderr.write(f"No data directory {data}: starting without real markets (see --data).")
            return
        self._forecastbench(data / "forecastbench", options["reopen_days"])
        self._replay(data / "polymarket", options)
        audit = run_audit(progress=self.stderr.write)
        if audit.ok:
            self.stdout.write(self.style.SUCCESS("Audit: all invariants hold."))
        else:
            # Reported loudly but not fatal: the server still starts and `make audit` shows the details.
            self.stderr.write("Audit found breaches:\n" + "\n".join(audit.breaches))
        self.stdout.write(
            f"Bootstrap done in {time.monotonic() - started:.0f} s: {Market.objects.count():,} markets, "
            f"{Trade.objects.count():,} trades, audit {'clean' if audit.ok else f'{len(audit.breaches)} breach(es)'}."
        )

    def _operator(self, *, random_password: bool) -> None:
        """Create the operator account, or give a new password to one still on the published default.

        The password is ``MOLTSTREET_ADMIN_PASSWORD`` when set (it must pass ``AUTH_PASSWORD_VALIDATORS``:
        ``create_superuser`` itself checks nothing), else a random one printed once, if ``--random-password`` or
        DEBUG allows it. Raises :class:`CommandError` when neither is given with DEBUG off, or for a weak password.
        """
        username = os.environ.get("MOLTSTREET_ADMIN_USER") or "operator"
        users = get_user_model()
        user = users.objects.filter(username=username).first()
        if user is not None and not user.check_password(PUBLISHED_PASSWORD):
            return
        given = os.environ.get("MOLTSTREET_ADMIN_PASSWORD") or ""
        if given:
            if given == PUBLISHED_PASSWORD:
                raise CommandError(
                    "MOLTSTREET_ADMIN_PASSWORD is the password earlier versions published: choose another."
                )
            try:
                validate_password(given, user=user or users(username=username))
            except ValidationError as exc:
                raise CommandError("MOLTSTREET_ADMIN_PASSWORD is too weak: " + " ".join(exc.messages)) from exc
            password = given
        elif random_password or settings.DEBUG:
            password = secrets.token_urlsafe(18)
        else:
            raise CommandError(
                f"No password for the operator account {username!r}: set MOLTSTREET_ADMIN_PASSWORD (DEBUG is off), "
                "or pass --random-password to have one generated and printed once."
            )
        if user is None:
            users.objects.create_superuser(username=username, email="", password=password)
            done = "Created the operator account"
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
            done = "The operator account had the published default password; it has a new one"
        shown = "the password in MOLTSTREET_ADMIN_PASSWORD" if given else f"password {password} (shown only this once)"
        self.stdout.write(
            self.style.SUCCESS(f"{done}: log in at http://127.0.0.1:8000/admin/ as {username!r} with {shown}.")
        )
        if not given:
            self.stdout.write(f"  Forgot it? python manage.py changepassword {username}")

    def _forecastbench(self, folder: Path, reopen_days: int) -> None:
        questions = sorted(folder.glob("*.questions.json"))
        resolutions = sorted(folder.glob("*.resolutions.json"))
        if not questions or not resolutions:
            self.stderr.write(f"No ForecastBench questions and resolutions in {folder}: skipped.")
            return
        self.stdout.write(f"Importing ForecastBench questions from {questions[-1].name} …")
        tracker = Progress(self.stderr.write, unit="questions", prefix="  ")
        try:
            report = import_forecastbench(
                questions_path=questions[-1],
                resolutions_path=resolutions[-1],
                close_market=market_close,
                resolve_market=market_resolve,
                resolve=True,
                reopen_days=reopen_days,
                counted=tracker.count,
            )
        except ValueError as exc:
            self.stderr.write(f"ForecastBench import failed: {exc}")
            return
        for problem in report.problems:
            self.stderr.write(f"  skipped {problem}")
        self.stdout.write(report.summary())

    def _replay(self, folder: Path, options: dict) -> None:
        files = sorted(folder.glob("*.csv"))
        if not files:
            self.stderr.write(f"No trades CSV in {folder}: replay skipped.")
            return
        try:
            rows, malformed = replay.read_trades(files[0])
        except ValueError as exc:
            self.stderr.write(f"Replay skipped: {exc}")
            return
        limit = max(options["replay_limit"], 0)
        self.stdout.write(
            f"Replaying the {min(limit, len(rows))} oldest of {len(rows)} real trades in {files[0].name} …"
        )
        market_ids, _ = replay.ensure_markets_local(rows, scale=options["scale"], days=options["market_days"])
        report = replay.replay(
            rows,
            replay.LocalExchange(),
            market_ids=market_ids,
            scale=options["scale"],
            limit=limit,
            progress=self.stderr.write,
        )
        report.malformed = malformed
        self.stdout.write(report.render(limit=5))
