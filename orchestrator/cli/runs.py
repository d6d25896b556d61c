"""``orchestrator runs``: the campaign runs, newest first, with their messages counted by delivery state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
from sqlalchemy import Connection, desc, func, select

from orchestrator.db.models import RUN_STATES, Campaign, CampaignRun, Delivery
from orchestrator.output import local_time, stream_json

#: every delivery state, in the order they are shown
MESSAGE_STATES = ("sent", "pending", "deferred", "failed", "skipped", "held_out")
COUNT_BATCH = 500  # runs whose messages are counted by one query


def register(cli: click.Group) -> None:
    cli.add_command(runs_command)


@click.command("runs")
@click.option("--campaign", metavar="NAME", help="Only this campaign's runs.")
@click.option("--state", type=click.Choice(RUN_STATES), help="Only runs in this state (waiting: messages left).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (a list).")
@click.pass_obj
def runs_command(app, campaign, state, limit, as_json) -> None:
    """The campaign runs, newest scheduled time first: state, audience and messages by delivery state.

    A run's audience is shown once its planning finished (it is recorded with the run's summary). held_out
    counts rows, one per channel a control-group member would have had. The messages themselves are listed by
    `orchestrator deliveries --run RUN_ID`.
    """
    tz = app.settings.tz
    with app.engine.connect() as conn:
        rows = _runs(conn, campaign, state, limit)
        if as_json:
            stream_json(rows)
            return
        zone = f" ({tz.key})" if getattr(tz, "key", None) else ""
        click.echo("\t".join(["id", "campaign", f"scheduled_at{zone}", "state", "audience", *MESSAGE_STATES]))
        for r in rows:
            cells = [r["id"], r["campaign"], local_time(r["scheduled_at"], tz), r["state"], r.get("audience", "-")]
            click.echo("\t".join(str(c) for c in [*cells, *(r["messages"][s] for s in MESSAGE_STATES)]))


def _runs(conn: Connection, campaign: str | None, state: str | None, limit: int | None) -> Iterator[dict[str, Any]]:
    query = (
        select(CampaignRun.id, Campaign.name, CampaignRun.scheduled_at, CampaignRun.state, CampaignRun.summary)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .order_by(desc(CampaignRun.scheduled_at), desc(CampaignRun.id))
    )
    if campaign is not None:
        query = query.where(Campaign.name == campaign)
    if state is not None:
        query = query.where(CampaignRun.state == state)
    if limit:
        query = query.limit(limit)
    runs = conn.execute(query).all()  # runs are few next to their messages, which are counted batch by batch
    for start in range(0, len(runs), COUNT_BATCH):
        batch = runs[start : start + COUNT_BATCH]
        counts = _counts(conn, [r.id for r in batch])
        for r in batch:
            row: dict[str, Any] = {"id": r.id, "campaign": r.name, "scheduled_at": r.scheduled_at, "state": r.state}
            audience = (r.summary or {}).get("audience")
            if audience is not None:  # recorded when the run's planning finished
                row["audience"] = audience
            row["messages"] = {s: counts.get((r.id, s), 0) for s in MESSAGE_STATES}
            yield row


def _counts(conn: Connection, run_ids: list[int]) -> dict[tuple[int, str], int]:
    query = (
        select(Delivery.run_pk, Delivery.state, func.count())
        .where(Delivery.run_pk.in_(run_ids))
        .group_by(Delivery.run_pk, Delivery.state)
    )
    return {(run_pk, state): n for run_pk, state, n in conn.execute(query)}
