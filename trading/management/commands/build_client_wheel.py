"""``python manage.py build_client_wheel``: build the wheel of the SDK (``client/``) that ``/simple/`` serves.

Writes ``moltstreet_client-<version>-py3-none-any.whl`` into ``CLIENT_WHEEL_DIR`` (or ``--out``), offline, with this
interpreter's setuptools; does nothing when the wheel there was built from the same sources (``--force`` rebuilds).
``make run`` and the Docker image's build run it (moltstreet/package_index.py).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from moltstreet.package_index import WheelBuildError, build_client_wheel


class Command(BaseCommand):
    help = "Build the wheel of the Python SDK (client/) served at /simple/ into CLIENT_WHEEL_DIR."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, help="Directory to write the wheel to (default: CLIENT_WHEEL_DIR).")
        parser.add_argument("--force", action="store_true", help="Rebuild even if the sources did not change.")

    def handle(self, *args, **options):
        try:
            wheel = build_client_wheel(options["out"], force=options["force"])
        except WheelBuildError as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"SDK wheel served at /simple/moltstreet-client/: {wheel}")
