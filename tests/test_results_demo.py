"""The demo's response model (docs/domain.md, "Results"): seeded, with a real lift over the control group, through
the real importer; and the results settings, checked like every other input."""

from __future__ import annotations

import json
from collections import Counter

from orchestrator.config import Settings
from orchestrator.demo.responses import RESPONSES, exposed, probability, write_responses
from tests.test_results_report import AT, build_case, load


def test_contacted_members_answer_more_than_held_out_ones(engine):
    exposures, sales = build_case()
    load(engine, exposures, sales)
    members = list(exposed(engine))
    assert Counter(m.contacted for m in members) == Counter(e.group == "treatment" for e in exposures)
    for campaign in {m.campaign for m in members}:
        chances = {m.contacted: probability(m) for m in members if m.campaign == campaign and m.code is None}
        if len(chances) == 2:
            assert chances[True] > chances[False]
    # the named demo campaigns: a lift everywhere but for the dormant members' preview
    assert all(lift > 0 for name, (_base, lift) in RESPONSES.items() if name != "wake-dormant-members")
    assert RESPONSES["wake-dormant-members"][1] == 0


def test_same_seed_same_orders(engine, tmp_path):
    exposures, sales = build_case()
    load(engine, exposures, sales)
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (first, second, other):
        folder.mkdir()
    write_responses(engine, Settings(), first, seed=1)
    write_responses(engine, Settings(), second, seed=1)
    write_responses(engine, Settings(), other, seed=2)
    assert (first / "responses.csv").read_bytes() == (second / "responses.csv").read_bytes()
    assert (first / "responses.csv").read_bytes() != (other / "responses.csv").read_bytes()


def test_responses_through_the_importer_show_in_the_report(run_cli, engine):
    exposures, sales = build_case()
    load(engine, exposures, sales)
    before = json.loads(run_cli("report", "spring", "--at", AT.isoformat(), "--json").output)
    result = run_cli("demo-data", "--responses", "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["orders"] > 0 and answer["paid_import"]["rejected"] == 0
    after = json.loads(run_cli("report", "spring", "--at", AT.isoformat(), "--json").output)
    assert after["conversions"]["treatment"] > before["conversions"]["treatment"]
    assert after["offers"]["redeemed"] >= before["offers"]["redeemed"]


def test_bad_results_settings_are_input_errors(run_cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("results:\n  margin: 2\n", encoding="utf-8")
    result = run_cli("--config", str(config), "report")
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "margin" in result.output
