"""Inbound SMS replies: an opt-out keyword ("T", "退订", "STOP", …) suppresses the number on the ``sms`` channel.

``handle_reply`` decides one reply; ``orchestrator import sms-replies FILE`` feeds it a CSV export of the
gateway's replies (``phone,text,received_at``). Keywords come from ``channels.sms.opt_out_keywords`` (default
``[T, TD, STOP, UNSUBSCRIBE, 退订, N]``) and match the whole reply once normalised: trimmed of spaces and
punctuation, full-width folded to half-width, upper case, so "ｔｄ", " 退订。" and "Stop!" all count; a reply that
merely contains a keyword ("不要退订") does not. Example::

    channels:
      sms:
        opt_out_keywords: [T, TD, STOP, 退订, 取消]

The suppression is of the bare number (E.164) with reason ``unsubscribed`` and source ``sms_reply``, dated when
the reply was received; adding it again changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from orchestrator_plugins.sms.config import load_config
from orchestrator_plugins.sms.text import normalise_reply
from sqlalchemy import Connection

from orchestrator.api import (
    CsvSource,
    InputError,
    add_suppression,
    emit_json,
    parse_datetime,
    suppression_target,
    to_utc,
)

CHANNEL = "sms"
REASON = "unsubscribed"
SOURCE = "sms_reply"
COLUMNS = ("phone", "text", "received_at")
MAX_NOTE = 200


def opt_out_keywords(settings: Any) -> frozenset[str]:
    """``channels.sms.opt_out_keywords``, normalised as replies are."""
    keywords = load_config(settings.channels.get(CHANNEL), settings).opt_out_keywords
    return frozenset(normalise_reply(k) for k in keywords) - {""}


def is_opt_out(text: str, keywords: frozenset[str]) -> bool:
    return normalise_reply(text) in keywords


def handle_reply(conn: Connection, settings: Any, phone: str, text: str, received_at: datetime) -> bool:
    """Suppress ``phone`` on sms if ``text`` is an opt-out keyword; whether the number is now suppressed.

    True also when the same suppression was already there (a second "T" is still an opt-out). ``InputError``
    for a phone number that does not parse.
    """
    return _apply(conn, settings, phone, text, received_at, opt_out_keywords(settings)) != "ignored"


def apply_reply(conn: Connection, settings: Any, phone: str, text: str, received_at: datetime) -> str:
    """One reply, as the service receives it: "suppressed", "unchanged" or "ignored" (see ``_apply``)."""
    return _apply(conn, settings, phone, text, received_at, opt_out_keywords(settings))


def _apply(conn: Connection, settings: Any, phone: str, text: str, received_at: datetime, keywords) -> str:
    """ "suppressed" (a new entry), "unchanged" (already suppressed) or "ignored" (not an opt-out)."""
    if not is_opt_out(text, keywords):
        return "ignored"
    target = suppression_target(conn, settings, phone=phone)
    note = f"replied {text.strip()[:MAX_NOTE]!r}"
    result = add_suppression(
        conn, target, channel=CHANNEL, reason=REASON, note=note, source=SOURCE, now=to_utc(received_at)
    )
    return "suppressed" if result.added else "unchanged"


# --- import sms-replies FILE -----------------------------------------------------------------------------------------


@dataclass
class ReplyImport:
    """``read == suppressed + unchanged + ignored``."""

    file: str
    read: int = 0
    suppressed: int = 0  # new suppressions
    unchanged: int = 0  # opt-outs of numbers already suppressed on sms
    ignored: int = 0  # replies that are not opt-outs

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "sms_replies", **asdict(self)}


def import_replies(engine, settings: Any, path: str | Path) -> ReplyImport:
    """One transaction: a bad row stops the import with its line, and nothing is written."""
    path = Path(path)
    result = ReplyImport(file=str(path))
    keywords = opt_out_keywords(settings)
    with CsvSource(path, COLUMNS) as source:
        positions = {name.lower(): i for i, name in enumerate(source.header)}
        width = len(source.header)
        with engine.begin() as conn:
            for line, fields in source.records():
                if len(fields) != width:
                    raise source.error(
                        f"the row has {len(fields)} fields but the header has {width}",
                        line,
                        hint="quote values that contain commas",
                    )
                phone, text, received = (fields[positions[name]].strip() for name in COLUMNS)
                try:
                    received_at = parse_datetime(received, settings.tz)
                except ValueError as exc:
                    raise source.error(
                        f"received_at: {exc}", line, hint="e.g. 2026-03-01T10:15:00+08:00 (no offset: local time)"
                    ) from None
                try:
                    outcome = _apply(conn, settings, phone, text, received_at, keywords)
                except InputError as exc:
                    raise source.error(
                        f"phone: {exc.message.removeprefix('--phone: ')}",
                        line,
                        hint=f"numbers without +country code are read as {settings.default_region}",
                    ) from None
                result.read += 1
                setattr(result, outcome, getattr(result, outcome) + 1)
    return result


@click.command("sms-replies")
@click.argument("file", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_obj
def sms_replies_command(app, file: str, as_json: bool) -> None:
    """Import inbound SMS replies (CSV: phone,text,received_at); opt-outs suppress the number on sms.

    A reply counts as an opt-out when it is one of channels.sms.opt_out_keywords (default T, TD, STOP,
    UNSUBSCRIBE, 退订, N), ignoring case, full-width letters, spaces and punctuation. A bad row stops the import
    with its line and nothing is written; importing the same file again adds nothing.
    """
    result = import_replies(app.engine, app.settings, file)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(
        f"{result.file}: {result.read:,} replies read: {result.suppressed:,} suppressed, "
        f"{result.unchanged:,} already suppressed, {result.ignored:,} ignored"
    )


def register(cli: click.Group) -> None:
    """Add ``sms-replies`` to the ``import`` group (a top-level ``import-sms-replies`` if there is none)."""
    group = cli.commands.get("import")
    if isinstance(group, click.Group):
        group.add_command(sms_replies_command)
    else:
        cli.add_command(sms_replies_command, "import-sms-replies")
