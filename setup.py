"""Package discovery only (metadata and dependencies are in setup.cfg).

setup.cfg's ``find:`` cannot install the ``plugins/`` folder under another name, so both package trees are found
here: ``orchestrator`` as it is, and ``plugins`` as ``orchestrator_plugins``, with every subpackage of each.
"""

from setuptools import find_packages, setup

PLUGINS = "orchestrator_plugins"
plugin_packages = [PLUGINS] + [f"{PLUGINS}.{name}" for name in find_packages("plugins")]

setup(
    packages=find_packages(include=["orchestrator", "orchestrator.*"]) + plugin_packages,
    package_dir={PLUGINS: "plugins"},
)
