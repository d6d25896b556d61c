"""The architecture's "what must not import what" (docs/architecture.md), checked by an AST scan of every module,
imports inside functions included. A rule broken here is a dependency that makes the house harder to read and to
change: the config reaching into the campaign schema, the engine printing through the command line, dispatch
reaching back into planning, storage knowing a pipeline stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGINE = REPO / "orchestrator"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # from pkg import module
    return modules


def modules_under(*parts: str) -> list[Path]:
    root = ENGINE.joinpath(*parts)
    return [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# (the modules, the packages they must not import, why)
RULES = [
    (modules_under("config.py"), ("orchestrator.campaign",), "config sits below campaigns (policy_types.py)"),
    (modules_under("policy_types.py"), ("orchestrator.campaign", "orchestrator.config"), "shared below both"),
    (
        [p for p in ENGINE.rglob("*.py") if "cli" not in p.relative_to(ENGINE).parts],
        ("orchestrator.cli",),
        "the engine never imports the command line",
    ),
    (
        modules_under("dispatch"),
        ("orchestrator.pipeline", "orchestrator.segments", "orchestrator.campaign", "orchestrator.service"),
        "dispatch never reaches back into planning: the ledger row holds what it needs",
    ),
    (
        modules_under("db"),
        ("orchestrator.pipeline", "orchestrator.segments", "orchestrator.dispatch", "orchestrator.policies"),
        "storage knows no pipeline stage",
    ),
]
CASES = [(path, banned, why) for paths, banned, why in RULES for path in paths]


@pytest.mark.parametrize(("path", "banned", "why"), CASES, ids=[f"{rel(c[0])}" for c in CASES])
def test_a_module_keeps_to_the_architecture(path: Path, banned: tuple[str, ...], why: str):
    wrong = sorted(m for m in imported_modules(path) if any(m == b or m.startswith(f"{b}.") for b in banned))
    assert wrong == [], f"{rel(path)} imports {wrong}: {why}"


def test_only_the_command_line_and_output_print_with_click():
    printing = sorted(
        rel(p)
        for p in ENGINE.rglob("*.py")
        if "cli" not in p.relative_to(ENGINE).parts and p.name != "output.py" and "click" in imported_modules(p)
    )
    assert printing == [], "engine modules print through orchestrator.output, never click directly"
