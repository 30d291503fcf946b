"""Only the cash book moves money: no other module assigns or bulk-updates an agent's balance (CONVENTIONS)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# An attribute write (agent.balance += x), a queryset .update(balance=...) or a bulk_update naming the balance.
WRITES = re.compile(r"\.(locked_)?balance\s*[-+]?=(?!=)|\.update\([^)]*\bbalance\b|bulk_update\([^)]*balance")
ALLOWED = {
    ROOT / "agents" / "services.py",  # CashBook: every balance change with its ledger row
    # The SDK's backtest engine: the simulated credits of a strategy replayed on history, no Agent row (DESIGN 11).
    ROOT / "client" / "moltstreet_client" / "backtest.py",
}


def test_no_module_outside_the_cash_book_writes_a_balance():
    offenders = []
    for path in ROOT.glob("*/**/*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in {".venv", "staticfiles"} or "tests" in parts or "migrations" in parts or path in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if WRITES.search(code) and "models.DecimalField" not in code and "Money(" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_check_would_catch_a_balance_write():
    assert WRITES.search("agent.balance += Decimal('1')")
    assert WRITES.search("Agent.objects.filter(id=x).update(balance=F('balance') + 1)")
    assert not WRITES.search("if agent.balance == other:")
    assert not WRITES.search("Q(reputation=r, balance=agent.balance)")
