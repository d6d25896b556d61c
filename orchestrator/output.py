"""Printing results: exactly one JSON document with ``--json``, readable tables otherwise."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any

import click
from rich.console import Console


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # a Decimal with at most 15 significant digits prints as the same digits through float's shortest repr
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def to_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=_default, indent=2)


def emit_json(data: Any) -> None:
    click.echo(to_json(data))


def stream_json(rows: Iterable[Any]) -> None:
    """One JSON list, written as it streams so memory stays flat."""
    first = True
    click.echo("[", nl=False)
    for row in rows:
        click.echo(("\n" if first else ",\n") + "\n".join("  " + x for x in to_json(row).splitlines()), nl=False)
        first = False
    click.echo("\n]" if not first else "]")


def warn(text: str) -> None:
    """A one-line warning or note for the person at the terminal, on stderr (stdout stays the command's result)."""
    click.echo(text, err=True)


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


#: the exit status when the reader of stdout went away (``orchestrator deliveries | head``): 128 + SIGPIPE, what a
#: shell reports for a Unix tool stopped by a closed pipe
BROKEN_PIPE_EXIT = 141


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader has gone, so that the interpreter's final flush of what is
    still buffered neither fails nor prints "Exception ignored … BrokenPipeError"."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (an in-process test runner)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def local_time(value: datetime | None, tz: tzinfo) -> str | None:
    """A stored (UTC) time for a person to read: in the shop's zone, to the second, with its offset."""
    return value.astimezone(tz).isoformat(timespec="seconds") if value is not None else None


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit with status 1 here; the command line's own handling gives every command the same status
        self.quiet = True
        raise BrokenPipeError


def console() -> Console:
    """A rich console for tables and reports on stdout that ends like every command when its reader goes away."""
    return _Console()
