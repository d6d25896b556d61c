"""Numbered members with an e-mail address, imported through the product's importer."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from orchestrator.config import Settings
from orchestrator.data.importing import import_customers
from orchestrator.data.records import CUSTOMER_COLUMNS


def import_members(
    folder: Path, engine: Engine, members: int, *, email_opt_in: Callable[[int], bool] = lambda i: True
) -> Path:
    """``M00001`` … with ``m00001@example.com``, e-mail consent as ``email_opt_in(i)`` says, no SMS consent;
    written to ``folder/customers.csv`` and imported. Returns the file."""
    path = folder / "customers.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, CUSTOMER_COLUMNS, restval="")
        writer.writeheader()
        for i in range(1, members + 1):
            writer.writerow(
                {
                    "customer_id": f"M{i:05d}",
                    "name": f"Member {i}",
                    "email": f"m{i:05d}@example.com",
                    "signup_at": "2024-01-01T00:00:00+08:00",
                    "email_opt_in": "true" if email_opt_in(i) else "false",
                    "sms_opt_in": "false",
                }
            )
    import_customers(engine, Settings(base_dir=str(folder)), path)
    return path
