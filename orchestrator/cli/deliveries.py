"""The suppression list (``suppress …``) and the delivery ledger (``deliveries``)."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import desc, func, select

from orchestrator import suppressions
from orchestrator.db.models import DELIVERY_STATES, SUPPRESSION_REASONS, Campaign, CampaignRun, Customer, Delivery
from orchestrator.errors import InputError
from orchestrator.masking import mask_contact, mask_text
from orchestrator.output import emit_json, local_time, stream_json
from orchestrator.plugin_manager import registry

LIST_BATCH = 500


def register(cli: click.Group) -> None:
    cli.add_command(suppress_group)
    cli.add_command(deliveries_command)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _selectors(command):
    for option in reversed(
        (
            click.option("--customer", metavar="ID", help="A customer, by customer_id."),
            click.option("--email", metavar="ADDR", help="An e-mail address (normalised as the importer does)."),
            click.option("--phone", metavar="NUMBER", help="A phone number (normalised to E.164)."),
        )
    ):
        command = option(command)
    return command


def _loaded_channels() -> list[str]:
    return sorted(registry().channels)


def _channel(value: str | None) -> str | None:
    try:
        return suppressions.parse_channel(value, _loaded_channels())
    except ValueError as exc:
        raise InputError(f"--channel: {exc}") from None


@click.group("suppress")
def suppress_group() -> None:
    """Manage the suppression list: who must not be contacted, on one channel or on all of them.

    An entry names a customer (--customer ID) or a bare address (--email ADDR, --phone NUMBER); without
    --channel it applies to every channel. Every campaign run honours the list.
    """


@suppress_group.command("add")
@_selectors
@click.option("--channel", metavar="CH", help="Only this channel (default: all channels).")
@click.option(
    "--reason",
    type=click.Choice(SUPPRESSION_REASONS),
    default=suppressions.DEFAULT_REASON,
    show_default=True,
    help="Why.",
)
@click.option("--note", metavar="TEXT", help="A free-text note kept with the entry.")
@json_option
@click.pass_obj
def add_command(app, customer, email, phone, channel, reason, note, as_json) -> None:
    """Add an entry; adding the same target and channel again changes nothing."""
    channel = _channel(channel)
    settings = app.settings
    with app.engine.begin() as conn:
        target = suppressions.resolve(conn, settings, customer=customer, email=email, phone=phone)
        result = suppressions.add(conn, target, channel=channel, reason=reason, note=note)
    entry = _masked(result.entry)
    if as_json:
        emit_json({"added": result.added, **entry})
        return
    what = f"{target.describe()} on {entry['channel']} channel{'s' if entry['channel'] == 'all' else ''}"
    if result.added:
        click.echo(f"suppressed {what} ({entry['reason']})")
    else:
        since = local_time(entry["created_at"], app.settings.tz)
        click.echo(f"{what} was already suppressed ({entry['reason']}, {since}); nothing changed")


@suppress_group.command("remove")
@_selectors
@click.option("--channel", metavar="CH", help="Only the entry of this channel ('all': the all-channels entry).")
@json_option
@click.pass_obj
def remove_command(app, customer, email, phone, channel, as_json) -> None:
    """Remove a target's entries (all of them, or only the one for --channel)."""
    any_channel = channel is None
    channel = _channel(channel)
    settings = app.settings
    with app.engine.begin() as conn:
        target = suppressions.resolve(conn, settings, customer=customer, email=email, phone=phone)
        removed = suppressions.remove(conn, target, channel=channel, any_channel=any_channel)
    if as_json:
        emit_json({"removed": removed, "customer_id": target.customer_id, "address": mask_contact(target.address)})
        return
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} for {target.describe()}")


@suppress_group.command("list")
@click.option("--channel", metavar="CH", help="Entries that apply to this channel (its own and all-channel ones).")
@click.option("--reason", type=click.Choice(SUPPRESSION_REASONS), help="Only entries with this reason.")
@json_option
@click.pass_obj
def list_command(app, channel, reason, as_json) -> None:
    """List the entries, oldest first, one line each (with --json: one JSON list)."""
    channel = _channel(channel)
    with app.engine.connect() as conn:
        rows = (_masked(e) for e in suppressions.entries(conn, channel=channel, reason=reason))
        if as_json:
            stream_json(rows)
            return
        for e in rows:
            who = e["customer_id"] if e["customer_id"] is not None else e["address"]
            note = f"  {e['note']}" if e["note"] else ""
            click.echo(
                f"{who}\t{e['channel']}\t{e['reason']}\t{e['source'] or '-'}\t"
                f"{local_time(e['created_at'], app.settings.tz)}{note}"
            )


def _masked(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry for output: its address masked, and any address or phone number quoted in its note (a provider's
    reply) too, as every listing does."""
    return {**entry, "address": mask_contact(entry["address"]), "note": mask_text(entry["note"])}


@suppress_group.command("import")
@click.argument("file", type=click.Path(dir_okay=True))
@json_option
@click.pass_obj
def import_command(app, file: str, as_json: bool) -> None:
    """Load entries from a CSV: customer_id, email, phone, channel, reason, note.

    Each row names at least one of customer_id, email, phone (an entry is added for each). Bad rows go to
    <name>.rejects.csv beside FILE (suppressions.csv → suppressions.rejects.csv) with their line and reason;
    re-importing the same file adds nothing.
    """
    result = suppressions.import_file(app.engine, app.settings, file, _loaded_channels())
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(
        f"{result.file}: read {result.read}, loaded {result.loaded}, unchanged {result.unchanged}, "
        f"rejected {result.rejected} ({result.entries_added} entries added)"
    )
    if result.reject_file:
        click.echo(f"rejected rows and reasons: {result.reject_file}")


@suppress_group.command("unsubscribe")
@click.argument("token")
@json_option
@click.pass_obj
def unsubscribe_command(app, token: str, as_json: bool) -> None:
    """Honour a signed unsubscribe TOKEN, or the whole link (https://…?token=… or https://…/u/TOKEN): the
    customer is unsubscribed on the link's channel (all channels for a link signed for "all").

    Links are honoured for unsubscribe_token_days (config, default 365) after they were sent."""
    settings = app.settings
    with app.engine.begin() as conn:
        result = suppressions.unsubscribe(conn, settings, token)
    entry = _masked(result.entry)
    if as_json:
        emit_json({"added": result.added, **entry})
        return
    state = "unsubscribed" if result.added else "was already unsubscribed"
    click.echo(f"customer {entry['customer_id']} {state} from {entry['channel']}")


# --- deliveries ------------------------------------------------------------------------------------------------------


@click.command("deliveries")
@click.option("--campaign", metavar="NAME", help="Only this campaign's deliveries.")
@click.option("--run", "run_id", type=int, metavar="RUN_ID", help="Only this run's deliveries.")
@click.option("--state", type=click.Choice(DELIVERY_STATES), help="Only deliveries in this state (e.g. failed).")
@click.option("--reason", metavar="REASON", help="Only deliveries with this skip / failure reason.")
@click.option("--customer", "customer_id", metavar="ID", help="Only this customer's deliveries.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N rows.")
@click.option("--summary", is_flag=True, help="Counts by campaign run and state (and skips by reason) instead.")
@json_option
@click.pass_obj
def deliveries_command(app, campaign, run_id, state, reason, customer_id, limit, summary, as_json) -> None:
    """The delivery ledger, newest first: one row per intended message and what became of it.

    Contacts are masked (a***@example.com, +86 138****5678), and so are addresses and phone numbers quoted in
    a provider's reply (last_error). What could not be delivered is listed by
    `orchestrator deliveries --state failed`.
    """
    filters = _filters(campaign, run_id, state, reason, customer_id)
    tz = app.settings.tz
    with app.engine.connect() as conn:
        if summary:
            data = _summary(conn, filters)
            if as_json:
                emit_json(data)
                return
            for run in data:
                skipped = ", ".join(f"{k} {v}" for k, v in run["skipped"].items())
                states = ", ".join(f"{k} {v}" for k, v in run["states"].items())
                click.echo(
                    f"{run['campaign']}  run {run['run_id']}  {local_time(run['scheduled_at'], tz)}  "
                    f"total {run['total']}: {states}"
                    + (f"  (skipped: {skipped})" if skipped else "")
                    + (f"  control group {run['control']} members" if run["control"] else "")
                )
            return
        query = _rows_query().where(*filters).order_by(desc(Delivery.created_at), desc(Delivery.id))
        if limit:
            query = query.limit(limit)
        rows = (_as_row(r) for r in conn.execute(query.execution_options(yield_per=LIST_BATCH)))
        if as_json:
            stream_json(rows)
            return
        click.echo("\t".join(_text_header(tz)))
        for r in rows:
            click.echo("\t".join(_text_cells(r, tz)))


def _text_header(tz) -> list[str]:
    """The text listing's columns: tab-separated, one header line, so ``cut -f`` and spreadsheets can read it."""
    zone = f" ({tz.key})" if getattr(tz, "key", None) else ""
    return [
        "id",
        "campaign",
        "run",
        "customer",
        "channel",
        "step",
        "state",
        "reason",
        "contact",
        "attempts",
        f"sent_at{zone}",
        "last_error",
    ]


def _text_cells(r: dict[str, Any], tz) -> list[str]:
    values = (
        r["id"],
        r["campaign"],
        r["run_id"],
        r["customer_id"],
        r["channel"],
        r["step"],
        r["state"],
        r["reason"],
        r["contact"],
        r["attempts"],
        local_time(r["sent_at"], tz),
        r["last_error"],
    )
    return [str(v) if v is not None else "-" for v in values]


def _filters(campaign, run_id, state, reason, customer_id) -> list:
    filters = []
    if campaign is not None:
        filters.append(Campaign.name == campaign)
    if run_id is not None:
        filters.append(Delivery.run_pk == run_id)
    if state is not None:
        filters.append(Delivery.state == state)
    if reason is not None:
        filters.append(Delivery.reason == reason)
    if customer_id is not None:
        filters.append(Customer.customer_id == customer_id)
    return filters


def _joined(query):
    return (
        query.select_from(Delivery)
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .join(Customer, Customer.id == Delivery.customer_pk)
    )


def _rows_query():
    return _joined(
        select(
            Delivery.id,
            Delivery.run_pk,
            Campaign.name.label("campaign"),
            CampaignRun.scheduled_at,
            Customer.customer_id,
            Delivery.channel,
            Delivery.step,
            Delivery.follow_up,
            Delivery.state,
            Delivery.reason,
            Delivery.contact,
            Delivery.attempts,
            Delivery.provider_id,
            Delivery.last_error,
            Delivery.sent_at,
            Delivery.next_attempt_at,
            Delivery.deferred_until,
            Delivery.outcome,
        )
    )


def _as_row(r) -> dict[str, Any]:
    return {
        "id": r.id,
        "run_id": r.run_pk,
        "campaign": r.campaign,
        "scheduled_at": r.scheduled_at,
        "customer_id": r.customer_id,
        "channel": r.channel,
        "step": r.step,  # a follow-up's rows carry its name here
        "follow_up": r.follow_up or None,  # and here: None for the run's own messages
        "state": r.state,
        "reason": r.reason,
        "contact": mask_contact(r.contact),
        "attempts": r.attempts,
        "provider_id": r.provider_id,
        "last_error": mask_text(r.last_error),  # a provider's reply may quote the address
        "sent_at": r.sent_at,
        "next_attempt_at": r.next_attempt_at,  # a pending message's retry time
        "deferred_until": r.deferred_until,  # a deferred message's time (quiet hours)
        "outcome": r.outcome,  # what happened after sending, where a channel reports it (call outcomes)
    }


def _summary(conn, filters: list) -> list[dict[str, Any]]:
    query = (
        _joined(
            select(
                Campaign.name,
                CampaignRun.id,
                CampaignRun.scheduled_at,
                Delivery.state,
                Delivery.reason,
                func.count().label("n"),
            )
        )
        .where(*filters)
        .group_by(Campaign.name, CampaignRun.id, CampaignRun.scheduled_at, Delivery.state, Delivery.reason)
        .order_by(Campaign.name, CampaignRun.scheduled_at, CampaignRun.id)
    )
    runs: dict[int, dict[str, Any]] = {}
    for name, run_pk, scheduled_at, state, reason, n in conn.execute(query):
        run = runs.setdefault(
            run_pk,
            {"campaign": name, "run_id": run_pk, "scheduled_at": scheduled_at, "total": 0, "states": {}, "skipped": {}},
        )
        run["total"] += n
        run["states"][state] = run["states"].get(state, 0) + n
        if state == "skipped":
            key = reason or "unknown"
            run["skipped"][key] = run["skipped"].get(key, 0) + n
    # held_out counts rows (one per channel a member would have had); the control group is counted in members,
    # as run and dry-run report it
    control = _joined(select(CampaignRun.id, func.count(func.distinct(Delivery.customer_pk))))
    control = control.where(*filters, Delivery.state == "held_out").group_by(CampaignRun.id)
    members = {run_pk: n for run_pk, n in conn.execute(control)}
    for run_pk, run in runs.items():
        run["states"] = dict(sorted(run["states"].items()))
        run["skipped"] = dict(sorted(run["skipped"].items()))
        run["control"] = members.get(run_pk, 0)
    return list(runs.values())
