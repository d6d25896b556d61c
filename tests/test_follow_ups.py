"""Follow-ups (``follow_ups:``) fired by the scheduler's replay, on SQLite and PostgreSQL, against an independent
computation in plain Python of who each follow-up reaches at its due time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update

from orchestrator.db.models import CampaignRun, Coupon, Customer, CustomerConsent, Delivery, Order
from orchestrator.policies import in_control_group
from tests.clitools import Cli

RUN_AT = datetime(2025, 6, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
AFTER = timedelta(days=3)
DUE = RUN_AT + AFTER
LOADED = datetime(2025, 5, 1, tzinfo=UTC)
MEMBERS = 40
# when each member orders again, relative to the run: before it, exactly at it, between, exactly at the follow-up's
# due time, a second after it, and never
ORDER_OFFSETS = [-timedelta(hours=1), timedelta(0), timedelta(days=1), AFTER, AFTER + timedelta(seconds=1), None]

REMIND = """\
name: remind
schedule: {at: "2025-06-02T10:00:00+08:00"}
segment: {frequency: {gte: 1}}
control_group: 25%
message:
  email: {subject: "Hi {{ customer.name }}", text: "Hello"}
dispatch: {frequency_cap: {max: 5, per: 7d}}
follow_ups:
  - name: reminder
    after: 3d
    unless: {ordered_since_contact: true}
    message:
      email: {subject: "Still thinking, {{ customer.name }}?", text: "A reminder"}
"""


def customer_id(i: int) -> str:
    return f"F{i:02d}"


def load_shop(engine: Engine) -> dict[str, int]:
    """Members with e-mail consent and one old order each; a second order at ``ORDER_OFFSETS[i % 6]``."""
    keys: dict[str, int] = {}
    with engine.begin() as conn:
        for i in range(MEMBERS):
            keys[customer_id(i)] = conn.execute(
                insert(Customer.__table__)
                .values(
                    customer_id=customer_id(i),
                    name=f"会员{i}",
                    email=f"f{i}@example.com",
                    signup_at=datetime(2025, 1, 1, tzinfo=UTC),
                    attributes={},
                    created_at=LOADED,
                    updated_at=LOADED,
                )
                .returning(Customer.__table__.c.id)
            ).scalar_one()
        conn.execute(
            insert(CustomerConsent.__table__),
            [
                {"customer_pk": pk, "channel": "email", "opted_in": True, "source": "test", "updated_at": LOADED}
                for pk in keys.values()
            ],
        )
        rows = []
        for i in range(MEMBERS):
            times = [datetime(2025, 3, 1, tzinfo=UTC)]
            if ORDER_OFFSETS[i % len(ORDER_OFFSETS)] is not None:
                times.append(RUN_AT + ORDER_OFFSETS[i % len(ORDER_OFFSETS)])
            for n, at in enumerate(times):
                rows.append(
                    {
                        "order_id": f"O{i:02d}-{n}",
                        "customer_pk": keys[customer_id(i)],
                        "ordered_at": at,
                        "amount": Decimal("88.50"),
                        "status": "paid",
                        "attributes": {},
                        "created_at": LOADED,
                        "updated_at": LOADED,
                    }
                )
        conn.execute(insert(Order.__table__), rows)
    return keys


@pytest.fixture
def shop(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> tuple[Cli, Path]:
    keys = load_shop(engine)
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\ncampaigns: campaigns\nchannels:\n  email:\n"
        f"    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\ndispatch:\n  linger_seconds: 0\n",
        encoding="utf-8",
    )
    folder = tmp_path / "campaigns"
    folder.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Cli(db_url, config=str(config)), folder, keys


def replay(cli: Cli, start: str, until: str) -> list[dict]:
    result = cli("scheduler", "--from", start, "--until", until, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["ticks"]


def follow_up_rows(engine: Engine, name: str) -> dict[int, list[tuple[str, str | None, str]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.customer_pk, Delivery.state, Delivery.reason, Delivery.step).where(
                Delivery.follow_up == name
            )
        ).all()
    found: dict[int, list] = {}
    for pk, state, reason, step in rows:
        found.setdefault(pk, []).append((state, reason, step))
    return found


def ordered_between(i: int, start: datetime, end: datetime) -> bool:
    offset = ORDER_OFFSETS[i % len(ORDER_OFFSETS)]
    return offset is not None and start <= RUN_AT + offset <= end


def test_the_follow_up_audience_is_who_satisfies_its_conditions_at_its_due_time(shop, engine: Engine):
    cli, folder, keys = shop
    (folder / "remind.yaml").write_text(REMIND, encoding="utf-8")

    before = replay(cli, "2025-06-01", "2025-06-05T09:59:59+08:00")  # up to a second before the due time
    assert [t["campaign"] for t in before] == ["remind"] and not follow_up_rows(engine, "reminder")

    ticks = replay(cli, "2025-06-05T09:59:59+08:00", "2025-06-10")
    [row] = [t for t in ticks if t.get("follow_up") == "reminder"]
    assert datetime.fromisoformat(row["at"]) == DUE

    decided = follow_up_rows(engine, "reminder")
    assert set(decided) == set(keys.values())  # every member the run reached (or held out) is decided once
    for i in range(MEMBERS):
        [(state, reason, step)] = decided[keys[customer_id(i)]]
        assert step == "reminder"
        control = in_control_group("remind", customer_id(i), Decimal(25))
        if ordered_between(i, RUN_AT, DUE):
            assert (state, reason) == ("skipped", "unless"), i
        elif control:
            assert (state, reason) == ("held_out", "control_group"), i
        else:
            assert state == "sent", i
    expected_sent = sum(
        1
        for i in range(MEMBERS)
        if not ordered_between(i, RUN_AT, DUE) and not in_control_group("remind", customer_id(i), Decimal(25))
    )
    assert row["messages"] == expected_sent > 0
    sent_indices = {i for i in range(MEMBERS) if decided[keys[customer_id(i)]][0][0] == "sent"}
    assert row["control"] > 0

    # control members were never contacted: no sent row of theirs, in the run or its follow-up
    with engine.connect() as conn:
        contacted = set(
            conn.execute(select(Delivery.customer_pk).where(Delivery.state.in_(("sent", "pending")))).scalars()
        )
    controls = {keys[customer_id(i)] for i in range(MEMBERS) if in_control_group("remind", customer_id(i), 25)}
    assert controls and not contacted & controls

    # the report shows the follow-up beside the step, with its own control comparison from its due time
    report = cli("report", "remind", "--at", "2025-07-01", "--json")
    assert report.exit_code == 0, report.output
    document = json.loads(report.stdout)
    [step] = [s for s in document["by_step"] if s["step"] == "reminder"]
    held = [i for i in range(MEMBERS) if not ordered_between(i, RUN_AT, DUE) and i not in sent_indices]
    assert step["follow_up"] is True and step["targeted"] == MEMBERS
    assert (step["contacted"], step["control"]) == (len(sent_indices), len(held))
    # only the order a second after the due time falls in the follow-up's window (14 days from DUE)
    later = [i for i in range(MEMBERS) if ORDER_OFFSETS[i % len(ORDER_OFFSETS)] == AFTER + timedelta(seconds=1)]
    assert step["conversions"]["treatment"] == len([i for i in later if i in sent_indices])
    assert step["conversions"]["control"] == len([i for i in later if i in held])
    assert document["targeted"] == MEMBERS  # the run's members, not counted again for the follow-up
    [channel_row] = [r for r in document["rows"] if r["step"] == "reminder"]
    assert (channel_row["channel"], channel_row["contacted"], channel_row["control"]) == (
        "email",
        len(sent_indices),
        len(held),
    )

    # replaying again decides nothing twice
    again = replay(cli, "2025-06-01", "2025-06-10")
    assert not [t for t in again if t.get("follow_up")]
    assert follow_up_rows(engine, "reminder") == decided


REDEEM = """\
name: coupon-reminder
schedule: {at: "2025-06-02T10:00:00+08:00"}
segment: {frequency: {gte: 1}}
offer:
  coupon: {kind: amount_off, value: 10, min_spend: 50, valid_days: 14}
message:
  email: {subject: "A coupon", text: "{{ offer.code }}"}
dispatch: {frequency_cap: {max: 5, per: 7d}}
follow_ups:
  - name: unredeemed
    after: 3d
    unless: {redeemed_offer: true}
    when: {contacted_by: {step: main}}
    message:
      email: {subject: "Your coupon is waiting", text: "{{ customer.name }}"}
"""


def test_redeemed_coupons_exclude_members_and_caps_count_follow_ups(shop, engine: Engine):
    cli, folder, keys = shop
    (folder / "coupon.yaml").write_text(REDEEM, encoding="utf-8")
    replay(cli, "2025-06-01", "2025-06-03")
    redeemed_at = {0: DUE - timedelta(hours=1), 1: DUE, 2: DUE + timedelta(seconds=1)}  # before, at, after due
    with engine.begin() as conn:
        for i, at in redeemed_at.items():
            conn.execute(
                update(Coupon)
                .where(Coupon.customer_pk == keys[customer_id(i)])
                .values(state="redeemed", redeemed_at=at)
            )
        # a member already at the cap of 1 message a week: the follow-up is skipped by the cap
        capped = keys[customer_id(3)]
        run_pk = conn.execute(select(CampaignRun.id)).scalar_one()
        conn.execute(
            insert(Delivery.__table__).values(
                run_pk=run_pk,
                customer_pk=capped,
                channel="email",
                step="elsewhere",
                follow_up="other",
                state="sent",
                sent_at=DUE - timedelta(days=1),
                attempts=1,
                created_at=DUE,
                updated_at=DUE,
            )
        )
    (folder / "coupon.yaml").write_text(
        REDEEM.replace("{max: 5, per: 7d}", "{max: 2, per: 7d}"), encoding="utf-8"
    )  # a changed file: the run is done, the follow-up reads the cap from the file as it is now
    replay(cli, "2025-06-03", "2025-06-10")
    decided = follow_up_rows(engine, "unredeemed")
    assert decided[keys[customer_id(0)]] == [("skipped", "unless", "unredeemed")]
    assert decided[keys[customer_id(1)]] == [("skipped", "unless", "unredeemed")]
    assert decided[keys[customer_id(2)]][0][0] == "sent"  # redeemed a second after the follow-up was due
    assert decided[keys[customer_id(3)]] == [("skipped", "frequency_cap", "unredeemed")]
    special = {keys[customer_id(i)] for i in range(4)}
    assert all(rows[0][0] == "sent" for pk, rows in decided.items() if pk not in special)


QUIET = """\
name: late
schedule: {at: "2025-06-02T23:00:00+08:00"}
segment: {frequency: {gte: 1}}
message:
  email: {subject: "Late", text: "Hello"}
dispatch: {quiet_hours: "21:00-09:00", frequency_cap: {max: 5, per: 7d}}
follow_ups:
  - name: next-day
    after: 1d
    message:
      email: {subject: "Next day", text: "Hello again"}
"""


def test_quiet_hours_shift_after(shop, engine: Engine):
    cli, folder, _ = shop
    (folder / "late.yaml").write_text(QUIET, encoding="utf-8")
    # deferred to 09:00 on 3 June, so the follow-up is due 09:00 on 4 June, not 23:00 on 3 June
    replay(cli, "2025-06-01", "2025-06-04T08:59:00+08:00")
    assert not follow_up_rows(engine, "next-day")
    ticks = replay(cli, "2025-06-04T08:59:00+08:00", "2025-06-06")
    [row] = [t for t in ticks if t.get("follow_up")]
    assert datetime.fromisoformat(row["at"]) == datetime(2025, 6, 4, 1, 0, tzinfo=UTC)
    assert row["messages"] == MEMBERS
    assert len(follow_up_rows(engine, "next-day")) == MEMBERS


BAD = """\
name: bad
segment: {frequency: {gte: 1}}
steps:
  - name: first
    message: {email: {subject: "a", text: "b"}}
follow_ups:
  - name: first
    after: 3d
    message: {email: {subject: "a", text: "b"}}
  - name: second
    after: 2d
    steps: [frist]
    unless: {ordered_since_contakt: true}
    message: {email: {subject: "a", text: "b"}}
  - name: third
    after: 4d
    when: {contacted_by: {follow_up: nope}}
    message: {email: {subject: "a", text: "b"}}
"""


def test_validate_reports_every_follow_up_problem_at_its_line(shop):
    cli, folder, _ = shop
    path = folder / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    result = cli("validate", str(path))
    assert result.exit_code == 2
    err = result.stderr
    assert "bad.yaml:7" in err and "already a step's" in err
    assert "bad.yaml:12" in err and "unknown step 'frist'" in err and "first" in err
    assert "bad.yaml:13" in err and "ordered_since_contakt" in err
    assert "bad.yaml:17" in err and "unknown follow-up 'nope'" in err
    # the follow-up facts are for follow-ups only
    path.write_text(BAD.split("follow_ups:")[0].replace("{frequency: {gte: 1}}", "{redeemed_offer: true}"))
    result = cli("validate", str(path))
    assert result.exit_code == 2 and "redeemed_offer" in result.stderr


def test_dry_run_estimates_a_due_follow_up_and_says_pending_for_one_not_yet_due(shop):
    cli, folder, _ = shop
    path = folder / "remind.yaml"
    path.write_text(REMIND, encoding="utf-8")
    result = cli("dry-run", str(path), "--at", "2025-06-02T10:00:00+08:00", "--json")
    assert result.exit_code == 0, result.output
    [follow_up] = json.loads(result.stdout)["follow_ups"]
    expected = sum(1 for i in range(MEMBERS) if not ordered_between(i, RUN_AT, DUE))  # control members too
    assert follow_up["name"] == "reminder" and follow_up["audience"] == expected
    assert datetime.fromisoformat(follow_up["due"]) == DUE

    later = datetime.now(UTC) + timedelta(days=1)
    result = cli("dry-run", str(path), "--at", later.isoformat(timespec="seconds"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["follow_ups"][0]["audience"] == "pending"


def test_run_says_its_follow_ups_wait_and_dispatch_plans_and_sends_them(shop, engine: Engine):
    cli, folder, _ = shop
    path = folder / "remind.yaml"
    path.write_text(REMIND, encoding="utf-8")
    result = cli("run", str(path), "--at", "2025-06-02T10:00:00+08:00")
    assert result.exit_code == 0, result.output
    assert "follow-up reminder" in result.stdout and "orchestrator dispatch" in result.stdout

    early = cli("dispatch", "--at", "2025-06-05T09:59:59+08:00", "--json")
    assert early.exit_code == 0, early.output
    assert json.loads(early.stdout)["follow_ups"] == [] and not follow_up_rows(engine, "reminder")

    result = cli("dispatch", "--at", "2025-06-05T10:00:00+08:00", "--json")
    assert result.exit_code == 0, result.output
    [planned] = json.loads(result.stdout)["follow_ups"]
    assert planned["follow_up"] == "reminder" and planned["audience"] == MEMBERS
    decided = follow_up_rows(engine, "reminder")
    sent = {pk for pk, rows in decided.items() if rows[0][0] == "sent"}
    assert len(sent) == planned["messages"] > 0
    # a member's timeline: the step, then the follow-up, each with its state and reason
    skipped_member = next(customer_id(i) for i in range(MEMBERS) if ordered_between(i, RUN_AT, DUE))
    timeline = cli("deliveries", "--customer", skipped_member, "--json")
    rows = json.loads(timeline.stdout)
    assert [(r["step"], r["follow_up"], r["state"], r["reason"]) for r in rows] == [
        ("reminder", "reminder", "skipped", "unless"),
        ("main", None, "sent", None),
    ]
    again = cli("dispatch", "--at", "2025-06-06T10:00:00+08:00", "--json")
    assert json.loads(again.stdout)["follow_ups"] == []
    assert follow_up_rows(engine, "reminder") == decided


VARIANT_OFFER = """\
name: variant-reminder
schedule: {at: "2025-06-02T10:00:00+08:00"}
segment: {frequency: {gte: 1}}
steps:
  - name: main
    offer:
      coupon: {kind: amount_off, value: 10, valid_days: 14}
    message:
      email: {subject: "A coupon", text: "{{ offer.code }}"}
    variants:
      - {name: small, weight: 1, message: {email: {subject: "A small coupon", text: "{{ offer.code }}"}}}
      - {name: big, weight: 1, offer: {coupon: {kind: amount_off, value: 30, valid_days: 14}}}
dispatch: {frequency_cap: {max: 5, per: 7d}}
follow_ups:
  - name: nudge
    after: 3d
    message:
      email: {subject: "Your coupon is waiting", text: "{{ customer.name }}"}
"""


def test_a_follow_up_of_a_step_whose_variants_carry_their_own_offer(shop, engine: Engine):
    """The run's offers include its variants' own (keyed by variant too): planning the follow-up copes."""
    cli, folder, _keys = shop
    (folder / "variants.yaml").write_text(VARIANT_OFFER, encoding="utf-8")
    assert replay(cli, "2025-06-01", "2025-06-10")
    decided = follow_up_rows(engine, "nudge")
    assert len(decided) == MEMBERS
    assert all(rows[0][0] == "sent" for rows in decided.values())
