"""``orchestrator import call-outcomes FILE``: what happened when the call centre called the members on a call list.

The file is a UTF-8 CSV with a header row (Excel's "CSV UTF-8" with a BOM is fine)::

    delivery_key,outcome,called_at,agent,note
    run12-d345,reached,2026-03-02T10:15:00+08:00,王芳,
    run12-d346,do_not_call,2026-03-02 10:20,王芳,asked not to be called again

- ``delivery_key`` is the first column of the call list (``orchestrator_plugins.call_list``): the dispatcher's
  idempotency key ``run{run_id}-d{delivery_id}``, which names one delivery exactly. Instead of it a file may give
  ``customer_id`` and ``campaign``: the member's most recent call_list delivery in that campaign created before
  ``called_at`` (or, if none, the most recent one).
- ``outcome``: ``reached``, ``no_answer``, ``declined``, ``converted`` or ``do_not_call``.
- ``called_at``: ISO 8601; without an offset it is in the configured time zone.
- ``agent`` and ``note`` are optional; they are kept on the suppression a ``do_not_call`` adds.

Each row sets the delivery's ``outcome`` and ``outcome_at``. A row older than the outcome already recorded does not
overwrite it (importing an earlier file again cannot undo a later call), and the same outcome at the same time is
``unchanged``: importing a file twice changes nothing. ``do_not_call`` also suppresses the member on the channels
``call_list`` and ``sms`` (reason ``do_not_contact``, source ``call_outcome``), always, whatever else the row did.

The file is checked as a whole before anything is written: a bad header, an unknown outcome, an unknown delivery or
a bad time stops the import with exit status 2, naming the file and each bad line, and nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from orchestrator import suppressions
from orchestrator.config import Settings
from orchestrator.data.csvfile import CsvSource
from orchestrator.db.models import Campaign, CampaignRun, Customer, Delivery
from orchestrator.errors import InputError, InputErrors
from orchestrator.ledger import delivery_key, parse_delivery_key
from orchestrator.timeutil import parse_datetime, to_utc, utcnow

CHANNEL = "call_list"
OUTCOMES = ("reached", "no_answer", "declined", "converted", "do_not_call")
SUPPRESS_CHANNELS = ("call_list", "sms")
SOURCE = "call_outcome"
COLUMNS = ("delivery_key", "customer_id", "campaign", "outcome", "called_at", "agent", "note")
LISTED_STATES = ("sent", "pending")  # pending: the row was written but the ledger had not recorded it yet
MAX_PROBLEMS = 20
LOOKUP_BATCH = 500
FUTURE_SLACK = timedelta(days=1)  # clocks differ; a call a day in the future is a typo
FIX_HINT = "correct these rows (or remove them) and import the file again; nothing was recorded"


@dataclass
class CallOutcomeImport:
    """What an import did: ``read`` rows; ``recorded`` set an outcome, ``unchanged`` did not (already recorded,
    or older than the recorded one); ``suppressed`` suppression entries added by ``do_not_call`` rows."""

    file: str
    read: int = 0
    recorded: int = 0
    unchanged: int = 0
    suppressed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "call_outcomes", **asdict(self)}


@dataclass
class _Row:
    line: int
    outcome: str
    called_at: datetime  # UTC
    delivery_id: int | None = None
    run_id: int | None = None
    customer_id: str | None = None
    campaign: str | None = None
    agent: str | None = None
    note: str | None = None
    # resolved from the database
    customer_pk: int | None = None


def import_file(engine: Engine, settings: Settings, path: str | Path) -> CallOutcomeImport:
    path = Path(path)
    result = CallOutcomeImport(file=str(path))
    with CsvSource(path, ()) as source:
        rows, problems = _read(source, settings)
    result.read = len(rows)
    now = utcnow()
    with engine.begin() as conn:  # one transaction: every row, or (on a problem) none
        problems += _resolve(conn, rows)  # every bad line is named at once, not one kind of problem per attempt
        if problems:
            raise _problems(str(path), problems)
        for row in sorted(rows, key=lambda r: (r.called_at, r.line)):  # the latest call of a delivery wins
            result.outcomes[row.outcome] = result.outcomes.get(row.outcome, 0) + 1
            if _record(conn, row, now):
                result.recorded += 1
            else:
                result.unchanged += 1
            if row.outcome == "do_not_call":
                result.suppressed += _suppress(conn, row, now)
    return result


def _read(source: CsvSource, settings: Settings) -> tuple[list[_Row], list[InputError]]:
    """The rows that parse, and a problem for each row that does not."""
    positions = {name.lower(): i for i, name in enumerate(source.header)}
    header_hint = "the header is: delivery_key,outcome,called_at,agent,note (or customer_id,campaign instead of key)"
    missing = [c for c in ("outcome", "called_at") if c not in positions]
    if missing:
        raise source.error(f"the header has no column {', '.join(missing)}", 1, hint=header_hint)
    by_key = "delivery_key" in positions
    if not by_key and not ("customer_id" in positions and "campaign" in positions):
        raise source.error(
            "the header names no delivery: it needs delivery_key, or customer_id and campaign", 1, hint=header_hint
        )
    width = len(source.header)
    latest = utcnow() + FUTURE_SLACK
    rows: list[_Row] = []
    problems: list[InputError] = []
    for line, fields in source.records():
        if len(fields) > width and not any(f.strip() for f in fields[width:]):
            fields = fields[:width]  # trailing empty cells, as spreadsheets write them

        def value(name: str, fields: list[str] = fields) -> str:
            index = positions.get(name)
            return fields[index].strip() if index is not None and index < len(fields) else ""

        errors: list[str] = []
        if len(fields) != width:
            errors.append(f"the row has {len(fields)} fields but the header has {width}")
        outcome = value("outcome").lower()
        if outcome not in OUTCOMES:
            shown = repr(value("outcome")) if value("outcome") else "empty"
            errors.append(f"outcome {shown} is not one of {', '.join(OUTCOMES)}")
        called_at = None
        try:
            called_at = to_utc(parse_datetime(value("called_at"), settings.tz))
            if called_at > latest:
                errors.append(f"called_at {value('called_at')!r} is in the future")
        except ValueError as exc:
            errors.append(f"called_at: {exc}")
        row = _Row(line, outcome, called_at or utcnow(), agent=value("agent") or None, note=value("note") or None)
        key = value("delivery_key")
        if key:
            parsed = parse_delivery_key(key)
            if parsed is None:
                errors.append(
                    f"delivery_key {key!r} is not a call list key: run<run id>-d<delivery id>, e.g. run12-d345"
                )
            else:
                row.run_id, row.delivery_id = parsed
        elif value("customer_id") and value("campaign"):
            row.customer_id, row.campaign = value("customer_id"), value("campaign")
        else:
            errors.append("the row names no delivery: give delivery_key (or customer_id and campaign)")
        if errors:
            problems.append(InputError("; ".join(errors), line=line))
        else:
            rows.append(row)
    return rows, problems


def _resolve(conn: Connection, rows: list[_Row]) -> list[InputError]:
    """Find each row's delivery (and member); a problem per row whose delivery is not a listed call."""
    problems: list[InputError] = []
    by_id = [r for r in rows if r.delivery_id is not None]
    found: dict[int, Any] = {}
    for chunk in _chunks(sorted({r.delivery_id for r in by_id}), LOOKUP_BATCH):
        query = select(Delivery.id, Delivery.run_pk, Delivery.channel, Delivery.state, Delivery.customer_pk).where(
            Delivery.id.in_(chunk)
        )
        found.update((d.id, d) for d in conn.execute(query))
    for row in by_id:
        delivery = found.get(row.delivery_id)
        key = delivery_key(row.run_id, row.delivery_id)
        if delivery is None or delivery.run_pk != row.run_id:
            problems.append(InputError(f"delivery_key {key!r}: no such delivery in this database", line=row.line))
        elif delivery.channel != CHANNEL:
            problems.append(
                InputError(f"delivery_key {key!r} is a {delivery.channel} delivery, not a call_list one", line=row.line)
            )
        elif delivery.state not in LISTED_STATES:
            problems.append(
                InputError(f"delivery_key {key!r} was never put on a call list (it is {delivery.state})", line=row.line)
            )
        else:
            row.customer_pk = delivery.customer_pk
    for row in (r for r in rows if r.delivery_id is None):
        delivery = _by_customer(conn, row)
        if delivery is None:
            problems.append(
                InputError(
                    f"customer {row.customer_id!r} has no call_list delivery in campaign {row.campaign!r}",
                    line=row.line,
                )
            )
        else:
            row.delivery_id, row.customer_pk = delivery.id, delivery.customer_pk
    return problems


def _by_customer(conn: Connection, row: _Row):
    query = (
        select(Delivery.id, Delivery.customer_pk, Delivery.created_at)
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .join(Customer, Customer.id == Delivery.customer_pk)
        .where(
            Campaign.name == row.campaign,
            Customer.customer_id == row.customer_id,
            Delivery.channel == CHANNEL,
            Delivery.state.in_(LISTED_STATES),
        )
        .order_by(CampaignRun.scheduled_at.desc(), Delivery.id.desc())
    )
    candidates = conn.execute(query).all()
    before = [d for d in candidates if d.created_at <= row.called_at]
    return (before or candidates or [None])[0]


def _record(conn: Connection, row: _Row, now: datetime) -> bool:
    """Set the outcome unless the same one is recorded, or a later call's; whether anything changed."""
    outcome, outcome_at = conn.execute(
        select(Delivery.outcome, Delivery.outcome_at).where(Delivery.id == row.delivery_id)
    ).one()
    if outcome_at is not None and (row.called_at < outcome_at or (row.called_at, row.outcome) == (outcome_at, outcome)):
        return False
    conn.execute(
        update(Delivery)
        .where(Delivery.id == row.delivery_id)
        .values(outcome=row.outcome, outcome_at=row.called_at, updated_at=now)
    )
    return True


def _suppress(conn: Connection, row: _Row, now: datetime) -> int:
    customer_id = conn.execute(select(Customer.customer_id).where(Customer.id == row.customer_pk)).scalar_one()
    target = suppressions.Target(customer_pk=row.customer_pk, customer_id=customer_id)
    note = "; ".join(p for p in (f"agent {row.agent}" if row.agent else None, row.note) if p) or None
    added = 0
    for channel in SUPPRESS_CHANNELS:
        result = suppressions.add(
            conn, target, channel=channel, reason="do_not_contact", note=note, source=SOURCE, now=now
        )
        added += result.added
    return added


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _problems(file: str, problems: list[InputError]) -> InputError:
    shown = sorted(problems, key=lambda p: p.line or 0)[:MAX_PROBLEMS]
    for problem in shown:
        problem.file = file
    shown[-1].hint = FIX_HINT
    if len(problems) > MAX_PROBLEMS:
        shown.append(InputError(f"… and {len(problems) - MAX_PROBLEMS} more bad rows", file=file, hint=FIX_HINT))
        shown[-2].hint = None
    return shown[0] if len(shown) == 1 else InputErrors(file, shown)


# --- the command -----------------------------------------------------------------------------------------------------
