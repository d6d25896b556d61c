"""The services the storage tests need answer (skipped locally, required in CI)."""

from __future__ import annotations


def test_postgres_database_is_created_per_run(postgres_server_url):
    assert "/orch_test_" in postgres_server_url
