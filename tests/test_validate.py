"""``orchestrator validate`` and ``orchestrator schema`` against a corpus of campaign files.

``tests/campaigns/invalid/*.yaml`` holds malformed campaign files. Each states what validate must say in its
leading comment block::

    # expect: line 7: unknown fact or keyword 'recency_dys'
    # hint: did you mean 'recency_days'?
    # expect: broken/syntax_error.html.j2 line 4: template syntax error
    # xfail: PRODUCT: why the product does not say this yet

``expect`` is one problem: the line (in the campaign file itself, or in another file named by its path suffix, e.g.
a template) and a fragment of the message; ``hint`` applies to the ``expect`` above it; ``xfail`` marks a case
where the product does not (yet) say what it should. Every problem the file has is listed, so the count of
``expect`` lines is the count of problems. ``tests/campaigns/valid/*.yaml`` must validate (an ``xfail`` line works
there too). Adding a file adds a test.

The corpus runs against a configuration written by ``corpus_config`` below: template folders
``tests/campaigns/templates`` then the repo's ``templates``, and a few named segments (some deliberately broken).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import Result

from orchestrator.yamlfile import parse_yaml
from tests.clitools import Cli

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "campaigns"
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
EXAMPLES = sorted((REPO / "campaigns").glob("*.yaml")) + sorted((REPO / "campaigns" / "journeys").glob("*.yaml"))
EXAMPLE_CONFIG = REPO / "config" / "orchestrator.yaml"
# yaml.safe_load reads YAML 1.1, where a bare `on:` key is the boolean true: not something a JSON Schema can judge
SCHEMA_VALID = [p for p in VALID if p.stem != "event_trigger_bare_on"]

# Line numbers matter: tests/campaigns/invalid/named_segment_broken_definition.yaml expects line 8.
CONFIG_TEMPLATE = """\
# Configuration for the campaign corpus under tests/campaigns (written by tests/test_validate.py).
timezone: Asia/Shanghai
templates: [{corpus_templates}, {repo_templates}]
segments:
  dormant_3m: {{recency_days: {{gte: 90, lt: 180}}}}
  high_value: {{frequency: {{gte: 2}}}}
  big_spenders: {{monetary: {{gt: 1000}}}}
  broken_definition: {{recency_dys: {{gte: 1}}}}
  loop_a: {{segment: loop_b}}
  loop_b: {{segment: loop_a}}
"""


# ---------------------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Expected:
    """One problem a corpus file must report."""

    line: int
    fragment: str
    file: str | None = None  # None: the campaign file itself; else a path suffix (a template, the config)
    hint: str | None = None

    def where(self, campaign: Path) -> str:
        return f"{self.file or campaign.name}:{self.line}"


_EXPECT = re.compile(r"(?:(?P<file>\S+) )?line (?P<line>\d+): (?P<fragment>.+)")


def header(path: Path) -> list[str]:
    """The leading comment lines of a corpus file (the rest may be anything, even bytes that are not UTF-8)."""
    lines = []
    for raw in path.read_bytes().splitlines():
        if not raw.startswith(b"#"):
            break
        lines.append(raw.decode("utf-8").rstrip())
    return lines


def expectations(path: Path) -> list[Expected]:
    found: list[Expected] = []
    for line in header(path):
        if line.startswith("# expect:"):
            match = _EXPECT.fullmatch(line.removeprefix("# expect:").strip())
            assert match, f"{path.name}: malformed expectation {line!r}"
            found.append(Expected(int(match["line"]), match["fragment"], match["file"]))
        elif line.startswith("# hint:"):
            assert found, f"{path.name}: '# hint:' before any '# expect:'"
            last = found.pop()
            found.append(Expected(last.line, last.fragment, last.file, line.removeprefix("# hint:").strip()))
    return found


def xfail_reason(path: Path) -> str | None:
    return next((line.removeprefix("# xfail:").strip() for line in header(path) if line.startswith("# xfail:")), None)


def corpus_params(paths: list[Path]) -> list:
    params = []
    for path in paths:
        reason = xfail_reason(path)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def located_elsewhere(path: Path) -> bool:
    """Whether any expected problem points into another file (a template, the config)."""
    return any(e.file is not None for e in expectations(path))


@dataclass(frozen=True)
class Reported:
    """One problem as printed by ``validate``: ``error: FILE:LINE[:COL]: MESSAGE`` plus ``hint:`` lines."""

    file: str
    line: int | None
    message: str
    hints: tuple[str, ...]


_ERROR = re.compile(r"error: (?P<file>.+?)(?::(?P<line>\d+))?(?::\d+)?: (?P<message>.*)")


def reported(stderr: str) -> list[Reported]:
    problems: list[Reported] = []
    for line in stderr.splitlines():
        if line.startswith("error: "):
            match = _ERROR.fullmatch(line)
            assert match, f"an error line without a location: {line!r}"
            number = int(match["line"]) if match["line"] else None
            problems.append(Reported(match["file"], number, match["message"], ()))
        elif line.startswith("  hint: ") and problems:
            last = problems.pop()
            problems.append(Reported(last.file, last.line, last.message, (*last.hints, line.removeprefix("  hint: "))))
        elif line.startswith("  ") and problems:  # a message continued on the next line
            last = problems.pop()
            problems.append(Reported(last.file, last.line, f"{last.message}\n{line.strip()}", last.hints))
        else:
            raise AssertionError(f"unexpected line on stderr: {line!r}")
    return problems


def same_file(reported_file: str | None, campaign: Path, expected: Expected) -> bool:
    if reported_file is None:
        return False
    if expected.file is None:
        return Path(reported_file) == campaign
    return reported_file == expected.file or reported_file.endswith("/" + expected.file)


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def corpus_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus-config") / "orchestrator.yaml"
    path.write_text(
        CONFIG_TEMPLATE.format(
            corpus_templates=json.dumps(str(CORPUS / "templates")),
            repo_templates=json.dumps(str(REPO / "templates")),
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def clean_env(monkeypatch) -> None:
    for name in ("ORCHESTRATOR_CONFIG", "ORCHESTRATOR_DATABASE_URL", "ORCHESTRATOR_DEBUG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(corpus_config: Path, clean_env) -> Cli:
    """validate and schema need no database: ``Cli(None, …)`` passes no --db."""
    return Cli(None, config=str(corpus_config))


def check_exit(result: Result, code: int) -> None:
    assert not (result.exception and not isinstance(result.exception, SystemExit)), result.exception
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr


def test_the_corpus_is_big_enough_and_well_formed():
    assert len(INVALID) >= 40
    assert len(VALID) >= 5
    assert EXAMPLES, "no example campaigns in campaigns/"
    for path in INVALID:
        assert expectations(path), f"{path.name} states no '# expect:'"
    for path in VALID:
        assert not expectations(path), f"{path.name} is in valid/ but expects problems"


# ---------------------------------------------------------------------------------------------------- invalid files


@pytest.mark.parametrize("path", corpus_params(INVALID))
def test_invalid_file_is_reported_with_its_line(cli: Cli, path: Path):
    result = cli("validate", str(path))
    check_exit(result, 2)
    assert result.stdout == ""
    problems = reported(result.stderr)
    for expected in expectations(path):
        if expected.file is None:
            assert f"{path}:{expected.line}:" in result.stderr, f"{expected.where(path)} not named:\n{result.stderr}"
        matching = [
            p
            for p in problems
            if same_file(p.file, path, expected)
            and p.line == expected.line
            and expected.fragment in p.message
            and (expected.hint is None or any(expected.hint in h for h in p.hints))
        ]
        assert matching, f"no problem at {expected.where(path)} saying {expected.fragment!r}:\n{result.stderr}"


@pytest.mark.parametrize("path", corpus_params(INVALID))
def test_invalid_file_as_json_lists_exactly_its_problems(cli: Cli, path: Path):
    result = cli("validate", "--json", str(path))
    check_exit(result, 2)
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["valid"] is False
    [entry] = document["files"]
    assert entry["file"] == str(path)
    assert entry["valid"] is False
    problems = entry["problems"]
    for problem in problems:
        assert set(problem) == {"file", "line", "column", "message", "hint"}
    expected = expectations(path)
    for e in expected:
        assert any(
            same_file(p["file"], path, e)
            and p["line"] == e.line
            and e.fragment in p["message"]
            and (e.hint is None or (p["hint"] and e.hint in p["hint"]))
            for p in problems
        ), f"no problem at {e.where(path)} saying {e.fragment!r}: {json.dumps(problems, ensure_ascii=False, indent=1)}"
    assert len(problems) == len(expected), json.dumps(problems, ensure_ascii=False, indent=1)


def test_every_problem_of_a_file_is_listed(cli: Cli):
    path = CORPUS / "invalid" / "multiple_problems.yaml"
    expected = expectations(path)
    assert len(expected) >= 5

    text = cli("validate", str(path))
    check_exit(text, 2)
    assert text.stderr.count("error: ") == len(expected)
    assert text.stderr.count("hint: did you mean") == 2

    as_json = cli("validate", "--json", str(path))
    check_exit(as_json, 2)
    problems = json.loads(as_json.stdout)["files"][0]["problems"]
    assert sorted((Path(p["file"]).name, p["line"]) for p in problems) == sorted(
        (Path(e.file).name if e.file else path.name, e.line) for e in expected
    )


def test_template_errors_also_name_the_campaign_file(cli: Cli):
    paths = [p for p in INVALID if located_elsewhere(p) and not xfail_reason(p)]
    assert paths
    result = cli("validate", *map(str, paths))
    check_exit(result, 2)
    missing = [p.name for p in paths if str(p) not in result.stderr]
    assert not missing, f"campaign files not named: {missing}\n{result.stderr}"


def test_the_whole_corpus_in_a_real_process(corpus_config: Path, clean_env):
    """One subprocess over every invalid file: real stderr, exit 2, no traceback, nothing on stdout."""
    command = "from orchestrator.cli import main; main()"
    argv = [sys.executable, "-c", command, "--config", str(corpus_config), "validate", *map(str, INVALID)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.count("error: ") >= len(INVALID)
    for path in INVALID:
        if not located_elsewhere(path) and not xfail_reason(path):
            assert f"{path}:" in done.stderr, path.name


def test_a_missing_file_is_invalid_input(cli: Cli, tmp_path: Path):
    missing = tmp_path / "no_such_campaign.yaml"
    result = cli("validate", str(missing))
    check_exit(result, 2)
    assert f"{missing}: file not found" in result.stderr


# ---------------------------------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("path", corpus_params(VALID))
def test_valid_file_validates(cli: Cli, path: Path):
    result = cli("validate", str(path))
    check_exit(result, 0)
    assert result.stderr == ""
    name = yaml.safe_load(path.read_text(encoding="utf-8"))["name"]
    assert result.stdout == f"ok  {path} ({name})\n"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_repo_example_validates_with_the_example_config(clean_env, path: Path):
    result = Cli(None, config=str(EXAMPLE_CONFIG))("validate", str(path))
    check_exit(result, 0)
    assert result.stdout.startswith(f"ok  {path} (")
    assert result.stderr == ""


def test_several_files_exit_2_if_any_is_invalid_and_report_the_valid_ones(cli: Cli):
    good = [CORPUS / "valid" / "minimal.yaml", CORPUS / "valid" / "conditions_tour.yaml"]
    bad = [CORPUS / "invalid" / "fact_typo_recency_dys.yaml", CORPUS / "invalid" / "cron_hour_25.yaml"]
    files = [good[0], bad[0], good[1], bad[1]]

    result = cli("validate", *map(str, files))
    check_exit(result, 2)
    assert result.stdout.splitlines() == [f"ok  {good[0]} (minimal)", f"ok  {good[1]} (conditions-tour)"]
    for path in bad:
        assert f"error: {path}:" in result.stderr
    for path in good:
        assert str(path) not in result.stderr

    as_json = cli("validate", "--json", *map(str, files))
    check_exit(as_json, 2)
    document = json.loads(as_json.stdout)
    assert document["valid"] is False
    assert [(f["file"], f["valid"]) for f in document["files"]] == [(str(p), p in good) for p in files]
    for entry in document["files"]:
        assert bool(entry["problems"]) is not entry["valid"]
        if entry["valid"]:
            assert entry["campaign"]
        for problem in entry["problems"]:
            assert problem["file"] == entry["file"]
            assert isinstance(problem["line"], int) and isinstance(problem["column"], int)
            assert problem["message"]
    hints = [p["hint"] for f in document["files"] for p in f["problems"]]
    assert "did you mean 'recency_days'?" in hints


def test_all_valid_files_exit_0(cli: Cli):
    files = [p for p in VALID if not xfail_reason(p)]
    result = cli("validate", *map(str, files))
    check_exit(result, 0)
    assert len(result.stdout.splitlines()) == len(files)

    as_json = cli("validate", "--json", *map(str, files))
    check_exit(as_json, 0)
    document = json.loads(as_json.stdout)
    assert document["valid"] is True
    assert all(f["valid"] and f["problems"] == [] for f in document["files"])


# ---------------------------------------------------------------------------------------------------- JSON Schema


@pytest.fixture(scope="module")
def jsonschema():
    return pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def campaign_schema() -> dict:
    result = Cli(None)("schema")
    check_exit(result, 0)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def schema_validator(jsonschema, campaign_schema: dict):
    return jsonschema.Draft202012Validator(campaign_schema)


def test_schema_is_a_valid_json_schema(jsonschema, campaign_schema: dict):
    jsonschema.Draft202012Validator.check_schema(campaign_schema)
    assert campaign_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"name", "segment"} <= set(campaign_schema["required"])
    facts = campaign_schema["$defs"]["Condition"]["anyOf"][0]["properties"]
    assert {"recency_days", "rfm_segment", "payment_share", "all", "any", "not", "segment"} <= set(facts)


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.stem) for p in SCHEMA_VALID] + [pytest.param(p, id=f"example-{p.stem}") for p in EXAMPLES],
)
def test_schema_accepts_valid_files(schema_validator, path: Path):
    data = parse_yaml(path.read_text(encoding="utf-8"), path.name).data  # YAML 1.2, as the product reads it
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator.iter_errors(data)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "name",
    [
        "unknown_key_shedule",
        "unknown_key_dispatch",
        "unknown_step_key",
        "when_unknown_fact",
        "name_is_a_list",
        "steps_is_a_mapping",
        "frequency_cap_zero",
        "dispatch_unknown_strategy",
        "fact_typo_recency_dys",
        "operator_typo_gte_",
        "fact_value_choice_typo",
        "segment_empty_mapping",
    ],
)
def test_schema_rejects_invalid_files(schema_validator, name: str):
    data = parse_yaml((CORPUS / "invalid" / f"{name}.yaml").read_text(encoding="utf-8"), name).data
    assert not schema_validator.is_valid(data)


def test_lint_advice_is_printed_without_failing_the_file(cli: Cli, tmp_path: Path):
    campaign = tmp_path / "wide.yaml"
    campaign.write_text(
        "name: wide\nsegment: {recency_days: {gte: 90}}\nmessage:\n  email:\n    subject: Hi\n"
        '    html: \'<table width="800"><tr><td><img src="https://x.example/a.png"> {{ customer.name }}</td></tr>'
        "</table>'\n",
        encoding="utf-8",
    )
    result = cli("validate", str(campaign))
    check_exit(result, 0)
    assert result.stdout == f"ok  {campaign} (wide)\n"
    assert "warning:" in result.stderr and "alt" in result.stderr and "650" in result.stderr
    as_json = cli("validate", str(campaign), "--json")
    check_exit(as_json, 0)
    [entry] = json.loads(as_json.stdout)["files"]
    assert entry["valid"] is True and len(entry["warnings"]) == 2


# ---------------------------------------------------------------------------------------------------- schema parity

# Invalid files whose problem JSON Schema cannot express; the schema accepts them and only validate rejects them.
# Every other invalid file must be rejected by the schema too (a file not listed here that the schema accepts
# fails the test, and so does a listed one the schema starts to reject: then take it off the list).
SCHEMA_CANNOT_SAY = {
    "between_low_above_high": "compares two values of one list with each other",
    "condition_too_deep": "a recursive $ref has no depth limit",
    "cron_hour_25": "cron syntax needs a cron parser",
    "cron_minute_61": "cron syntax needs a cron parser",
    "cron_too_few_fields": "cron syntax needs a cron parser",
    "duplicate_step_names": "uniqueItems compares whole steps, not their names",
    "email_bad_from": "an e-mail address is checked by the e-mail plugin's parser",
    "email_two_html_bodies": "a rule of the e-mail plugin's own validator, not of its fields",
    "email_without_body": "a rule of the e-mail plugin's own validator, not of its fields",
    "inline_offer_without_offer": "templates are compiled and rendered",
    "inline_subject_syntax_error": "templates are compiled and rendered",
    "inline_text_undefined": "templates are compiled and rendered",
    "named_segment_broken_definition": "named segments live in the config, not in the campaign",
    "named_segment_cycle": "named segments live in the config, not in the campaign",
    "named_segment_undefined": "named segments live in the config, not in the campaign",
    "quiet_hours_empty_window": "start equal to end needs comparing two times (09:00-9:00)",
    "schedule_every_overflow": "the 100-year bound depends on the unit (36500d, 5214w, ...)",
    "schedule_unknown_timezone": "the time zone database is the machine's, not the schema's",
    "template_include_missing": "templates are files read at validation",
    "template_missing": "templates are files read at validation",
    "template_not_utf8": "templates are files read at validation",
    "template_offer_without_offer": "templates are compiled and rendered",
    "template_path_absolute": "templates are files read at validation",
    "template_path_escape": "templates are files read at validation",
    "template_sandbox": "templates are compiled and rendered",
    "template_syntax_error": "templates are compiled and rendered",
    "template_undefined_in_block": "templates are compiled and rendered",
    "template_undefined_variable": "templates are compiled and rendered",
    "within_overflow": "the 100-year bound depends on the unit (36500d, 5214w, ...)",
}


NOT_A_DOCUMENT = object()


def _document(path: Path):
    """The file as the product reads it (YAML 1.2), or NOT_A_DOCUMENT when it is not YAML at all (a syntax
    error, a Python tag, a duplicate key, bytes that are not UTF-8): JSON Schema never sees those."""
    from orchestrator.errors import InputError

    try:
        return parse_yaml(path.read_bytes().decode("utf-8"), path.name).data
    except (InputError, UnicodeDecodeError):
        return NOT_A_DOCUMENT


@pytest.fixture(scope="module")
def verdicts(corpus_config: Path) -> dict[Path, bool]:
    """validate's verdict on every corpus file and example, from one ``validate --json`` per configuration."""
    found: dict[Path, bool] = {}
    with pytest.MonkeyPatch.context() as env:
        for name in ("ORCHESTRATOR_CONFIG", "ORCHESTRATOR_DATABASE_URL", "ORCHESTRATOR_DEBUG"):
            env.delenv(name, raising=False)
        for config, paths in ((corpus_config, [*VALID, *INVALID]), (EXAMPLE_CONFIG, EXAMPLES)):
            result = Cli(None, config=str(config))("validate", "--json", *map(str, paths))
            found.update({Path(f["file"]): f["valid"] for f in json.loads(result.stdout)["files"]})
    return found


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=f"valid-{p.stem}") for p in VALID]
    + [pytest.param(p, id=f"example-{p.stem}") for p in EXAMPLES]
    + [pytest.param(p, id=f"invalid-{p.stem}") for p in INVALID],
)
def test_schema_and_validate_agree(schema_validator, verdicts: dict[Path, bool], path: Path):
    """The JSON Schema is as strict as validate wherever JSON Schema can say it."""
    valid = verdicts[path]
    assert valid is (path not in INVALID)
    data = _document(path)
    if data is NOT_A_DOCUMENT:
        assert not valid and path.stem.startswith(("yaml_", "condition_nested")), path.name
        return
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator.iter_errors(data)]
    if valid or path.stem in SCHEMA_CANNOT_SAY:
        assert not errors, "\n".join(errors)
    else:
        assert errors, f"validate rejects {path.name} but the schema accepts it"
