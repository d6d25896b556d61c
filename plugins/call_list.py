"""The built-in ``call_list`` channel: outbound call lists for a call centre, one CSV file per run and queue.

Each message becomes one row of ``<outbox>/<campaign>-run<run_id>/<queue>.csv`` (UTF-8 with a BOM, so that Excel
shows Chinese names correctly) with the columns::

    delivery_key, customer_id, name, phone_masked, phone, priority, agent, due, script, campaign

``delivery_key`` is the delivery's idempotency key, ``run{run_id}-d{delivery_id}``: the call centre sends it back
with each call's outcome (``orchestrator import call-outcomes FILE``, see ``orchestrator.data.call_outcomes``).
The provider id recorded in the ledger is ``<file name>:<row>``, the row as a spreadsheet numbers it (the header
is row 1). Every row is flushed and fsynced before its result is yielded, so a crash loses no row already recorded
as sent; a row re-sent after a crash (its ``delivery_key`` already in the file) is not written twice. Several
processes may append to the same file: each append holds an exclusive lock on it.

Campaign files (``message: {call_list: {...}}``)::

    call_list:
      template: calls/winback.txt.j2   # the call script, a template file; or inline: script: "您好{{ customer.name }}…"
      queue: winback                   # the agent queue, and the file name (default "default")
      priority: 2                      # 1 (highest) … 5 (default 3)
      due_in_days: 2                   # call by: the run's date in the configured time zone plus this (default 2)

Configuration (``channels.call_list`` in the config file)::

    outbox: outbox/call_list           # relative to the config file's folder
    consent: sms                       # the consent checked before a member is called (default sms)
    phone_columns: [masked, full]      # which phone columns to include (default both)
    assign: round_robin                # or by_region
    agents:                            # per queue; round_robin: agent = agents[delivery_id % n], stable on resume
      winback: [王芳, 李娜]
    regions:                           # by_region: province -> agent; other provinces fall back to round_robin
      浙江: 王芳
      上海: 李娜
    xlsx: false                        # true: also write <queue>.xlsx beside each CSV when the run is done

The dispatcher's keys (``retry``, ``breaker``, ``rate_limit``, ``cost_per_message``, ``cost_per_segment``)
belong to it and are ignored
here. Every cell goes through ``orchestrator.api.spreadsheet_cell``: a cell a spreadsheet would evaluate as a
formula (starting with ``=``, ``+``, ``-``, ``@``, TAB or CR, such as a customer_id ``=cmd|...``) gets a leading
``'`` in the CSV, while numbers and E.164 phones (``+8613812345678``) are written as they are. In the workbook every
cell but ``priority`` is a text cell formatted as text (``@``): phones and ids show as written (not 8.61381E+12,
leading zeros kept), a formula-looking value is plain text and stays text when edited, so it needs no quote there.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.api import (
    Channel,
    CompiledMessage,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    TemplateLoader,
    hookimpl,
    load_channel_config,
    mask_phone,
    parse_delivery_key,
    phone_parser,
    spreadsheet_cell,
)

try:  # POSIX: appends from several dispatch processes are serialised; elsewhere one process writes a file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

NAME = "call_list"
DEFAULT_OUTBOX = "outbox/call_list"
BOM = b"\xef\xbb\xbf"
ROW_END = "\r\n"  # rows end with CRLF; newlines inside a value are normalised to LF, so CRLF only ends a row
_SAFE_NAME = re.compile(r"[^\w.-]+")  # \w keeps Chinese campaign and queue names readable


def columns_for(phone_columns: Sequence[str]) -> list[str]:
    phones = [c for c, kind in (("phone_masked", "masked"), ("phone", "full")) if kind in phone_columns]
    return ["delivery_key", "customer_id", "name", *phones, "priority", "agent", "due", "script", "campaign"]


class CallListConfig(BaseModel):
    """``channels.call_list``."""

    model_config = ConfigDict(extra="forbid")

    outbox: str = DEFAULT_OUTBOX
    consent: str | None = "sms"
    phone_columns: list[Literal["masked", "full"]] = Field(default_factory=lambda: ["masked", "full"], min_length=1)
    agents: dict[str, list[str]] = Field(default_factory=dict)
    assign: Literal["round_robin", "by_region"] = "round_robin"
    regions: dict[str, str] = Field(default_factory=dict)
    xlsx: bool = False

    @field_validator("agents")
    @classmethod
    def _no_empty_agent(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for queue, names in value.items():
            if any(not str(n).strip() for n in names):
                raise ValueError(f"queue {queue!r} has an empty agent name")
        return value

    @model_validator(mode="after")
    def _regions_for_by_region(self) -> CallListConfig:
        if self.assign == "by_region" and not self.regions:
            raise ValueError("assign: by_region needs regions: {province: agent}")
        return self


def load_config(raw: Any, settings: Any) -> CallListConfig:
    """The channel's configuration, or an ``InputError`` at its line of the config file."""
    hint = "keys: outbox, consent, phone_columns, agents, assign (round_robin|by_region), regions, xlsx"
    return load_channel_config(CallListConfig, raw, settings, ("channels", NAME), hint)


class CallListOptions(MessageOptions):
    """``message: {call_list: {...}}``: the call script (``template`` file or inline ``script``) and its row."""

    model_config = ConfigDict(extra="forbid")

    script: str | None = None
    queue: str = Field(default="default", min_length=1, max_length=64)
    priority: int = Field(default=3, ge=1, le=5)
    due_in_days: int = Field(default=2, ge=0, le=365)

    @field_validator("queue")
    @classmethod
    def _queue_is_a_file_name(cls, value: str) -> str:
        if not re.fullmatch(r"[\w-]+", value):
            raise ValueError(f"queue {value!r}: use letters, digits, '_' and '-' (it names the call list file)")
        return value

    @model_validator(mode="after")
    def _one_script(self) -> CallListOptions:
        if self.text is not None:
            raise ValueError("a call list has a `script` (inline) or a `template` (file), not `text`")
        if self.template and self.script:
            raise ValueError("give the call script as either `template` (a file) or `script` (inline), not both")
        if not (self.template or self.script):
            raise ValueError("a call list needs a call script: `template` (a file) or `script` (inline)")
        return self


class CallListChannel(Channel):
    name = NAME
    contact_field = "phone"
    consent = "sms"
    options_model = CallListOptions
    is_message = True  # a call reaches the member: it counts toward frequency caps
    facts_through_templates = True  # render reads facts only through its templates

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self.options = load_config(config or {}, settings)
        self.consent = self.options.consent  # the instance's consent is what policies check
        self.columns = columns_for(self.options.phone_columns)
        self._files: dict[Path, _CallFile] = {}
        self._region_code = phonenumbers.country_code_for_region(settings.default_region)

    def validate_contact(self, value: str) -> str | None:
        try:
            return phone_parser(self.settings.default_region)(str(value))
        except ValueError:
            return None

    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, CallListOptions) else CallListOptions.model_validate(options)
        if opts.template:
            script = templates.load(opts.template, html=False)
        else:
            script = templates.from_string(opts.script or "", label="inline call script")
        warnings = []
        if not self.options.agents.get(opts.queue) and self.options.assign == "round_robin":
            warnings.append(
                f"call_list queue {opts.queue!r} has no agents in channels.call_list.agents: its rows get no agent"
            )
        return CompiledMessage(channel=self.name, options=opts, templates={"script": script}, warnings=tuple(warnings))

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        opts = compiled.options
        assert isinstance(opts, CallListOptions)
        script = compiled.templates["script"].render(context).strip()
        customer = context.get("customer") or {}
        now = context.get("now")
        run_time = now if isinstance(now, datetime) else datetime.now(self.settings.tz)
        # everything send needs goes into the parts: they are persisted and may be sent by another process
        parts = {
            "script": script,
            "name": str(customer.get("name") or ""),
            "province": str(customer.get("province") or ""),
            "queue": opts.queue,
            "priority": str(opts.priority),
            "due": due_date(run_time, opts.due_in_days, self.settings.tz).isoformat(),
        }
        return RenderedMessage(channel=self.name, parts=parts, measures={"script_chars": len(script)})

    # --- send ------------------------------------------------------------------------------------------------

    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        outbox = self.settings.resolve_path(self.options.outbox)
        for message in messages:
            yield self._send_one(outbox, message)

    def _send_one(self, outbox: Path, message: OutgoingMessage) -> SendResult:
        parts = message.message.parts
        if "script" not in parts:
            return SendResult.permanent("the rendered message has no call script (render it with call_list)")
        key = message.idempotency_key or f"{message.campaign}:{message.customer_id}"
        path = outbox / self._folder(message) / f"{_safe(parts.get('queue') or 'default')}.csv"
        try:
            file = self._file(path)
            row = file.append(_cell(key), self._row(message, key))  # the key as the file holds it
        except (OSError, ValueError) as exc:
            return SendResult.transient(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}")
        return SendResult.sent(provider_id=f"{path.name}:{row}")

    def _folder(self, message: OutgoingMessage) -> str:
        parsed = parse_delivery_key(message.idempotency_key or "")
        run_id = message.run_id if message.run_id is not None else (parsed[0] if parsed else None)
        campaign = _safe(message.campaign or "campaign")
        return f"{campaign}-run{run_id}" if run_id is not None else campaign

    def _file(self, path: Path) -> _CallFile:
        if path not in self._files:
            self._files[path] = _CallFile(path, self.columns)
        return self._files[path]

    def _row(self, message: OutgoingMessage, key: str) -> dict[str, str]:
        parts = message.message.parts
        queue = parts.get("queue") or "default"
        row = {
            "delivery_key": key,
            "customer_id": message.customer_id,
            "name": parts.get("name", ""),
            "phone_masked": self._masked(message.contact),
            "phone": message.contact,
            "priority": parts.get("priority", ""),
            "agent": self._agent(message, queue, parts.get("province", "")),
            "due": parts.get("due", ""),
            "script": parts["script"],
            "campaign": message.campaign,
        }
        return {column: _cell(value) for column, value in row.items()}

    def _masked(self, phone: str) -> str:
        """``138****5678`` for a number of the default region, ``+1 415***2671`` for others."""
        masked = mask_phone(phone)
        return masked.removeprefix(f"+{self._region_code} ")

    def _agent(self, message: OutgoingMessage, queue: str, province: str) -> str:
        if self.options.assign == "by_region" and province in self.options.regions:
            return self.options.regions[province]
        agents = self.options.agents.get(queue) or []
        if not agents:
            return ""
        # the delivery id is fixed when the delivery is planned: the same row gets the same agent on every resume
        # and in every process; without one, a stable hash of the key does the same
        parsed = parse_delivery_key(message.idempotency_key or "")
        number = message.delivery_id if message.delivery_id is not None else (parsed[1] if parsed else None)
        if number is None:
            number = zlib.crc32((message.idempotency_key or message.customer_id).encode())
        return agents[number % len(agents)]

    def close(self) -> None:
        files, self._files = self._files, {}
        for file in files.values():
            try:
                if self.options.xlsx:
                    file.write_xlsx()
            except Exception as exc:  # the calls are listed already; a missing workbook must not fail the run
                log.warning("call_list: cannot write the workbook beside %s: %s", file.path, exc)
            finally:
                file.close()


def _safe(name: str) -> str:
    return _SAFE_NAME.sub("_", name).strip("._") or "_"


def _cell(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula (CSV injection), with newlines as LF only."""
    return spreadsheet_cell(str(value).replace("\r\n", "\n").replace("\r", "\n"))


class _CallFile:
    """One call list CSV, opened for appending; knows the keys and the row count of what is in it."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.default_columns = columns
        self.columns: list[str] | None = None  # the file's own header once it has one
        self.keys: dict[str, int] = {}  # delivery_key -> row number (header is row 1)
        self.rows = 1
        self.known = 0  # bytes of the file already read into keys / rows
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.fd is not None
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Read what was appended since we last looked (an earlier run of this delivery, another process)."""
        assert self.fd is not None
        size = os.fstat(self.fd).st_size
        if size == self.known:
            return
        if size < self.known:  # replaced or truncated behind our back: read it all again
            self.known, self.rows, self.keys, self.columns = 0, 1, {}, None
        data = os.pread(self.fd, size - self.known, self.known)
        last_end = data.rfind(ROW_END.encode())
        complete = last_end + len(ROW_END) if last_end >= 0 else 0
        if complete < len(data):
            # a row cut short by a crash: it was never yielded as sent, so it is dropped and written again
            os.ftruncate(self.fd, self.known + complete)
            data = data[:complete]
        if self.known == 0 and data.startswith(BOM):
            data = data[len(BOM) :]
            self.known += len(BOM)
        records_ = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        if self.columns is None and records_:
            self.columns = records_.pop(0)
        key_at = self.columns.index("delivery_key") if self.columns and "delivery_key" in self.columns else 0
        for record in records_:
            self.rows += 1
            if key_at < len(record):
                self.keys.setdefault(record[key_at], self.rows)
        self.known += len(data)

    def append(self, key: str, values: Mapping[str, str]) -> int:
        """Write the row unless its key is there already; the row's number either way. Durable on return."""
        with self._locked():
            self._catch_up()
            if key in self.keys:
                return self.keys[key]
            data = b""
            if self.columns is None:
                self.columns = list(self.default_columns)
                data = BOM + _csv_line(self.columns).encode()
            # after a crash the file keeps the header it was created with: rows follow it
            data += _csv_line([values.get(column, "") for column in self.columns]).encode()
            _write_all(self.fd, data)
            os.fsync(self.fd)
            self.known += len(data)
            self.rows += 1
            self.keys[key] = self.rows
            return self.rows

    def write_xlsx(self) -> None:
        """``<queue>.xlsx`` beside the CSV, with every row the CSV holds; written to a temp file, then renamed."""
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        with self._locked():
            self._catch_up()
            assert self.fd is not None
            size = os.fstat(self.fd).st_size
            text = os.pread(self.fd, size, 0).removeprefix(BOM).decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows:
            return
        workbook = Workbook(write_only=True)
        sheet = workbook.create_sheet(self.path.stem[:31])
        header = rows[0]
        for number, record in enumerate(rows):
            cells = []
            for column, value in zip(header, record, strict=False):
                if number and column == "priority" and value.isdigit():
                    cells.append(int(value))
                    continue
                if value.startswith("'") and spreadsheet_cell(value[1:]) == value:
                    value = value[1:]  # a workbook's text cell is never a formula: the CSV's guard is not needed
                cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("", value))
                cell.data_type = "s"  # phone numbers, ids and "=…" stay text …
                cell.number_format = "@"  # … and so does what someone types over them
                cells.append(cell)
            sheet.append(cells)
        target = self.path.with_suffix(".xlsx")
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".", suffix=".xlsx.tmp")
        os.close(fd)
        try:
            workbook.save(temp)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _csv_line(values: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=ROW_END).writerow(values)
    return buffer.getvalue()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def due_date(run_time: datetime, days: int, tz: Any) -> date:
    """The call-by date: the run's date in the configured time zone plus ``days``."""
    return run_time.astimezone(tz).date() + timedelta(days=days)


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [CallListChannel]
