"""Only the cash book moves money: no other module writes an agent's balance (CONVENTIONS). Likewise only the
private feed (``agents.services.AgentFeed``) numbers an agent's feed messages: ``feed_seq`` is written where balances
are, and nowhere else.

The check reads each module's syntax tree rather than its lines, so a write split over several lines, one made through
``trading/book_store.py``'s row writers or one made with ``setattr`` is seen as well as ``agent.balance += x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIELDS = frozenset({"balance", "locked_balance"})
FEED_FIELDS = frozenset({"feed_seq"})  # the private feed's sequence: raised with each stored message
ROW_HELPERS = frozenset({"_update", "_insert"})  # trading/book_store.py's row writers
SKIPPED_DIRS = frozenset({".venv", "staticfiles", "tests", "migrations", "node_modules", "__pycache__"})
ALLOWED = {
    ROOT / "agents" / "services.py",  # CashBook: every balance change with its ledger row
    # The SDK's backtest engine: the simulated credits of a strategy replayed on history, no Agent row (DESIGN 11).
    ROOT / "client" / "moltstreet_client" / "backtest.py",
}
# Functions allowed to write balances in a module that is otherwise checked: the book store writes the rows a CashBook
# computed (its touched agents and ledger entries), in the order path's one round trip, and nothing else.
ALLOWED_FUNCTIONS = {ROOT / "trading" / "book_store.py": "_write_cash"}


def _called(func: ast.expr) -> str | None:
    """``update`` for ``x.update(...)`` and ``update(...)`` alike."""
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _string_constants(tree: ast.Module) -> dict[str, set[str]]:
    """Module-level ``NAME = ("a", "b")`` (tuple, list or set of strings), so a field list kept in a constant is read."""
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Tuple | ast.List | ast.Set):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            strings = {e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = strings
    return found


def _named_fields(nodes: list[ast.AST], constants: dict[str, set[str]], fields: frozenset[str] = FIELDS) -> set[str]:
    """The ``fields`` named by string literals (or module constants holding them) anywhere inside ``nodes``."""
    names: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                names.add(sub.value)
            elif isinstance(sub, ast.Name):
                names |= constants.get(sub.id, set())
    return names & fields


def _unpacked(targets: list[ast.expr]) -> list[ast.expr]:
    """The targets of ``a, (b, *c) = ...`` one by one (not what a subscript's index reads)."""
    flat: list[ast.expr] = []
    for target in targets:
        if isinstance(target, ast.Tuple | ast.List):
            flat += _unpacked(target.elts)
        elif isinstance(target, ast.Starred):
            flat += _unpacked([target.value])
        else:
            flat.append(target)
    return flat


def _is_write(node: ast.AST, constants: dict[str, set[str]], fields: frozenset[str] = FIELDS) -> bool:
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        # agent.balance = x, agent.locked_balance -= x, (agent.balance, y) = ...
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Attribute) and t.attr in fields for t in _unpacked(targets))
    if not isinstance(node, ast.Call):
        return False
    name = _called(node.func)
    keyword_values = [k.value for k in node.keywords]
    if name == "setattr":
        return len(node.args) >= 2 and bool(_named_fields([node.args[1]], constants, fields))
    if name == "update":
        # .update(balance=...), .update(**{"balance": ...}), .update({"balance": ...})
        if any(k.arg in fields for k in node.keywords):
            return True
        dicts = [v for v in [*node.args, *keyword_values] if isinstance(v, ast.Dict)]
        return bool(_named_fields([key for d in dicts for key in d.keys if key is not None], constants, fields))
    if name == "bulk_update":  # bulk_update(agents, ["balance"]) or fields=[...]
        return bool(_named_fields([*node.args, *keyword_values], constants, fields))
    if name == "save":  # save(update_fields=["balance"])
        return bool(_named_fields([k.value for k in node.keywords if k.arg == "update_fields"], constants, fields))
    if name in ROW_HELPERS:
        if _named_fields([*node.args, *keyword_values], constants, fields):
            return True
        # _insert writes every column: an Agent row inserted this way sets its balances.
        model = node.args[0] if node.args else None
        return name == "_insert" and isinstance(model, ast.Name) and model.id == "Agent"
    return False


def balance_writes(
    source: str, filename: str = "<snippet>", allowed_function: str | None = None, fields: frozenset[str] = FIELDS
) -> list[int]:
    """The line numbers in ``source`` where one of ``fields`` (by default a balance or locked balance) is written,
    outside the module-level function ``allowed_function``."""
    tree = ast.parse(source, filename)
    constants = _string_constants(tree)
    allowed: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == allowed_function:
            allowed = {sub.lineno for sub in ast.walk(node) if hasattr(sub, "lineno")}
    return sorted({node.lineno for node in ast.walk(tree) if _is_write(node, constants, fields)} - allowed)


def _modules() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.py")
        if not any(part in SKIPPED_DIRS or part.startswith(".") for part in path.relative_to(ROOT).parts[:-1])
    )


def test_no_module_outside_the_cash_book_writes_a_balance():
    modules = _modules()
    assert {ROOT / "agents" / "models.py", ROOT / "manage.py"} <= set(modules)  # the walk reaches the code
    offenders = []
    for path in modules:
        if path in ALLOWED:
            continue
        source = path.read_text()
        lines = source.splitlines()
        writes = balance_writes(source, str(path), ALLOWED_FUNCTIONS.get(path))
        offenders += [f"{path.relative_to(ROOT)}:{n}: {lines[n - 1].strip()}" for n in writes]
    assert offenders == []


def test_no_module_outside_the_private_feed_and_the_cash_book_writes_a_feed_seq():
    offenders = []
    for path in _modules():
        if path in ALLOWED:
            continue
        source = path.read_text()
        lines = source.splitlines()
        writes = balance_writes(source, str(path), ALLOWED_FUNCTIONS.get(path), FEED_FIELDS)
        offenders += [f"{path.relative_to(ROOT)}:{n}: {lines[n - 1].strip()}" for n in writes]
    assert offenders == []
    # Not blindness: both allowed places really write it.
    services, store = ROOT / "agents" / "services.py", ROOT / "trading" / "book_store.py"
    assert balance_writes(services.read_text(), str(services), fields=FEED_FIELDS)
    assert balance_writes(store.read_text(), str(store), fields=FEED_FIELDS)
    assert balance_writes("agent.feed_seq += 1", fields=FEED_FIELDS)


def test_the_check_sees_the_writes_of_the_modules_it_allows():
    # The exemptions are what keep the check green, not blindness: both allowed modules really write balances.
    for path in ALLOWED | set(ALLOWED_FUNCTIONS):
        assert balance_writes(path.read_text(), str(path)), path
    # ... and the allowed function is the only one that does in its module.
    for path, function in ALLOWED_FUNCTIONS.items():
        source = path.read_text()
        assert set(balance_writes(source, str(path))) > set(balance_writes(source, str(path), function)) == set()


CAUGHT = {
    "augmented assignment": "agent.balance += Decimal('1')",
    "assignment": "agent.locked_balance = Decimal('0.00')",
    "tuple assignment": "agent.balance, agent.locked_balance = total, reserved",
    "starred assignment": "n, *agent.locked_balance = total, 1",
    "one-line update": "Agent.objects.filter(id=x).update(balance=F('balance') + 1)",
    "multi-line update": """
Agent.objects.filter(id=agent_id).update(
    reputation=F("reputation"),
    balance=F("balance") + amount,
)
""",
    "update from a dict": "Agent.objects.filter(id=x).update(**{'locked_balance': 0})",
    "bulk_update": "Agent.objects.bulk_update(\n    agents,\n    ['balance'],\n)",
    "bulk_update fields=": "Agent.objects.bulk_update(agents, fields=('reputation', 'locked_balance'))",
    "save(update_fields=)": "agent.save(update_fields=['balance'])",
    "the store's _update": '_update(Agent, agents, ("balance",))',
    "_update with a constant": 'AGENT_FIELDS = ("balance", "locked_balance")\n_update(Agent, rows, AGENT_FIELDS)',
    "_update through the module": 'book_store._update(Agent, rows, ("locked_balance",))',
    "_insert of agents": "_insert(Agent, [Agent(name='x', balance=Decimal('5.00'))])",
    "a write in another function of the store": "def _write_cash():\n    pass\n\ndef other():\n    agent.balance = 1",
    "setattr": 'setattr(agent, "balance", agent.balance + 1)',
}

NOT_CAUGHT = {
    "comparison": "if agent.balance == other:\n    pass",
    "read": "rank = agent.balance - agent.locked_balance",
    "Q filter": "Q(reputation=r, balance=agent.balance)",
    "filter": "Agent.objects.filter(balance__gte=x).exclude(locked_balance=0)",
    "F expression": "queryset.annotate(rank_balance=F('balance') - F('linked_pnl'))",
    "model fields": """
class Agent(models.Model):
    balance = models.DecimalField(default=Decimal("0.00"), **MONEY)
    locked_balance = models.DecimalField(default=Decimal("0.00"), **MONEY)
""",
    "serializer fields": "class AgentSerializer(serializers.Serializer):\n    balance = Money()",
    "another field": '_update(Agent, linked, ("linked_pnl",))',
    "getattr": 'getattr(agent, "balance")',
    "subscript index": "totals[agent.balance] = 1",
    "refresh": 'agent.refresh_from_db(fields=["balance", "locked_balance"])',
    "other model": "_insert(LedgerEntry, entries)",
}


@pytest.mark.parametrize("source", CAUGHT.values(), ids=CAUGHT.keys())
def test_the_check_would_catch_a_balance_write(source):
    assert balance_writes(source)


@pytest.mark.parametrize("source", NOT_CAUGHT.values(), ids=NOT_CAUGHT.keys())
def test_the_check_leaves_reads_filters_and_field_definitions_alone(source):
    assert balance_writes(source) == []


def test_the_check_names_the_line_a_multi_line_write_starts_on():
    assert balance_writes("x = 1\nAgent.objects.filter(id=x).update(\n    balance=0,\n)\n") == [2]
