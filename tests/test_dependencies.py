"""setup.cfg's install_requires names the distribution of every third-party module the product imports.

A module that only arrives as another package's dependency (lxml through premailer) works until that package
drops it; so every import in ``orchestrator/`` and ``plugins/``, at any depth and in any function, is resolved to
the distribution that provides it, which must be a direct requirement with a minimum version.
"""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OURS = {"orchestrator", "orchestrator_plugins"}


def imported_top_level_modules() -> dict[str, str]:
    """Top-level module name -> the first file importing it."""
    found: dict[str, str] = {}
    for tree in ("orchestrator", "plugins"):
        for path in sorted((REPO / tree).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def requirements() -> dict[str, str]:
    """Normalised distribution name -> its requirement line."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    return {re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-"): line for line in lines}


def test_every_imported_third_party_module_is_a_direct_requirement_with_a_minimum_version():
    provided_by = packages_distributions()
    required = requirements()
    missing = []
    for module, where in imported_top_level_modules().items():
        if module in OURS or module in sys.stdlib_module_names:
            continue
        dists = {d.lower().replace("_", "-") for d in provided_by.get(module, [])}
        assert dists, f"{module} (imported by {where}) is not installed at all"
        if not dists & set(required):
            missing.append(f"{module} from {sorted(dists)} (imported by {where})")
    assert missing == []
    assert all(">=" in line for line in required.values()), required
