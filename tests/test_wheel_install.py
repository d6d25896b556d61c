"""The built wheel, installed in a fresh virtualenv outside the source tree, runs the product.

The wheel is built from a copy of the tree (so no ``build/`` folder is left in the checkout, and none from an
earlier build slips into the wheel) and installed into a new virtualenv under ``tmp_path``. Its dependencies are
not downloaded again: a ``.pth`` file lets the new environment see this one's site-packages (where the editable
install's finder is not activated, so ``orchestrator`` can only come from the wheel), and ``pip check`` then
proves that every requirement the wheel declares is satisfied. Every command runs from a folder outside the
tree, on the copy's config and campaigns. ``tests/test_dependencies.py`` checks that the requirements name every
third-party module the code imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EVERYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")
AT_THE_TOP = {".venv", ".git", "build", "dist", "demo"}  # orchestrator/demo is a package: only ./demo is output


def copy_ignore(folder: str, names: list[str]) -> set[str]:
    ignored = EVERYWHERE(folder, names)
    return ignored | (AT_THE_TOP & set(names)) if Path(folder) == REPO else ignored


def run(*args: str | Path, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def source_packages() -> set[str]:
    """Every folder of modules in the tree, as the package name it installs as."""
    found = set()
    for tree, installed_as in (("orchestrator", "orchestrator"), ("plugins", "orchestrator_plugins")):
        for module in (REPO / tree).rglob("*.py"):
            found.add("/".join((installed_as, *module.parent.relative_to(REPO / tree).parts)))
    return found


@pytest.mark.slow
def test_the_installed_wheel_runs_the_product_outside_the_tree(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=copy_ignore)
    wheels = tmp_path / "wheels"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("campaign_orchestrator-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    assert source_packages() <= {name.rsplit("/", 1)[0] for name in names}
    assert {
        "orchestrator/default_config.yaml",
        "orchestrator/db/migrations/script.py.mako",
        "orchestrator/web/templates/unsubscribe.html",
    } <= set(names)

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = (sys.executable, "-m", "pip", "--python", python)
    installed = run(*pip, "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    checked = run(*pip, "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "PYTHON"))}
    where = run(python, "-c", "import orchestrator, orchestrator_plugins; print(orchestrator.__file__)", cwd=outside)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    orchestrator = venv / "bin" / "orchestrator"

    version = run(orchestrator, "--version", cwd=outside, env=env)
    assert version.returncode == 0 and "0.1.0" in version.stdout and version.stderr == ""
    listed = run(orchestrator, "plugins", "--json", cwd=outside, env=env)
    assert listed.returncode == 0, listed.stderr
    infos = json.loads(listed.stdout)
    channels = {i["name"]: i["source"] for i in infos if i["kind"] == "channel"}
    assert {"email", "sms", "wechat", "webhook", "call_list", "coupon"} <= set(channels)
    assert not [i for i in infos if i["error"]]

    db = f"sqlite:///{tmp_path / 'x.db'}"
    config = source / "config" / "orchestrator.yaml"  # the copy: init writes its secret next to it
    for command in (("init",), ("demo-data", "--preset", "seed-shop")):
        done = run(orchestrator, "--config", config, "--db", db, *command, cwd=outside, env=env)
        assert done.returncode == 0, done.stderr
    campaign = source / "campaigns" / "wake_dormant.yaml"
    dry = run(orchestrator, "--config", config, "--db", db, "dry-run", campaign, cwd=outside, env=env)
    assert dry.returncode == 0, dry.stderr

    # installed, not a checkout: the PostgreSQL hint names the distribution's extra
    without_psycopg = "import sys; sys.modules['psycopg'] = None\nfrom orchestrator.cli import main; main()"
    pg = run(
        python, "-c", without_psycopg, "--db", "postgresql://postgres@127.0.0.1:5432/test", "init", cwd=outside, env=env
    )
    assert pg.returncode == 1
    assert (
        "hint: pip install 'campaign-orchestrator[postgres]' (from a checkout: pip install -e '.[postgres]')"
        in pg.stderr
    )
