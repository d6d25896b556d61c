"""Data commands: ``import customers|orders FILE`` and ``demo-data``."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    pass
