"""Progress of long commands (run, dispatch, resume, replay) as rich bars on the terminal, with counts and rate.

The engine reports what it did through a ``Progress`` (``advance("planning", n, total=…)``); the command line
decides whether anyone sees it: bars on stderr when both output streams are a terminal and ``--json`` is not given,
and ``SILENT`` otherwise, so piped output and JSON stay exactly what they were. Bars are transient: they vanish when
the command ends, leaving its normal output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# what each task is called on the bar
LABELS = {
    "planning": "planning members",
    "sending": "sending messages",
    "ticks": "replaying ticks",
}


class Progress:
    """Receives progress; this base class shows nothing (``SILENT``)."""

    def advance(self, task: str, n: int = 1, *, total: int | None = None) -> None:
        """``n`` more items of ``task`` done (``total``: how many there will be, when known)."""


SILENT = Progress()


class Bars(Progress):
    """One rich bar per task, created on its first ``advance``."""

    def __init__(self, progress: Any):
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def advance(self, task: str, n: int = 1, *, total: int | None = None) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(LABELS.get(task, task), total=total)
        elif total is not None:
            self._progress.update(self._tasks[task], total=total)
        self._progress.advance(self._tasks[task], n)


def wanted(as_json: bool = False) -> bool:
    """Bars only for a person watching: both streams a terminal, no ``--json``."""
    return not as_json and sys.stderr.isatty() and sys.stdout.isatty()


@contextmanager
def bars(enabled: bool) -> Iterator[Progress]:
    """``Bars`` on stderr while the block runs when ``enabled``, else ``SILENT``."""
    if not enabled:
        yield SILENT
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f}/s" if speed else "", style="progress.data.speed")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn())
    with RichProgress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield Bars(progress)
