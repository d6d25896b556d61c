"""``orchestrator demo-data``: generate the seed shop's members and orders."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    pass
