"""``orchestrator import call-outcomes FILE`` on SQLite and PostgreSQL: outcomes recorded on call_list deliveries,
do_not_call suppressions, idempotent re-imports, and bad files refused whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from orchestrator.db.models import Campaign, CampaignRun, Customer, Delivery, Suppression
from tests.clitools import Cli

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def ids(engine: Engine) -> dict[str, int]:
    """Two runs of a campaign: C1..C3 on the call list of run 1 (C3's delivery skipped), C1 again in run 2,
    and C1's sms delivery of run 1."""
    with engine.begin() as conn:
        customers = {
            cid: conn.execute(
                insert(Customer)
                .values(customer_id=cid, name=name, phone=phone, created_at=T0, updated_at=T0)
                .returning(Customer.id)
            ).scalar_one()
            for cid, name, phone in (
                ("C1", "张伟", "+8613800000001"),
                ("C2", "李娜", "+8613800000002"),
                ("C3", "王芳", None),
            )
        }
        campaign = conn.execute(
            insert(Campaign).values(name="winback", created_at=T0, updated_at=T0).returning(Campaign.id)
        ).scalar_one()
        runs = [
            conn.execute(
                insert(CampaignRun)
                .values(campaign_pk=campaign, scheduled_at=T0 + timedelta(days=7 * i), state="finished")
                .returning(CampaignRun.id)
            ).scalar_one()
            for i in range(2)
        ]

        def delivery(run: int, customer: str, channel: str = "call_list", state: str = "sent") -> int:
            created = T0 + timedelta(days=7 * runs.index(run))
            values = dict(run_pk=run, customer_pk=customers[customer], channel=channel, state=state)
            values.update(created_at=created, updated_at=created, attempts=1)
            return conn.execute(insert(Delivery).values(**values).returning(Delivery.id)).scalar_one()

        return {
            "run1": runs[0],
            "run2": runs[1],
            "c1": delivery(runs[0], "C1"),
            "c2": delivery(runs[0], "C2"),
            "c3": delivery(runs[0], "C3", state="skipped"),
            "c1_sms": delivery(runs[0], "C1", channel="sms"),
            "c1_run2": delivery(runs[1], "C1"),
            **{f"pk_{k}": v for k, v in customers.items()},
        }


def key(ids: dict[str, int], name: str, run: str = "run1") -> str:
    return f"run{ids[run]}-d{ids[name]}"


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8-sig")  # as Excel saves "CSV UTF-8"
    return str(path)


def outcomes(engine: Engine) -> dict[int, tuple]:
    with engine.connect() as conn:
        return {
            r.id: (r.outcome, r.outcome_at)
            for r in conn.execute(select(Delivery.id, Delivery.outcome, Delivery.outcome_at))
        }


def suppression_rows(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        query = select(
            Suppression.customer_pk, Suppression.channel, Suppression.reason, Suppression.source, Suppression.note
        )
        return sorted(conn.execute(query).all(), key=lambda r: r.channel)


def test_import_records_outcomes_suppresses_and_is_idempotent(run_cli: Cli, engine: Engine, ids, tmp_path: Path):
    file = write(
        tmp_path / "outcomes.csv",
        "delivery_key,outcome,called_at,agent,note\n"
        f"{key(ids, 'c1')},no_answer,2026-03-02T10:00:00+08:00,王芳,\n"
        f"{key(ids, 'c2')},DO_NOT_CALL,2026-03-02 11:30,李娜,不要再打了\n"  # no offset: Asia/Shanghai (the default)
        f"{key(ids, 'c1')},reached,2026-03-02T15:00:00+08:00,王芳,\n",  # a second call, later: it wins
    )
    result = run_cli("import", "call-outcomes", file, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "call_outcomes"
    assert (data["read"], data["recorded"], data["unchanged"], data["suppressed"]) == (3, 3, 0, 2)

    stored = outcomes(engine)
    assert stored[ids["c1"]] == ("reached", datetime(2026, 3, 2, 7, 0, tzinfo=UTC))
    assert stored[ids["c2"]] == ("do_not_call", datetime(2026, 3, 2, 3, 30, tzinfo=UTC))
    assert stored[ids["c1_run2"]] == stored[ids["c1_sms"]] == (None, None)
    assert suppression_rows(engine) == [
        (ids["pk_C2"], "call_list", "do_not_contact", "call_outcome", "agent 李娜; 不要再打了"),
        (ids["pk_C2"], "sms", "do_not_contact", "call_outcome", "agent 李娜; 不要再打了"),
    ]

    again = run_cli("import", "call-outcomes", file)
    assert again.exit_code == 0, again.output
    assert "3 rows read: 0 recorded, 3 unchanged, 0 suppression entries added" in again.output
    assert outcomes(engine) == stored and len(suppression_rows(engine)) == 2

    # an older call imported later does not undo the later one
    older = write(
        tmp_path / "older.csv", f"delivery_key,outcome,called_at\n{key(ids, 'c1')},declined,2026-03-02T09:00:00+08:00\n"
    )
    data = json.loads(run_cli("import", "call-outcomes", older, "--json").stdout)
    assert (data["recorded"], data["unchanged"]) == (0, 1)
    assert outcomes(engine)[ids["c1"]][0] == "reached"


def test_customer_and_campaign_name_the_latest_delivery_before_the_call(run_cli: Cli, engine: Engine, ids, tmp_path):
    file = write(
        tmp_path / "by-customer.csv",
        "customer_id,campaign,outcome,called_at\n"
        "C1,winback,converted,2026-03-03T12:00:00+08:00\n"  # before run 2: run 1's delivery
        "C1,winback,reached,2026-03-09T12:00:00+08:00\n",  # after run 2 was created: run 2's delivery
    )
    result = run_cli("import", "call-outcomes", file, "--json")
    assert result.exit_code == 0, result.output
    stored = outcomes(engine)
    assert stored[ids["c1"]][0] == "converted" and stored[ids["c1_run2"]][0] == "reached"
    assert stored[ids["c1_sms"]] == (None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key,outcome,called_at\nx,reached,2026-03-02T10:00:00+08:00\n", ":1: the header names no delivery"),
        ("delivery_key,called_at\n{c1},2026-03-02T10:00:00+08:00\n", ":1: the header has no column outcome"),
        (
            "delivery_key,outcome,called_at\n{c1},reached,2026-03-02T10:00:00+08:00\n{c2},busy,2026-03-02\n",
            ":3: outcome 'busy'",
        ),
        ("delivery_key,outcome,called_at\n{c1},reached,yesterday\n", ":2: called_at: 'yesterday' is not an ISO 8601"),
        (
            "delivery_key,outcome,called_at\n{c1},reached,2099-01-01T00:00:00+08:00\n",
            ":2: called_at '2099-01-01T00:00:00+08:00' is in the future",
        ),
        (
            "delivery_key,outcome,called_at\nrun1-d999999,reached,2026-03-02T10:00:00+08:00\n",
            ":2: delivery_key 'run1-d999999': no such delivery",
        ),
        (
            "delivery_key,outcome,called_at\nC1,reached,2026-03-02T10:00:00+08:00\n",
            ":2: delivery_key 'C1' is not a call list key",
        ),
        (
            "delivery_key,outcome,called_at\n{sms},reached,2026-03-02T10:00:00+08:00\n",
            ":2: delivery_key '{sms}' is a sms delivery",
        ),
        (
            "delivery_key,outcome,called_at\n{c3},reached,2026-03-02T10:00:00+08:00\n",
            ":2: delivery_key '{c3}' was never put on a call list (it is skipped)",
        ),
        (
            "customer_id,campaign,outcome,called_at\nC2,spring,reached,2026-03-02T10:00:00+08:00\n",
            ":2: customer 'C2' has no call_list delivery in campaign 'spring'",
        ),
    ],
)
def test_a_bad_file_is_refused_whole(run_cli: Cli, engine: Engine, ids, tmp_path, text, expected):
    good = f"{key(ids, 'c2')},do_not_call,2026-03-02T10:00:00+08:00\n"
    body = text.format(c1=key(ids, "c1"), c2=key(ids, "c2"), c3=key(ids, "c3"), sms=key(ids, "c1_sms"))
    if text.startswith("delivery_key,outcome,called_at\n"):
        body += good  # a good do_not_call row is not recorded either
    file = write(tmp_path / "bad.csv", body)
    result = run_cli("import", "call-outcomes", file)
    assert result.exit_code == 2, result.output
    expected = expected.format(c3=key(ids, "c3"), sms=key(ids, "c1_sms"))
    assert f"{file}{expected}" in result.output, result.output
    assert "hint:" in result.output
    assert all(value == (None, None) for value in outcomes(engine).values())
    assert suppression_rows(engine) == []


def test_every_bad_line_is_named(run_cli: Cli, ids, tmp_path):
    file = write(
        tmp_path / "bad.csv",
        "delivery_key,outcome,called_at\n"
        f"{key(ids, 'c1')},reached,2026-03-02T10:00:00+08:00\n"
        f"{key(ids, 'c2')},maybe,2026-03-02T10:00:00+08:00\n"
        ",reached,2026-03-02T10:00:00+08:00\n"
        "run1-d999999,reached,2026-03-02T10:00:00+08:00\n",
    )
    result = run_cli("import", "call-outcomes", file)
    assert result.exit_code == 2
    assert f"{file}:3: outcome 'maybe'" in result.output and f"{file}:4: the row names no delivery" in result.output
    assert f"{file}:5: delivery_key 'run1-d999999': no such delivery" in result.output  # found in the same pass
    assert "nothing was recorded" in result.output


def test_a_missing_file_exits_2(run_cli: Cli, ids, tmp_path):
    result = run_cli("import", "call-outcomes", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "no such file" in result.output
