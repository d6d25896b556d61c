"""The winner rule of A/B variants: ``winner: {metric: conversion, after: 3d}`` on a step.

When a campaign runs, each step with a winner rule looks at the campaign's earlier runs scheduled at least
``after`` before this one: per variant, the conversion rate of its contacted members (as the report measures it,
as of this run's time). The variant with the highest rate wins when, against every other variant, Newcombe's 95 %
interval for the difference excludes zero (not a tie); then every member of the step in this run gets it, and the
decision, with its figures, is recorded in the run's summary. Otherwise the variants go on sharing the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.results.report import Scope, build_report
from orchestrator.results.stats import newcombe_interval


@dataclass(frozen=True)
class Decision:
    step: str
    variant: str
    judged_runs: list[int]
    rates: dict[str, float | None]
    lowest_margin: tuple[float, float]  # the interval against the closest other variant

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "judged_runs": self.judged_runs,
            "rates": self.rates,
            "uplift_ci95_vs_next": list(self.lowest_margin),
        }


def decide(engine: Engine, settings: Settings, campaign: str, steps: list, at: datetime) -> dict[str, Decision]:
    """Winners by step name, for the steps (``StepPlan``) with a winner rule that one is found for."""
    decisions: dict[str, Decision] = {}
    for step in steps:
        if step.winner is None or not step.variants:
            continue
        try:
            document = build_report(engine, settings, Scope(campaign, None, at, runs_until=at - step.winner.after))
        except InputError:  # the campaign's first run: nothing to judge yet
            return {}
        found = _winner(step.name, [v.name for v in step.variants], document)
        if found is not None:
            decisions[step.name] = found
    return decisions


def _winner(step: str, names: list[str], document: dict[str, Any]) -> Decision | None:
    rows = {row["variant"]: row for row in document.get("by_variant", []) if row["step"] == step}
    counts = {name: (rows[name]["conversions"]["treatment"], rows[name]["contacted"]) for name in names if name in rows}
    if len(counts) < len(names) or any(n == 0 for _x, n in counts.values()):
        return None
    ranked = sorted(counts, key=lambda name: counts[name][0] / counts[name][1], reverse=True)
    best = ranked[0]
    intervals = [newcombe_interval(*counts[best], *counts[other]) for other in ranked[1:]]
    if any(ci is None or ci[0] <= 0 for ci in intervals):
        return None
    return Decision(
        step=step,
        variant=best,
        judged_runs=[run["run_id"] for run in document["runs"]],
        rates={name: counts[name][0] / counts[name][1] for name in names},
        lowest_margin=min(intervals, key=lambda ci: ci[0]),
    )
