"""The campaign pipeline end to end through the CLI (``dry-run`` and ``run``), on SQLite and PostgreSQL.

Every expectation is recomputed in plain Python from the hand-made data set (``tests.dataset``): who is in the
segment, which step each customer lands in (the first whose ``when`` holds), who is skipped and why (no e-mail,
no consent, suppressed, no step), who is held out (``policies.in_control_group`` defines the control group) and
who is contacted, with the subject they should get. The ledger rows and the ``.eml`` outbox are then checked
against the same expectation, and so are resuming a run and continuing an interrupted one.
"""

from __future__ import annotations

import email.policy
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, insert, select, update

from orchestrator.config import Settings
from orchestrator.db.models import Base, CampaignRun, Coupon, Customer, Delivery, DeliveryPayload, Suppression
from orchestrator.masking import mask_contact
from orchestrator.policies import in_control_group
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT, AT_PAST

NAME = "pipeline-check"
CONTROL_PERCENT = Decimal(20)
SUPPRESSED_CUSTOMER = "C03"  # suppressed by customer, on every channel
SUPPRESSED_ADDRESS = "c17@example.com"  # C17's address, suppressed for e-mail
TEXT_AT = AT.isoformat()
OTHER_AT = "2025-07-08T10:00:00+08:00"  # a week later: another run

CAMPAIGN = f"""\
name: {NAME}
description: two steps over the buying members, a fifth held out
segment:
  all:
    - frequency: {{gte: 1}}
  not:
    - tag: complained
control_group: 20%
recontact: always  # the same members again in a later run: this file compares each run with its own audience
steps:
  - name: regulars
    when: {{frequency: {{gte: 2}}}}
    message:
      email:
        subject: "{{{{ customer.name }}}}, thanks for {{{{ customer.frequency }}}} orders"
        template: mail/regulars.html.j2
  - name: newcomers
    when: {{recency_days: {{lt: 60}}}}
    message:
      email:
        subject: "Welcome {{{{ customer.name }}}}"
        text: "Hello {{{{ customer.name }}}}, step {{{{ step.name }}}} of {{{{ campaign.name }}}}"
"""

REGULARS_TEMPLATE = "<html><body><p>Dear {{ customer.name }}</p><p>{{ campaign.name }}</p></body></html>\n"

SINGLE_MESSAGE = """\
name: single-message
segment: {recency_days: {lt: 30}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}"
"""


# --- the independent expectation ------------------------------------------------------------------------------


def display_name(customer_id: str) -> str:
    """The name the data set's loader gives every customer."""
    return f"会员{customer_id}"


@dataclass
class Expected:
    at: datetime
    audience: set[str] = field(default_factory=set)
    steps: dict[str, set[str]] = field(default_factory=lambda: {"regulars": set(), "newcomers": set()})
    skipped: dict[str, set[str]] = field(default_factory=dict)
    control: set[str] = field(default_factory=set)
    contacted: dict[str, tuple[str, str]] = field(default_factory=dict)  # customer -> (step, address)
    conditions: list[tuple[int, int]] = field(default_factory=list)  # (alone, cumulative) per condition

    def skip(self, reason: str, customer_id: str) -> None:
        self.skipped.setdefault(reason, set()).add(customer_id)

    def skipped_counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.skipped.items()}

    def step_of(self, customer_id: str) -> str | None:
        return next((step for step, ids in self.steps.items() if customer_id in ids), None)

    def subject(self, customer_id: str, frequency: int | None = None) -> str:
        step = self.step_of(customer_id)
        if step == "regulars":
            return f"{display_name(customer_id)}, thanks for {frequency} orders"
        return f"Welcome {display_name(customer_id)}"


def expected_run(at: datetime, *, suppressions: bool = True) -> Expected:
    """The two-step campaign as of ``at``, from the data set's own data and reference facts."""
    facts = dataset.expected_facts(at, Settings())
    result = Expected(at)
    in_first = lambda f: f.frequency >= 1  # noqa: E731
    in_second = lambda c: "complained" not in c.tags  # noqa: E731
    members = [(dataset.CUSTOMER_BY_ID[cid], f) for cid, f in facts.items()]
    alone_1 = sum(1 for c, f in members if in_first(f))
    alone_2 = sum(1 for c, f in members if in_second(c))
    both = sum(1 for c, f in members if in_first(f) and in_second(c))
    result.conditions = [(alone_1, alone_1), (alone_2, both)]
    for customer, f in members:
        cid = customer.customer_id
        if not (in_first(f) and in_second(customer)):
            continue
        result.audience.add(cid)
        if f.frequency >= 2:
            step = "regulars"
        elif f.recency_days is not None and f.recency_days < 60:
            step = "newcomers"
        else:
            result.skip("no_step", cid)
            continue
        result.steps[step].add(cid)
        if customer.email is None:
            result.skip("no_contact", cid)
        elif customer.consents.get("email") is not True:
            result.skip("no_consent", cid)
        elif suppressions and (cid == SUPPRESSED_CUSTOMER or customer.email == SUPPRESSED_ADDRESS):
            result.skip("suppressed", cid)
        elif in_control_group(NAME, cid, CONTROL_PERCENT):
            result.control.add(cid)
        else:
            result.contacted[cid] = (step, customer.email)
    return result


def frequency_at(customer_id: str, at: datetime) -> int:
    return dataset.expected_facts(at, Settings())[customer_id].frequency


# --- fixtures and helpers -------------------------------------------------------------------------------------


@dataclass
class Env:
    cli: Cli
    engine: Engine
    campaign: Path
    outbox: Path
    config_dir: Path
    keys: dict[str, int]

    def json(self, *args: str) -> dict:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout

    def dry_run(self, *args: str, at: str = TEXT_AT, file: Path | None = None) -> dict:
        return self.json("dry-run", str(file or self.campaign), "--at", at, *args)

    def run(self, *args: str, at: str = TEXT_AT, file: Path | None = None) -> dict:
        return self.json("run", str(file or self.campaign), "--at", at, *args)

    def deliveries(self) -> list[tuple]:
        """Every delivery row (columns as attributes) with its customer's id, in insertion order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*Delivery.__table__.c, Customer.customer_id.label("customer"))
                .join(Customer, Customer.id == Delivery.customer_pk)
                .order_by(Delivery.id)
            ).all()
        return [(row, row.customer) for row in rows]

    def outbox_files(self) -> dict[str, tuple[bytes, int]]:
        if not self.outbox.exists():
            return {}
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in self.outbox.iterdir()}


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_eml(path: Path):
    with path.open("rb") as handle:
        return BytesParser(policy=email.policy.default).parse(handle)


def suppress(engine: Engine, keys: dict[str, int]) -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(Suppression.__table__),
            [
                {
                    "customer_pk": keys[SUPPRESSED_CUSTOMER],
                    "address": None,
                    "channel": None,
                    "reason": "do_not_contact",
                    "created_at": now,
                },
                {
                    "customer_pk": None,
                    "address": SUPPRESSED_ADDRESS,
                    "channel": "email",
                    "reason": "unsubscribed",
                    "created_at": now,
                },
            ],
        )


@pytest.fixture
def env(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Env:
    keys = dataset.load(engine)
    suppress(engine, keys)
    config_dir = tmp_path / "config"
    campaigns = tmp_path / "campaigns"
    (campaigns / "mail").mkdir(parents=True)
    config_dir.mkdir()
    outbox = tmp_path / "outbox" / "email"
    (config_dir / "orchestrator.yaml").write_text(
        f"timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  email:\n    from: Shop <shop@example.com>\n"
        f"    outbox: {outbox}\n",
        encoding="utf-8",
    )
    campaign = campaigns / "pipeline.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    (campaigns / "mail" / "regulars.html.j2").write_text(REGULARS_TEMPLATE, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    cli = Cli(db_url, config=str(config_dir / "orchestrator.yaml"))
    return Env(cli, engine, campaign, outbox, config_dir, keys)


def check_against(data: dict, exp: Expected) -> None:
    """A dry-run's or run's JSON against the independent expectation."""
    assert datetime.fromisoformat(data["at"]) == exp.at
    assert data["campaign"] == NAME
    assert data["audience"] == len(exp.audience)
    assert data["control"] == len(exp.control)
    assert data["skipped"] == exp.skipped_counts()
    assert data["messages"] == len(exp.contacted)
    steps = {s["name"]: s for s in data["steps"]}
    assert [s["name"] for s in data["steps"]] == ["regulars", "newcomers"]
    for name, members in exp.steps.items():
        assert steps[name]["audience"] == len(members), name
        contacted = sum(1 for step, _ in exp.contacted.values() if step == name)
        assert steps[name]["channels"] == ({"email": contacted} if contacted else {}), name
    assert [(c["alone"], c["cumulative"]) for c in data["conditions"]] == exp.conditions
    # reconciliation: every audience member is held out, skipped for one reason, or contacted
    contacted_customers = sum(sum(s["channels"].values()) for s in data["steps"])
    assert data["audience"] == data["control"] + sum(data["skipped"].values()) + contacted_customers


# --- dry-run ---------------------------------------------------------------------------------------------------


def test_the_campaign_exercises_every_case():
    """Guards the test's own set-up: each outcome occurs for the data set as of AT."""
    exp = expected_run(AT)
    assert set(exp.skipped) == {"no_step", "no_contact", "no_consent", "suppressed"}
    assert exp.skipped["suppressed"] == {SUPPRESSED_CUSTOMER, "C17"}
    assert exp.control and exp.control <= exp.steps["regulars"]
    assert {step for step, _ in exp.contacted.values()} == {"regulars", "newcomers"}
    # the suppressed and the held-out would all be contacted but for the suppression / the control group
    unsuppressed = expected_run(AT, suppressions=False)
    assert set(unsuppressed.contacted) | unsuppressed.control == set(exp.contacted) | exp.control | {"C03", "C17"}


def test_dry_run_reports_what_the_data_says(env: Env):
    data = env.dry_run("--sample", "50")
    exp = expected_run(AT)
    assert data["dry_run"] is True
    check_against(data, exp)
    assert [c["condition"] for c in data["conditions"]] == ["frequency {gte: 1}", "not (tag: complained)"]
    # samples: one per message, each to the right customer with the right step and rendered parts
    samples = {s["customer_id"]: s for s in data["samples"]}
    assert len(data["samples"]) == len(exp.contacted)
    assert set(samples) == set(exp.contacted)
    for cid, (step, address) in exp.contacted.items():
        sample = samples[cid]
        assert (sample["step"], sample["channel"], sample["to"]) == (step, "email", mask_contact(address))
        assert sample["parts"]["subject"] == exp.subject(cid, frequency_at(cid, AT))
        if step == "regulars":
            assert f"Dear {display_name(cid)}" in sample["parts"]["html"]
            assert f"Dear {display_name(cid)}" in sample["parts"]["text"]
        else:
            assert sample["parts"]["text"] == f"Hello {display_name(cid)}, step newcomers of {NAME}"


def test_dry_run_writes_nothing(env: Env):
    before_tables = table_counts(env.engine)
    before_config = tree(env.config_dir)
    data = env.dry_run("--sample", "5")
    assert data["messages"] > 0 and data["samples"]
    assert table_counts(env.engine) == before_tables
    assert not env.outbox.exists() and not env.outbox.parent.exists()
    assert tree(env.config_dir) == before_config  # not even the unsubscribe key file


@pytest.mark.parametrize("sample", [0, 2])
def test_dry_run_sample_count(env: Env, sample: int):
    data = env.dry_run("--sample", str(sample))
    assert len(data["samples"]) == sample
    exp = expected_run(AT)
    for s in data["samples"]:
        assert set(s) >= {"customer_id", "step", "channel", "to", "parts"}
        assert s["customer_id"] in exp.contacted
        step, address = exp.contacted[s["customer_id"]]
        assert (s["step"], s["to"]) == (step, mask_contact(address))
        assert {"subject", "text"} <= set(s["parts"])
        if s["step"] == "regulars":
            assert "html" in s["parts"]


def test_dry_run_as_of_a_past_time_ignores_later_orders_and_members(env: Env):
    data = env.dry_run(at=AT_PAST.isoformat())
    past, now = expected_run(AT_PAST), expected_run(AT)
    check_against(data, past)
    assert past.audience != now.audience
    # C37 ordered one second after AT_PAST; C36 joined after it
    assert "C37" in now.audience and "C37" not in past.audience
    assert "C36" in now.audience and "C36" not in past.audience
    # C03 had one paid order at AT_PAST (a newcomer) and two by AT (a regular)
    assert "C03" in past.steps["newcomers"] and "C03" in now.steps["regulars"]


def test_control_group_is_the_same_in_every_dry_run_and_process(env: Env, db_url: str):
    first, second = env.dry_run(), env.dry_run()
    exp = expected_run(AT)
    assert first["control"] == second["control"] == len(exp.control)
    # a real run in another process (another hash seed) holds out exactly the expected customers
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    environment.pop("ORCHESTRATOR_CONFIG", None)
    code = "import sys; from orchestrator.cli import main; sys.argv[0] = 'orchestrator'; main()"
    command = [sys.executable, "-c", code, "--config", env.cli.config, "--db", db_url]
    command += ["run", str(env.campaign), "--at", TEXT_AT, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["control"] == len(exp.control)
    assert {cid for d, cid in env.deliveries() if d.state == "held_out"} == exp.control
    # and in this process as of another time: the same rule picks the held-out customers of that audience
    other_at = datetime.fromisoformat(OTHER_AT)
    second_run = env.run(at=OTHER_AT)
    other = expected_run(other_at)
    held_out = {cid for d, cid in env.deliveries() if d.state == "held_out" and d.run_pk == second_run["run_id"]}
    assert held_out == other.control
    assert other.control & exp.control  # customers in both audiences are held out in both


# --- run ---------------------------------------------------------------------------------------------------------


def check_ledger_and_outbox(env: Env, run_id: int, exp: Expected) -> dict[int, str]:
    """The run's delivery rows and outbox files against the expectation; returns {delivery id: file name}."""
    rows = [(d, cid) for d, cid in env.deliveries() if d.run_pk == run_id]
    assert len({(d.customer_pk, d.channel) for d, _ in rows}) == len(rows)
    assert all(d.channel == "email" for d, _ in rows)
    by_state: dict[str, set[str]] = {}
    for d, cid in rows:
        by_state.setdefault(d.state, set()).add(cid)
    assert by_state.get("sent", set()) == set(exp.contacted)
    assert by_state.get("held_out", set()) == exp.control
    skipped_rows = {cid: d.reason for d, cid in rows if d.state == "skipped"}
    assert skipped_rows == {cid: reason for reason, ids in exp.skipped.items() for cid in ids}
    assert set(by_state) <= {"sent", "held_out", "skipped"}
    files = {}
    for d, cid in rows:
        assert d.step == exp.step_of(cid)
        if d.state != "sent":
            assert d.sent_at is None
            continue
        assert d.contact == exp.contacted[cid][1]
        assert d.sent_at is not None and d.provider_id
        files[d.id] = d.provider_id
    # exactly one .eml per sent delivery, to the right customer, with the rendered subject
    emls = sorted(p.name for p in env.outbox.glob("*.eml"))
    mine = sorted(files.values())
    assert len(set(mine)) == len(mine)
    assert set(mine) <= set(emls)
    for d, cid in rows:
        if d.state != "sent":
            continue
        message = read_eml(env.outbox / files[d.id])
        assert str(message["To"]) == exp.contacted[cid][1]
        assert str(message["Subject"]) == exp.subject(cid, frequency_at(cid, exp.at))
        assert str(message["From"]) == "Shop <shop@example.com>"
        assert display_name(cid) in message.get_body(preferencelist=("plain",)).get_content()
    return files


def test_run_records_the_ledger_and_writes_the_outbox(env: Env):
    before = table_counts(env.engine)
    predicted = env.dry_run()
    data = env.run()
    exp = expected_run(AT)
    check_against(data, exp)
    assert data["dry_run"] is False and data["resumed"] is False
    assert data["outcomes"] == {"sent": len(exp.contacted)}
    for key in ("audience", "control", "steps", "conditions", "skipped", "messages", "channels"):
        assert data[key] == predicted[key], key
    after = table_counts(env.engine)
    assert after["campaign_runs"] == before["campaign_runs"] + 1
    assert after["campaigns"] == before["campaigns"] + 1
    assert after["coupons"] == before["coupons"]
    skips = sum(len(ids) for ids in exp.skipped.values())
    assert after["deliveries"] == len(exp.contacted) + len(exp.control) + skips
    with env.engine.connect() as conn:
        run = conn.execute(select(CampaignRun.__table__)).one()
    assert run.id == data["run_id"] and run.state == "done"
    assert run.scheduled_at == AT
    files = check_ledger_and_outbox(env, data["run_id"], exp)
    assert sorted(p.name for p in env.outbox.iterdir()) == sorted(files.values())


def test_every_skip_of_a_run_is_in_the_ledger(env: Env):
    data = env.run()
    with env.engine.connect() as conn:
        reasons = Counter(
            r
            for (r,) in conn.execute(
                select(Delivery.reason).where(Delivery.run_pk == data["run_id"], Delivery.state == "skipped")
            )
        )
    assert dict(reasons) == data["skipped"]


def test_running_again_at_the_same_time_continues_the_same_run(env: Env):
    first = env.run()
    rows_before = [(d.id, d.state, d.sent_at) for d, _ in env.deliveries()]
    files_before = env.outbox_files()
    tables_before = table_counts(env.engine)
    again = env.run()
    exp = expected_run(AT)
    assert again["run_id"] == first["run_id"] and again["resumed"] is True
    assert again["outcomes"] == {"already_sent": len(exp.contacted)}
    check_against(again, exp)
    assert [(d.id, d.state, d.sent_at) for d, _ in env.deliveries()] == rows_before
    assert env.outbox_files() == files_before
    assert table_counts(env.engine) == tables_before
    # the same instant written with another offset is the same scheduled time, so the same run
    same_instant = env.run(at=AT.astimezone(UTC).isoformat())
    assert same_instant["run_id"] == first["run_id"] and same_instant["resumed"] is True
    assert env.outbox_files() == files_before
    # another time is another run, with its own rows and files
    later = env.run(at=OTHER_AT)
    later_exp = expected_run(datetime.fromisoformat(OTHER_AT))
    assert later["run_id"] != first["run_id"] and later["resumed"] is False
    assert later["outcomes"] == {"sent": len(later_exp.contacted)}
    with env.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one() == 2
    assert len(env.outbox_files()) == len(files_before) + later["outcomes"]["sent"]
    check_ledger_and_outbox(env, later["run_id"], later_exp)


def test_an_interrupted_run_sends_only_what_was_not_sent(env: Env):
    planned = env.run("--plan-only")
    exp = expected_run(AT)
    assert planned["outcomes"] == {} and planned["state"] == "waiting" and env.outbox_files() == {}
    pending = [d for d, _ in env.deliveries() if d.state == "pending"]
    assert len(pending) == len(exp.contacted) >= 3
    # as if an earlier process had sent two of them and then died
    earlier = {d.id: f"earlier-{d.id}" for d in pending[:2]}
    with env.engine.begin() as conn:
        for delivery_id, provider_id in earlier.items():
            conn.execute(
                update(Delivery).where(Delivery.id == delivery_id).values(state="sent", provider_id=provider_id)
            )
            conn.execute(delete(DeliveryPayload).where(DeliveryPayload.delivery_pk == delivery_id))
        conn.execute(update(CampaignRun).where(CampaignRun.id == planned["run_id"]).values(state="running"))
    tables_before = table_counts(env.engine)
    again = env.run()
    assert again["run_id"] == planned["run_id"] and again["resumed"] is True
    assert again["outcomes"] == {"sent": len(exp.contacted) - 2, "already_sent": 2}
    check_against(again, exp)
    assert {k: v for k, v in table_counts(env.engine).items() if k != "delivery_payloads"} == {
        k: v for k, v in tables_before.items() if k != "delivery_payloads"
    }  # no new delivery, run or coupon rows
    assert len(env.outbox_files()) == len(exp.contacted) - 2
    states = {d.id: d for d, _ in env.deliveries()}
    for delivery_id, provider_id in earlier.items():
        assert states[delivery_id].provider_id == provider_id  # not sent a second time
    for delivery in pending[2:]:
        assert states[delivery.id].state == "sent" and states[delivery.id].attempts == 1
    with env.engine.connect() as conn:
        assert conn.execute(select(CampaignRun.state)).scalar_one() == "done"
        assert conn.execute(select(func.count()).select_from(Coupon)).scalar_one() == tables_before["coupons"]
        assert conn.execute(select(func.count()).select_from(DeliveryPayload)).scalar_one() == 0


def test_a_campaign_with_one_top_level_message_runs_as_step_main(env: Env):
    file = env.campaign.parent / "single.yaml"
    file.write_text(SINGLE_MESSAGE, encoding="utf-8")
    facts = dataset.expected_facts(AT, Settings())
    audience = {cid for cid, f in facts.items() if f.recency_days is not None and f.recency_days < 30}
    reachable = set()
    skipped: Counter = Counter()
    for cid in audience:
        customer = dataset.CUSTOMER_BY_ID[cid]
        if customer.email is None:
            skipped["no_contact"] += 1
        elif customer.consents.get("email") is not True:
            skipped["no_consent"] += 1
        elif cid == SUPPRESSED_CUSTOMER or customer.email == SUPPRESSED_ADDRESS:
            skipped["suppressed"] += 1
        else:
            reachable.add(cid)
    predicted = env.dry_run("--sample", "1", file=file)
    assert [s["name"] for s in predicted["steps"]] == ["main"]
    assert predicted["audience"] == len(audience) and predicted["control"] == 0
    assert predicted["skipped"] == dict(skipped)
    assert predicted["steps"][0]["channels"] == {"email": len(reachable)}
    assert predicted["samples"][0]["step"] == "main"
    data = env.run(file=file)
    assert data["outcomes"] == {"sent": len(reachable)}
    sent = {cid for d, cid in env.deliveries() if d.state == "sent"}
    assert sent == reachable
    assert {d.step for d, _ in env.deliveries()} == {"main"}
    subjects = sorted(read_eml(p)["Subject"] for p in env.outbox.glob("*.eml"))
    assert subjects == sorted(f"Hi {display_name(cid)}" for cid in reachable)


# --- invalid input -----------------------------------------------------------------------------------------------

INVALID_CAMPAIGN = """\
name: broken
segment: {recency_dayz: {gte: 90}}
message:
  email: {subject: "Hi", text: "Hello"}
"""


@pytest.mark.parametrize("command", ["dry-run", "run"])
@pytest.mark.parametrize("case", ["bad-at", "missing-file", "invalid-file"])
def test_invalid_input_exits_2_and_writes_nothing(env: Env, command: str, case: str):
    broken = env.campaign.parent / "broken.yaml"
    broken.write_text(INVALID_CAMPAIGN, encoding="utf-8")
    args, expected = {
        "bad-at": ([str(env.campaign), "--at", "next tuesday"], ["--at", "next tuesday"]),
        "missing-file": ([str(env.campaign.parent / "nope.yaml"), "--at", TEXT_AT], ["nope.yaml", "not found"]),
        "invalid-file": ([str(broken), "--at", TEXT_AT], ["broken.yaml:2", "recency_dayz", "recency_days"]),
    }[case]
    before = table_counts(env.engine)
    config_before = tree(env.config_dir)
    result = env.cli(command, *args, "--json")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    for text in expected:
        assert text in result.stderr
    assert table_counts(env.engine) == before
    assert not env.outbox.exists()
    if (command, case) != ("run", "bad-at"):  # that case: see the next test
        assert tree(env.config_dir) == config_before


def test_a_bad_at_creates_no_files(env: Env):
    before = tree(env.config_dir)
    result = env.cli("run", str(env.campaign), "--at", "next tuesday", "--json")
    assert result.exit_code == 2
    assert tree(env.config_dir) == before
