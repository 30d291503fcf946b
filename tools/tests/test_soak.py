"""``tools/soak.py``: a short soak against its own daphne server on the pytest test database and the tests' Redis.

The tool starts the server itself (``moltstreet.serving``, pointed at this run's database), so everything the agents
do is committed (``transaction=True``) and the flush after each test removes it. A negative control breaks one balance
behind the audit's back and expects the tool to fail. The command line itself is run once as a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from django.db.models import F

from tools import soak as soak_tool
from tools.soak import BASE_DIR

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
    """Run ``tools/soak.py`` with ``argv`` in this process; returns (passed, everything it printed)."""
    lines: list[str] = []
    status = soak_tool.main(argv, lines.append)
    assert status in (0, 1), status
    return status == 0, "\n".join(lines)


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


def test_the_script_runs_from_anywhere_on_the_database_of_its_environment(tmp_path):
    """``python tools/soak.py`` as a reader runs it, from another directory: it finds the checkout, sets Django up on
    ``DATABASE_URL``/``REDIS_URL`` (this run's test database and Redis) and exits 0 after a clean audit."""
    from moltstreet import serving

    run = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, str(BASE_DIR / "tools" / "soak.py"), "--agents", "2", "--markets", "1", "--seconds", "2"],
        cwd=tmp_path,
        env=serving.server_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "result: PASS" in run.stdout, run.stdout
    assert run.stdout.rstrip().endswith("soak passed"), run.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--oracle-key", "k"], "--oracle-key only applies with --url"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--think", "-1"], "--think not negative"),
        (["--seconds", "1", "--minutes", "1"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        soak_tool.config_from_args(argv)

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "usage: tools/soak.py" in err, err


def test_the_arguments_become_the_config():
    config = soak_tool.config_from_args(["--agents", "3", "--minutes", "0.5", "--workers", "2", "--seed", "9"])

    assert (config.agents, config.duration, config.servers, config.seed, config.markets) == (3, 30.0, 2, 9, 20)
    assert soak_tool.config_from_args([]).duration == 300.0
