"""Running management commands in tests as the command line runs them."""

from __future__ import annotations

import pytest
from django.core.management import execute_from_command_line
from django.db import connections


def manage(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """Run ``python manage.py <argv>`` in this process, in the test's transaction, and return its exit status (a
    ``CommandError`` is 1, as on the command line)."""
    # run_from_argv closes every connection when the command ends; the test's transaction must outlive the command.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    try:
        execute_from_command_line(["manage.py", *argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0
