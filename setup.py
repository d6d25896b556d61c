"""Package discovery only (metadata and dependencies are in setup.cfg).

setup.cfg's ``find:`` cannot install the ``plugins/`` folder under another name, so both package trees are found
here: ``orchestrator`` as it is, and ``plugins`` as ``orchestrator_plugins``, with every subpackage of each.
A folder of modules without ``__init__.py`` would be silently left out of the wheel (``find_packages`` skips it),
so the build refuses one instead.
"""

from pathlib import Path

from setuptools import find_packages, setup

PLUGINS = "orchestrator_plugins"
ROOT = Path(__file__).resolve().parent

unpackaged = sorted(
    str(folder.relative_to(ROOT))
    for tree in ("orchestrator", "plugins")
    for folder in {module.parent for module in (ROOT / tree).rglob("*.py")}
    if not (folder / "__init__.py").is_file()
)
if unpackaged:
    raise SystemExit(f"these folders hold modules but no __init__.py, so they would not be installed: {unpackaged}")

plugin_packages = [PLUGINS] + [f"{PLUGINS}.{name}" for name in find_packages("plugins")]

setup(
    packages=find_packages(include=["orchestrator", "orchestrator.*"]) + plugin_packages,
    package_dir={PLUGINS: "plugins"},
)
