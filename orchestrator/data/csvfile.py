"""Reading import CSV files as a stream, and writing the rows we reject.

The reader works on bytes so that it can (a) count bytes for the progress bar, (b) decode each physical line
on its own and so name the exact line of an undecodable byte, and (c) spot binary files before the CSV parser
produces nonsense. Splitting on ``\\n`` before decoding is safe: in UTF-8 (and in GBK) the byte 0x0A never occurs
inside a multi-byte character. ``csv.reader`` is fed those decoded lines, so its ``line_num`` counts physical
lines and a record's first line is simply the previous record's last line plus one, quoted newlines included.
"""

from __future__ import annotations

import csv
import difflib
import glob
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from orchestrator.data.spreadsheet import spreadsheet_cell
from orchestrator.errors import InputError, RuntimeFailure

try:  # POSIX: a side file being written is locked, so the next import can tell a live one from a killed one's
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 1 << 20  # a physical line longer than this is not a CSV a shop exported
_MAGIC = {  # well-known binary formats people export by mistake, and what to do instead
    b"PK\x03\x04": "an Excel workbook or ZIP archive; export the sheet as 'CSV UTF-8'",
    b"\xd0\xcf\x11\xe0": "an old Excel (.xls) workbook; export the sheet as 'CSV UTF-8'",
    b"\x1f\x8b": "a gzip archive; decompress it first",
    b"%PDF": "a PDF document",
    b"\xff\xfe": "UTF-16 text; re-save it as UTF-8",
    b"\xfe\xff": "UTF-16 text; re-save it as UTF-8",
}
MAX_GUESS_CANDIDATES = 1000  # header names difflib compares a missing column with: it is slow, headers may be huge
STALE_AGE = 24 * 3600  # without file locks (Windows), a side file's temp file this old is a killed import's
_NAME_NOISE = re.compile(r"[\W_]+")  # "E-Mail", "Customer ID": spellings of email, customer_id


def reject_path(path: Path) -> Path:
    """Where the rejects of ``path`` go: ``<stem>.rejects.csv`` in the same folder."""
    return path.with_name(f"{path.stem}.rejects.csv")


class CsvSource:
    """One import file, opened and checked; iterate :meth:`records` for ``(line, fields)`` pairs.

    Every problem with the file as a whole (missing, empty, binary, not UTF-8, unparsable, bad header) is an
    ``InputError`` naming the file and, where there is one, the line.

    ``columns`` must all be in the header. ``known`` (if given) are every column the file may have: a header name
    that is only a different spelling of one of them (``E-Mail``, ``Customer ID``) is refused, since as an extra
    column it would be kept as an attribute and its values silently not read.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], known: tuple[str, ...] = ()):
        self.path = path
        self.name = str(path)
        self.stream = _open(path)
        try:
            self.size = os.fstat(self.stream.fileno()).st_size
            self.bytes_read = 0
            self.has_bom = False
            self._line = 0
            self._reader = csv.reader(self._text_lines(), strict=True)
            self.header = self._read_header(columns, known or columns)
        except BaseException:
            self.stream.close()
            raise

    def __enter__(self) -> CsvSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()

    def error(self, message: str, line: int | None = None, hint: str | None = None) -> InputError:
        return InputError(message, file=self.name, line=line, hint=hint)

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """Data records with the physical line each starts on; blank lines are skipped."""
        while True:
            start = self._reader.line_num + 1
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise self._parse_error(exc, start) from None
            if fields and fields != [""]:
                yield start, fields

    def _parse_error(self, exc: csv.Error, start: int) -> InputError:
        if "unexpected end of data" in str(exc):
            return self.error("a quoted value that starts in this record is never closed", start)
        return self.error(
            f"cannot parse the CSV record that starts on this line: {exc}",
            start,
            hint='a value containing quotes must be quoted itself, with each quote doubled: "say ""hi"""',
        )

    def _read_header(self, columns: tuple[str, ...], known: tuple[str, ...]) -> list[str]:
        head = self.stream.peek(8) if hasattr(self.stream, "peek") else b""
        for magic, what in _MAGIC.items():
            if head.startswith(magic):
                raise self.error(f"this is not a CSV text file: it looks like {what}")
        records = self.records()
        first = next(records, None)
        if first is None:
            raise self.error("the file is empty: expected a header row", hint=f"the header is: {','.join(known)}")
        header = [name.strip() for name in first[1]]
        self._check_header(header, columns, known, first[0])
        return header

    def _check_header(self, header: list[str], columns: tuple[str, ...], known: tuple[str, ...], line: int) -> None:
        """Duplicates, missing required columns, misspelt known ones; linear in the header's length."""
        hint = _header_hint(columns, known)
        lowered = [name.lower() for name in header]
        seen: dict[str, int] = {}
        for position, name in enumerate(lowered, 1):
            if name in seen:
                raise self.error(
                    f"the column {name!r} appears more than once in the header (columns {seen[name]} and {position})",
                    line,
                )
            if name:
                seen[name] = position
        missing = [c for c in columns if c not in seen]
        separator = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
        if missing and separator:  # a spreadsheet saved with another separator: one column holding every name
            shown = "TAB" if separator == "\t" else repr(separator)
            raise self.error(
                f"the header is one column, {header[0][:60]!r}: the file separates columns with {shown}, not commas",
                line,
                hint=f"save it as CSV UTF-8 (comma-separated); {hint}",
            )
        if missing:
            unknown = [name for name in lowered if name not in known][:MAX_GUESS_CANDIDATES]
            guesses = [f"{m!r} (found {g[0]!r})" for m in missing if (g := difflib.get_close_matches(m, unknown, 1))]
            message = f"missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
            if guesses:
                message += f"; did you mean {', '.join(guesses)}?"
            raise self.error(message, line, hint=hint)
        spellings = {_NAME_NOISE.sub("", column): column for column in known}
        for name in header:
            meant = spellings.get(_NAME_NOISE.sub("", name.lower()))
            if meant is not None and meant != name.lower():
                raise self.error(
                    f"the column {name!r} is not a column name we know; did you mean {meant!r}?",
                    line,
                    hint=f"rename it to {meant} (a column we do not know is kept as an attribute, not read); {hint}",
                )

    def _text_lines(self) -> Iterator[str]:
        """Physical lines, decoded one by one, each checked for NUL bytes and undecodable bytes."""
        readline = self.stream.readline
        while raw := readline(MAX_LINE_BYTES):
            self._line += 1
            self.bytes_read += len(raw)
            if self._line == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
                self.has_bom = True
            if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise self.error("this line is longer than 1 MiB: is this really a CSV file?", self._line)
            if b"\x00" in raw:
                raise self.error("the file contains NUL bytes: it is binary, not CSV text", self._line)
            yield self._decode(raw)

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            column = len(raw[: exc.start].decode("utf-8", "replace")) + 1
            guess = ""
            try:
                raw.decode("gb18030")
                guess = " (it looks like GBK/GB18030, common for Chinese Excel)"
            except UnicodeDecodeError:
                pass
            raise self.error(
                f"the file is not UTF-8{guess}: byte 0x{raw[exc.start]:02x} in column {column} cannot be decoded",
                self._line,
                hint="re-save the file as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f GB18030 -t UTF-8 in.csv > out.csv)",
            ) from None


def _header_hint(columns: tuple[str, ...], known: tuple[str, ...]) -> str:
    optional = [c for c in known if c not in columns]
    hint = f"the header must include: {','.join(columns)}"
    return hint + (f"; it may also have: {','.join(optional)}" if optional else "")


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError("no such file", file=str(path)) from None
    except IsADirectoryError:
        raise InputError("this is a folder, not a CSV file", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot open the file: {exc.strerror}", file=str(path)) from None


class SideFile:
    """A CSV written beside the input (rejects, refusals), created only when a row is written.

    Rows go to a temporary file in the same folder; :meth:`commit` puts it in place (or removes a stale file of
    that name from an earlier import when nothing was written this time), :meth:`discard` throws it away, so a
    failed import leaves the folder as it was.

    The rows are personal data: the temporary file (and so the file it becomes) is readable by its owner only
    (``mkstemp``'s 0600). An import killed with ``kill -9`` leaves its temporary file behind; it holds an
    exclusive lock on it while alive, so the next import writing the same side file removes every temporary file
    of that name that nobody holds. Every cell goes through :func:`spreadsheet_cell` (CSV injection).
    """

    def __init__(self, path: Path, header: list[str], *, bom: bool, what: str):
        self.path = path
        self.header = header
        self.encoding = "utf-8-sig" if bom else "utf-8"  # round-trips through Excel like the input
        self.what = what
        self.count = 0
        self._file: IO[str] | None = None
        self._temp: Path | None = None
        self._writer = None
        remove_stale_temp_files(path)

    def write(self, row: list) -> None:
        if self._writer is None:
            self._writer = self._create()
        self._writer.writerow([spreadsheet_cell(value) for value in row])
        self.count += 1

    def _create(self):
        try:
            fd, temp = tempfile.mkstemp(prefix=_temp_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise RuntimeFailure(f"cannot write the {self.what} next to the input: {exc}") from None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until the file is closed: "an import is writing this"
        self._file = open(fd, "w", encoding=self.encoding, newline="")  # noqa: SIM115 (closed in commit/discard)
        self._temp = Path(temp)
        writer = csv.writer(self._file)
        writer.writerow([spreadsheet_cell(name) for name in self.header])
        return writer

    def commit(self) -> str | None:
        if self._file is None or self._temp is None:
            self.path.unlink(missing_ok=True)
            return None
        self._file.flush()
        if fcntl is None:  # pragma: no cover - Windows cannot rename an open file
            self._file.close()
        os.replace(self._temp, self.path)  # still locked: another import's clean-up cannot take it first
        self._file.close()
        return str(self.path)

    def discard(self) -> None:
        if self._file is not None and self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._file.close()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by imports that were killed; the ones removed."""
    removed = []
    for temp in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        if _is_abandoned(temp):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _is_abandoned(temp: Path) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: no locks to ask, only the age
        try:
            return time.time() - temp.stat().st_mtime > STALE_AGE
        except OSError:
            return False
    try:
        fd = os.open(temp, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live import holds it
    finally:
        os.close(fd)
    return True


class RejectWriter(SideFile):
    """The reject file: ``line`` and ``reason``, then the original columns of each rejected row."""

    def __init__(self, source: CsvSource):
        header = [*_reject_columns(source.header), *source.header]
        super().__init__(reject_path(source.path), header, bom=source.has_bom, what="reject file")

    def reject(self, line: int, fields: list[str], reason: str) -> None:
        self.write([line, reason, *fields])


def _reject_columns(header: list[str]) -> list[str]:
    """``line`` and ``reason``, renamed if the input already has columns of those names."""
    taken = {name.lower() for name in header}
    names = []
    for name in ("line", "reason"):
        while name in taken:
            name = f"reject_{name}"
        names.append(name)
    return names
