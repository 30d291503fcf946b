"""``python manage.py import_forecastbench <questions.json> <resolutions.json> [--resolve] [--reopen-days N]``.

It lives in ``trading`` because closing and resolving imported markets are trading services, and imports only go
agents <- markets <- trading.
"""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from markets.importers import import_forecastbench
from moltstreet.progress import Progress
from trading.lifecycle import market_close
from trading.resolution import market_resolve


class Command(BaseCommand):
    help = (
        "Import the prediction-market questions (Manifold, Metaculus, INFER, Polymarket) of a ForecastBench question "
        "set as markets, with source, URL, reference price and CC BY-SA 4.0 attribution; data-series questions are "
        "skipped. Without flags each market gets its real deadline and is closed when that has passed. --resolve: "
        "questions whose real outcome the resolution file knows are resolved to it. --reopen-days N: questions whose "
        "deadline has passed (and that --resolve does not resolve) are opened for trading for N days instead, marked "
        "historical. Re-running creates nothing twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("questions", help="ForecastBench question set, e.g. 2024-07-21-human.questions.json")
        parser.add_argument("resolutions", help="ForecastBench resolution set, e.g. 2024-07-21.resolutions.json")
        parser.add_argument("--resolve", action="store_true", help="Resolve questions with a known real outcome.")
        parser.add_argument(
            "--reopen-days",
            type=int,
            metavar="N",
            help="Open past questions for trading for N days (is_historical) instead of closing them.",
        )

    def handle(self, *args, **options) -> None:
        reopen_days = options["reopen_days"]
        if reopen_days is not None and not 1 <= reopen_days <= 3650:
            raise CommandError("--reopen-days must be between 1 and 3650.")
        verbose = options["verbosity"] >= 2
        # Progress: a line on stderr every few seconds (`-v 2`: a line per question on stdout instead); `-v 0`: none.
        tracker = Progress(self.stderr.write, unit="questions")
        try:
            report = import_forecastbench(
                questions_path=options["questions"],
                resolutions_path=options["resolutions"],
                close_market=market_close,
                resolve_market=market_resolve,
                resolve=options["resolve"],
                reopen_days=reopen_days,
                progress=self.stdout.write if verbose else lambda line: None,
                counted=tracker.count if options["verbosity"] == 1 else lambda done, total: None,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        for problem in report.problems:
            self.stderr.write(f"skipped {problem}")
        self.stdout.write(self.style.SUCCESS(report.summary()))
