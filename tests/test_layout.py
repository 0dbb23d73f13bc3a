"""The layout is the architecture: each package imports only what its
docstring says it may, so the flow (job → run → wire → store → cost/outputs)
cannot quietly turn into a web. Imports inside functions and type-only imports
count too."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "batchgen"
# top-level modules every package may use, and the version
FOUNDATION = {"errors", "secrets", "jsonfast", "__version__"}
# package -> what it may import besides itself and the foundation
ALLOWED: dict[str, set[str]] = {
    "engine": {"batch_api", "outputs", "cost", "jobs", "llama", "wire", "pacing", "tokens",
            "store"},
    "batch_api": {"jobs"},
    "outputs": {"cost", "jobs", "tokens", "store"},
    "cost": {"jobs", "store"},
    "jobs": {"llama", "store"},
    "llama": {"wire"},
    "wire": set(),
    "pacing": set(),
    "tokens": {"store"},
    "store": set(),
    "testing": set(),
}
TOP = {"__init__", "__main__", "cli", "api"}  # the edge: may import everything


def unit(module: str) -> str:
    """'batchgen.engine.engine' -> 'run'; 'batchgen.errors' -> 'errors'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "batchgen":
                found |= {f"batchgen.{a.name}" for a in node.names}
            elif node.module.startswith("batchgen."):
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1, f"{path}: import from a parent package by a relative path"
            found.add("<relative>")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("batchgen")}
    return found


def test_every_package_imports_only_what_it_may() -> None:
    wrong: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if here in TOP:
            continue
        allowed = ALLOWED.get(here, set()) | FOUNDATION | {here}
        if here in FOUNDATION:
            allowed = FOUNDATION
        for module in imports(path):
            if module == "<relative>":
                if here != "testing":
                    wrong.append(f"{rel}: a relative import (use batchgen.<package>)")
                continue
            target = unit(module)
            if target not in allowed:
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_table_names_every_package_and_each_says_what_it_may_import() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)
    for name in packages:
        doc = importlib.import_module(f"batchgen.{name}").__doc__ or ""
        assert "May import" in doc, f"batchgen/{name}/__init__.py does not say what it may import"


SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA)\b")


def sql_uses(path: Path) -> list[str]:
    """SQL text, a connection of its own, or a store's connection reached into."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and SQL.match(node.value) and " " in node.value.strip():
            found.append(f"line {node.lineno}: SQL {node.value.strip()[:40]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in ("db", "connect") and \
                isinstance(node.value, ast.Name | ast.Attribute):
            owner = ast.unparse(node.value)
            if node.attr == "db" or owner == "sqlite3":
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


def test_no_module_outside_the_store_runs_sql() -> None:
    outside = {str(p.relative_to(PACKAGE)): sql_uses(p) for p in sorted(PACKAGE.rglob("*.py"))
               if p.relative_to(PACKAGE).parts[0] not in ("store", "testing")}
    assert {k: v for k, v in outside.items() if v} == {}


# each third-party library is imported by one package (or foundation module) only
OWNERS = {
    "aiohttp": {"wire", "testing"}, "openai": {"batch_api"}, "redis": {"pacing"},
    # jinja2 renders two things: report.html (outputs) and job templates over rows (jobs);
    # pyarrow reads Parquet data (jobs) and writes Parquet tables (outputs)
    "pygal": {"outputs"}, "jinja2": {"outputs", "jobs"}, "tiktoken": {"tokens"},
    "pyarrow": {"jobs", "outputs"}, "pandas": {"api"},
    # a schema is checked when the job loads (jobs) and answers when they end (engine)
    "jsonschema_rs": {"jobs", "engine"},
    "orjson": {"jsonfast"}, "yaml": {"jobs"}, "pydantic_core": {"jobs"}, "tenacity": {"wire"},
    "tqdm": {"engine"}, "click": {"cli"}, "uvloop": {"engine"},
}


def test_each_library_is_imported_by_its_one_owner() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in OWNERS and here not in OWNERS[top]:
                    wrong.append(f"{rel} imports {name} (owned by {sorted(OWNERS[top])})")
    assert wrong == []
