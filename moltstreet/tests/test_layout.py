"""Tools and test harnesses stay out of the product (CONVENTIONS): no module of the apps, the project package or the
SDK imports ``tools`` (the soak), ``testsupport`` (the test harnesses) or ``bench``; only tests do.

The check reads each module's syntax tree, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("agents", "markets", "trading", "backtests", "moltstreet", "client/moltstreet_client")
NOT_PRODUCT = frozenset({"tools", "testsupport", "bench"})
SKIPPED_DIRS = frozenset({"tests", "migrations", "__pycache__"})


def imported_packages(source: str, filename: str = "<snippet>") -> dict[str, int]:
    """The top-level packages named by the absolute imports in ``source`` (``import a.b``, ``from a.b import c``,
    ``importlib.import_module("a.b")``), each with the first line that names it."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def product_modules() -> list[Path]:
    modules = [ROOT / "manage.py"]
    for package in PRODUCT:
        base = ROOT / package
        modules += [
            path
            for path in base.rglob("*.py")
            if not any(part in SKIPPED_DIRS for part in path.relative_to(base).parts[:-1])
        ]
    return sorted(modules)


def test_the_scan_sees_every_kind_of_import():
    source = (
        "import tools.soak\n"
        "def f():\n"
        "    from testsupport.api import api_client\n"
        "    importlib.import_module('bench.harness')\n"
        "from . import tools\n"  # relative: a module of the package itself, not the top-level tools
    )

    assert imported_packages(source) == {"tools": 1, "testsupport": 3, "bench": 4}


def test_no_product_module_imports_tools_or_test_harnesses():
    modules = product_modules()
    # The walk reaches the code, and leaves the tests (which may use the harnesses) out.
    assert {ROOT / "trading" / "orders.py", ROOT / "moltstreet" / "serving.py", ROOT / "manage.py"} <= set(modules)
    assert not [path for path in modules if "tests" in path.relative_to(ROOT).parts]
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {package}"
        for path in modules
        for package, line in imported_packages(path.read_text(), str(path)).items()
        if package in NOT_PRODUCT
    ]
    assert offenders == []


def test_the_harnesses_and_the_soak_are_out_of_the_app_packages():
    assert not list((ROOT / "moltstreet").glob("testing*.py"))
    assert not (ROOT / "trading" / "soak.py").exists()
    assert not (ROOT / "trading" / "management" / "commands" / "soak.py").exists()
    assert (ROOT / "tools" / "soak.py").exists()
    assert (ROOT / "testsupport" / "api.py").exists()
