"""Plugins import from the orchestrator only through ``orchestrator.api``: the built-ins in ``plugins/`` and the
guide's example package alike, so that the engine's other modules can change without breaking a plugin.

An AST scan of every module, imports inside functions included. The example's own tests drive the host
application (its CLI and config), so they are not part of the plugin and are not scanned.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import orchestrator.api

REPO = Path(__file__).resolve().parent.parent
PLUGIN_MODULES = sorted(
    [*(REPO / "plugins").rglob("*.py"), *(REPO / "examples/orchestrator-apppush/orchestrator_apppush").rglob("*.py")]
)


def orchestrator_imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) for every import of the ``orchestrator`` package or below."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, ()) for a in node.names if a.name.split(".")[0] == "orchestrator"]
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "orchestrator"
        ):
            found.append((node.lineno, node.module, tuple(a.name for a in node.names)))
    return found


def test_the_scan_sees_the_plugins():
    names = {p.relative_to(REPO).as_posix() for p in PLUGIN_MODULES}
    assert {
        "plugins/webhook.py",
        "plugins/email/smtp.py",
        "examples/orchestrator-apppush/orchestrator_apppush/__init__.py",
    } <= names


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_a_plugin_imports_the_orchestrator_only_through_its_public_api(path):
    imports = orchestrator_imports(path)
    outside = [f"line {line}: {module}" for line, module, _ in imports if module != "orchestrator.api"]
    assert outside == [], f"{path.relative_to(REPO)} imports engine internals"
    unknown = [name for _, _, names in imports for name in names if name not in orchestrator.api.__all__]
    assert unknown == [], "names not in orchestrator.api.__all__"
