"""``python manage.py audit``: check every invariant of DESIGN section 5, print a report, exit 1 on a breach."""

from django.core.management.base import BaseCommand, CommandError

from trading.audit import run_audit


class Command(BaseCommand):
    help = "Check every invariant of DESIGN section 5 (balances, pairs, money, ledger replay, book, sequences)."

    def handle(self, *args, **options):
        # A line on stderr after each check (the ledger replay and the sequences read every row).
        report = run_audit(progress=self.stderr.write if options["verbosity"] >= 1 else None)
        self.stdout.write(report.render())
        if not report.ok:
            raise CommandError(f"audit found {len(report.breaches)} breach(es)")
        self.stdout.write(self.style.SUCCESS("audit clean"))
