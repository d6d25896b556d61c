"""The ``--html FILE`` option of ``analyze`` and ``report``: the path checked before any work, the page written
from the same values ``--json`` prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from orchestrator.errors import InputError
from orchestrator.output import to_json, warn

HTML_OPTION = click.option(
    "--html",
    "html_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as a self-contained HTML page with charts (viewable offline).",
)


def check_page_path(path: Path) -> None:
    """Refuse, before any work, a page path that cannot be written: its folder missing or not a folder."""
    folder = path.parent
    if not folder.is_dir():
        raise InputError(
            f"cannot write the HTML page {path}: the folder {folder} does not exist",
            hint="create the folder first, or give a path in an existing folder",
        )


def write_page(write: Callable[[Any, Path], Path], document: Any, path: Path, what: str) -> None:
    """``write(values, path)`` with ``document`` as ``--json`` prints it (Decimals to floats, times to ISO text)."""
    try:
        write(json.loads(to_json(document)), path)
    except OSError as exc:
        raise InputError(f"cannot write the HTML page {path}: {exc.strerror or exc}") from exc
    warn(f"wrote the {what} page to {path}")
