"""Limits that keep a hostile or mistaken file from exhausting the machine or the database: YAML alias
expansion, nesting depth, numbers and durations out of range, and ``--at`` times no calendar arithmetic survives.

The files here are built by the tests (they are too large or too repetitive for the corpus); the corpus under
tests/campaigns/invalid holds the small cases (condition_too_deep.yaml, fact_value_overflow.yaml, …).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.campaign.conditions import MAX_CONDITION_DEPTH
from tests.clitools import Cli

REPO = Path(__file__).resolve().parent.parent

# Runs one command in a fresh interpreter whose only child is the orchestrator, so that RUSAGE_CHILDREN is that
# command's peak memory alone. The child's address space is capped at 2 GB so that a regression fails the test
# instead of taking the machine's memory.
MEASURE = """
import json, resource, subprocess, sys
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=cap)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "stdout": done.stdout, "peak_mb": peak_kb / 1024}))
"""


def run_measured(*args: str) -> dict:
    argv = [sys.executable, "-c", MEASURE, sys.executable, "-c", "from orchestrator.cli import main; main()", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
    return json.loads(done.stdout)


def billion_laughs(levels: int) -> str:
    """Each level is a list of ten aliases of the level below: 10**levels strings from a few hundred bytes."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + f"\nname: bomb\nsegment: {{recency_days: {{gte: 1}}}}\ndescription: *a{levels}\n"


@pytest.fixture
def no_config(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ORCHESTRATOR_CONFIG", "ORCHESTRATOR_DATABASE_URL", "ORCHESTRATOR_DEBUG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_fails_fast_in_little_memory(tmp_path: Path, no_config, levels: int):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs(levels), encoding="utf-8")
    assert bomb.stat().st_size < 1000
    started = time.monotonic()
    result = run_measured("validate", str(bomb))
    elapsed = time.monotonic() - started
    assert result["rc"] == 2, result
    assert "Traceback" not in result["stderr"]
    assert f"{bomb}:" in result["stderr"] and "aliases" in result["stderr"], result["stderr"]
    assert result["peak_mb"] < 200, result
    assert elapsed < 30


def test_an_alias_bomb_in_the_config_file_is_refused(tmp_path: Path, no_config):
    config = tmp_path / "orchestrator.yaml"
    config.write_text(billion_laughs(9).replace("name: bomb\n", "timezone: Asia/Shanghai\n"), encoding="utf-8")
    campaign = REPO / "tests" / "campaigns" / "valid" / "minimal.yaml"
    result = run_measured("--config", str(config), "validate", str(campaign))
    assert result["rc"] == 2, result
    assert f"{config}:" in result["stderr"] and "aliases" in result["stderr"], result["stderr"]
    assert result["peak_mb"] < 200, result


def test_small_reuse_with_anchors_still_validates(tmp_path: Path, no_config):
    """A message reused by alias in many steps is fine while the expanded file stays small."""
    steps = "\n".join(f"  - {{name: s{i}, message: {{email: *mail}}}}" for i in range(1, 50))
    campaign = tmp_path / "reuse.yaml"
    campaign.write_text(
        "name: reuse\nsegment: {recency_days: {gte: 1}}\nsteps:\n"
        f"  - {{name: s0, message: {{email: &mail {{subject: Hi, text: Hello}}}}}}\n{steps}\n",
        encoding="utf-8",
    )
    result = Cli(None)("validate", str(campaign))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok  {campaign} (reuse)\n"


def nested(depth: int, combinator: str = "not") -> str:
    cond = "{recency_days: {gte: 1}}"
    for _ in range(depth):
        cond = f"{{{combinator}: [{cond}]}}"
    return cond


@pytest.mark.parametrize("combinator", ["not", "any", "all"])
def test_the_deepest_allowed_condition_runs_on_the_database(run_cli: Cli, tmp_path: Path, combinator: str):
    """The depth bound is below what the databases' SQL parsers take (SQLite overflows at about 35 `not`s)."""
    campaign = tmp_path / "deep.yaml"
    campaign.write_text(
        f"name: deep\nsegment: {nested(MAX_CONDITION_DEPTH, combinator)}\n"
        "message: {email: {subject: Hi, text: Hello}}\n",
        encoding="utf-8",
    )
    assert run_cli("validate", str(campaign)).exit_code == 0
    result = run_cli("dry-run", str(campaign), "--at", "2026-03-01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["campaign"] == "deep"

    campaign.write_text(
        campaign.read_text().replace(
            nested(MAX_CONDITION_DEPTH, combinator), nested(MAX_CONDITION_DEPTH + 1, combinator)
        )
    )
    result = run_cli("validate", str(campaign))
    assert result.exit_code == 2
    assert f"{campaign}:2:" in result.stderr and "nested too deeply" in result.stderr


@pytest.mark.parametrize("at", ["0001-01-01", "9999-12-31T23:59:59"])
@pytest.mark.parametrize(
    "command",
    [
        ["dry-run", "tests/campaigns/valid/minimal.yaml"],
        ["run", "tests/campaigns/valid/minimal.yaml"],
        ["dispatch"],
        ["analyze"],
    ],
)
def test_an_at_outside_the_supported_years_is_refused(run_cli: Cli, command: list[str], at: str):
    argv = [(str(REPO / a) if a.endswith(".yaml") else a) for a in command]
    result = run_cli(*argv, "--at", at)
    assert result.exit_code == 2, result.output
    assert "--at" in result.stderr and "between" in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_a_schedule_at_outside_the_supported_years_is_refused(tmp_path: Path, no_config):
    campaign = tmp_path / "old.yaml"
    campaign.write_text(
        textwrap.dedent(
            """\
            name: old
            schedule: {at: 0001-01-01T00:00:00}
            segment: {recency_days: {gte: 1}}
            message: {email: {subject: Hi, text: Hello}}
            """
        ),
        encoding="utf-8",
    )
    result = Cli(None)("validate", str(campaign))
    assert result.exit_code == 2
    assert f"{campaign}:2:" in result.stderr and "between" in result.stderr, result.stderr
