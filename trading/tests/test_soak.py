"""``manage.py soak``: a short soak against its own daphne server on the pytest test database and the tests' Redis.

The command starts the server itself (``moltstreet.serving``, pointed at this run's database), so everything the
agents do is committed (``transaction=True``) and the flush after each test removes it. A negative control breaks one
balance behind the audit's back and expects the command to fail.
"""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

pytestmark = [pytest.mark.multiprocess, pytest.mark.django_db(transaction=True)]

SUMMARY_FIELDS = (
    "requests sent:",
    "orders accepted:",
    "trades:",
    "cancels:",
    "markets: created",
    "errors by code:",
    "transport errors:",
    "5xx:",
    "latency (ms):",
    "audit:",
    "ledger check:",
    "result:",
)


def soak(*argv: str) -> tuple[bool, str]:
    """Run ``manage.py soak`` in this process; returns (passed, everything it printed)."""
    out = StringIO()
    try:
        call_command("soak", *argv, stdout=out)
    except CommandError as exc:
        return False, f"{out.getvalue()}\nCommandError: {exc}"
    return True, out.getvalue()


def figure(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, f"no {pattern!r} in:\n{text}"
    return int(found.group(1))


def test_a_short_soak_trades_closes_resolves_and_audits_clean():
    passed, out = soak("--agents", "6", "--markets", "3", "--seconds", "8", "--seed", "7")

    assert passed, out
    for name in SUMMARY_FIELDS:
        assert name in out, f"{name!r} missing from:\n{out}"
    assert "result: PASS" in out, out
    assert "audit clean" in out, out
    assert figure(r"\n  5xx: (\d+)", out) == 0, out
    assert "transport errors: none" in out, out
    assert figure(r"requests sent: (\d+)", out) > 50, out
    assert figure(r"orders accepted: (\d+)", out) > 0, out
    assert figure(r"trades: (\d+) \(", out) > 0, out
    assert figure(r"resolved (\d+) \(", out) > 0, out
    assert figure(r"closed (\d+) \(", out) > 0, out
    assert figure(r"balance == sum of ledger for (\d+)", out) == figure(r"ledger check: (\d+) soak agents", out)
    # Every trade a taker was told about is in the database, and nothing else.
    stored = re.search(r"trades stored in the soak markets: (\d+) .*answered to takers: (\d+)", out)
    assert stored and stored.group(1) == stored.group(2), out
    # Bad requests were sent and every one was refused.
    sent, refused = re.search(r"bad requests: (\d+) sent, (\d+) refused", out).groups()
    assert sent == refused, out


def test_the_soak_fails_when_the_books_do_not_add_up(monkeypatch):
    """Negative control: one soak agent gains a credit without a ledger row just before the audit."""
    from agents.models import Agent
    from trading import audit

    real_audit = audit.run_audit

    def tampered():
        Agent.objects.filter(
            pk=Agent.objects.filter(name__startswith="soak-").order_by("name").values("pk")[:1]
        ).update(balance=F("balance") + 1)
        return real_audit()

    monkeypatch.setattr(audit, "run_audit", tampered)

    passed, out = soak("--agents", "2", "--markets", "1", "--seconds", "2", "--seed", "3")

    assert not passed, out
    assert "result: FAIL" in out, out
    assert "[invariant 4]" in out, out
    assert "audit found" in out, out
    assert "whose balance is not the sum of their ledger" in out, out
