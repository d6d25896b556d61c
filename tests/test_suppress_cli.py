"""``orchestrator suppress …`` on SQLite and PostgreSQL: add / remove / list / import / unsubscribe, their effect
in the database, their JSON, idempotency, address normalisation, and that a following run honours the list."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator import policies, suppressions
from orchestrator.db.models import Customer, Delivery, Suppression
from orchestrator.unsubscribe import SECRET_ENV, sign
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT

ENTRY_KEYS = {"id", "customer_id", "address", "channel", "reason", "source", "note", "created_at"}
CAMPAIGN = """\
name: suppress-check
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}"
"""
KEY = "test-secret-key-of-forty-characters!!"


@dataclass
class Env:
    cli: Cli
    engine: Engine
    campaign: Path
    outbox: Path
    keys: dict[str, int]

    def ok(self, *args: str):
        result = self.cli(*args)
        assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json").stdout)

    def rows(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(*Suppression.__table__.c).order_by(Suppression.id)).all()


@pytest.fixture
def env(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Env:
    keys = dataset.load(engine)
    config = tmp_path / "config"
    config.mkdir()
    outbox = tmp_path / "outbox" / "email"
    (config / "orchestrator.yaml").write_text(
        f"timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  email:\n    from: Shop <shop@example.com>\n"
        f"    outbox: {outbox}\n",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    monkeypatch.setenv(SECRET_ENV, KEY)
    return Env(Cli(db_url, config=str(config / "orchestrator.yaml")), engine, campaign, outbox, keys)


# --- add ---------------------------------------------------------------------------------------------------------


def test_add_by_customer_is_stored_and_idempotent(env: Env):
    data = env.json("suppress", "add", "--customer", "C01", "--note", "asked by phone")
    assert set(data) == ENTRY_KEYS | {"added"}
    assert data["added"] is True
    assert (data["customer_id"], data["address"], data["channel"]) == ("C01", None, "all")
    assert (data["reason"], data["source"], data["note"]) == ("do_not_contact", "cli", "asked by phone")
    [row] = env.rows()
    assert (row.customer_pk, row.address, row.channel, row.reason) == (env.keys["C01"], None, None, "do_not_contact")

    again = env.json("suppress", "add", "--customer", "C01", "--reason", "complained")
    assert again["added"] is False and again["id"] == data["id"] and again["reason"] == "do_not_contact"
    assert len(env.rows()) == 1
    text = env.ok("suppress", "add", "--customer", "C01").output
    assert "already suppressed" in text
    assert len(env.rows()) == 1

    # another channel is another entry
    email_only = env.json("suppress", "add", "--customer", "C01", "--channel", "EMAIL", "--reason", "bounced")
    assert email_only["added"] is True and email_only["channel"] == "email"
    assert [(r.channel, r.reason) for r in env.rows()] == [(None, "do_not_contact"), ("email", "bounced")]


def test_addresses_are_normalised_like_the_importer(env: Env):
    phone = env.json("suppress", "add", "--phone", "+86 138 0000 0001", "--channel", "sms")
    email = env.json("suppress", "add", "--email", "c17@EXAMPLE.COM")
    assert phone["address"] == "+86 138****0001" and email["address"] == "c***@example.com"  # masked in output
    with env.engine.connect() as conn:
        stored = dict(conn.execute(select(Customer.customer_id, Customer.phone)).all())
        stored_email = conn.execute(select(Customer.email).where(Customer.customer_id == "C17")).scalar_one()
    # the customer's stored E.164 number and address: plain equality matches
    assert [r.address for r in env.rows()] == [stored["C01"], stored_email] == ["+8613800000001", "c17@example.com"]
    # the same numbers written differently are the same entry
    assert env.json("suppress", "add", "--phone", "13800000001", "--channel", "sms")["added"] is False
    assert env.json("suppress", "add", "--email", "c17@example.com")["added"] is False
    assert len(env.rows()) == 2


@pytest.mark.parametrize(
    "args",
    [
        ("--customer", "NOPE"),
        ("--email", "not-an-address"),
        ("--phone", "12"),
        (),
        ("--customer", "C01", "--email", "c01@example.com"),
        ("--customer", "C01", "--channel", "e mail"),
        ("--customer", "C01", "--reason", "because"),
    ],
)
def test_invalid_add_exits_2_and_writes_nothing(env: Env, args: tuple[str, ...]):
    result = env.cli("suppress", "add", *args)
    assert result.exit_code == 2, result.output
    assert env.rows() == []


# --- remove and list -----------------------------------------------------------------------------------------------


def test_remove_and_list(env: Env):
    env.ok("suppress", "add", "--customer", "C01")
    env.ok("suppress", "add", "--customer", "C01", "--channel", "sms", "--reason", "unsubscribed")
    env.ok("suppress", "add", "--email", "c03@example.com", "--channel", "email", "--reason", "bounced")
    listed = env.json("suppress", "list")
    assert [set(e) for e in listed] == [ENTRY_KEYS] * 3
    assert [(e["customer_id"], e["address"], e["channel"], e["reason"]) for e in listed] == [
        ("C01", None, "all", "do_not_contact"),
        ("C01", None, "sms", "unsubscribed"),
        (None, "c***@example.com", "email", "bounced"),
    ]
    assert [e["channel"] for e in env.json("suppress", "list", "--channel", "sms")] == ["all", "sms"]
    assert [e["address"] for e in env.json("suppress", "list", "--reason", "bounced")] == ["c***@example.com"]
    assert env.json("suppress", "list", "--reason", "complained") == []
    text = env.ok("suppress", "list").output
    assert "C01" in text and "c***@example.com" in text and "c03@example.com" not in text

    # only the sms entry of C01
    assert env.json("suppress", "remove", "--customer", "C01", "--channel", "sms")["removed"] == 1
    assert [(r.customer_pk, r.channel) for r in env.rows()] == [(env.keys["C01"], None), (None, "email")]
    # the address, written differently
    assert "removed 1 entry" in env.ok("suppress", "remove", "--email", "c03@Example.COM").output
    assert env.json("suppress", "remove", "--email", "c03@example.com")["removed"] == 0
    assert env.json("suppress", "remove", "--customer", "C01")["removed"] == 1
    assert env.rows() == []
    assert env.cli("suppress", "remove", "--customer", "NOPE").exit_code == 2


# --- import --------------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_import_loads_rejects_reconciles_and_is_idempotent(env: Env, tmp_path: Path):
    file = write_csv(
        tmp_path / "suppressions.csv",
        [
            ["customer_id", "email", "phone", "channel", "reason", "note"],
            ["C01", "", "", "", "", "whole customer"],  # 2: loaded, all channels, do_not_contact
            ["", "c17@Example.com", "", "email", "unsubscribed", ""],  # 3: loaded
            ["", "", "+86 138 0000 0002", "sms", "bounced", ""],  # 4: loaded
            ["", "", "", "email", "", ""],  # 5: no identifier
            ["NOPE", "", "", "", "", ""],  # 6: unknown customer
            ["", "bad@", "", "", "", ""],  # 7: bad e-mail
            ["C03", "", "", "", "spam", ""],  # 8: bad reason
            ["", "c17@example.com", "", "email", "", ""],  # 9: same as line 3, normalised: unchanged
            ["C04", "", "13800000004", "sms", "", ""],  # 10: two entries, loaded
        ],
    )
    data = env.json("suppress", "import", str(file))
    assert data == {
        "kind": "suppressions",
        "file": str(file),
        "read": 9,
        "loaded": 4,
        "unchanged": 1,
        "rejected": 4,
        "entries_added": 5,
        "reject_file": str(tmp_path / "suppressions.rejects.csv"),
    }
    assert data["read"] == data["loaded"] + data["unchanged"] + data["rejected"]
    with open(data["reject_file"], encoding="utf-8", newline="") as handle:
        rejects = list(csv.DictReader(handle))
    assert [r["line"] for r in rejects] == ["5", "6", "7", "8"]
    assert "at least one of customer_id, email, phone" in rejects[0]["reject_reason"]
    assert "no customer" in rejects[1]["reject_reason"]
    assert rejects[2]["reject_reason"].startswith("email:")
    assert rejects[3]["reject_reason"].startswith("reason:")
    assert rejects[1]["customer_id"] == "NOPE"  # the original columns are kept
    rows = env.rows()
    assert {(r.customer_pk, r.address, r.channel, r.reason, r.source) for r in rows} == {
        (env.keys["C01"], None, None, "do_not_contact", "import"),
        (None, "c17@example.com", "email", "unsubscribed", "import"),
        (None, "+8613800000002", "sms", "bounced", "import"),
        (env.keys["C04"], None, "sms", "do_not_contact", "import"),
        (None, "+8613800000004", "sms", "do_not_contact", "import"),
    }

    again = env.json("suppress", "import", str(file))
    assert (again["read"], again["loaded"], again["unchanged"], again["rejected"]) == (9, 0, 5, 4)
    assert again["entries_added"] == 0
    assert len(env.rows()) == 5


def test_a_misspelt_channel_is_refused_not_recorded(env: Env, tmp_path: Path):
    """`--channel smss` used to record a suppression on a channel that does not exist: the member stayed reachable
    by SMS while the marketer believed them blocked."""
    result = env.cli("suppress", "add", "--customer", "C01", "--channel", "smss")
    assert result.exit_code == 2 and "did you mean 'sms'" in result.output, result.output
    file = write_csv(
        tmp_path / "typo.csv",
        [["customer_id", "channel"], ["C01", "smss"], ["C03", "sms"]],
    )
    data = env.json("suppress", "import", str(file))
    assert (data["loaded"], data["rejected"]) == (1, 1)
    with open(data["reject_file"], encoding="utf-8", newline="") as handle:
        [reject] = list(csv.DictReader(handle))
    assert reject["line"] == "2" and "did you mean 'sms'" in reject["reason"]
    assert {(r.customer_pk, r.channel) for r in env.rows()} == {(env.keys["C03"], "sms")}


def test_import_of_a_bad_file_exits_2(env: Env, tmp_path: Path):
    file = write_csv(tmp_path / "s.csv", [["name", "note"], ["x", "y"]])
    result = env.cli("suppress", "import", str(file))
    assert result.exit_code == 2
    assert "customer_id, email, phone" in result.output
    assert env.cli("suppress", "import", str(tmp_path / "missing.csv")).exit_code == 2
    assert env.rows() == []


# --- unsubscribe links ---------------------------------------------------------------------------------------------


def test_unsubscribe_with_a_genuine_token(env: Env):
    token = sign(KEY.encode(), "C01", "email")
    data = env.json("suppress", "unsubscribe", token)
    assert set(data) == ENTRY_KEYS | {"added"}
    assert (data["added"], data["customer_id"], data["channel"]) == (True, "C01", "email")
    assert (data["reason"], data["source"]) == ("unsubscribed", "unsubscribe_link")
    [row] = env.rows()
    assert (row.customer_pk, row.channel, row.reason) == (env.keys["C01"], "email", "unsubscribed")
    assert env.json("suppress", "unsubscribe", token)["added"] is False  # clicking twice
    assert len(env.rows()) == 1


@pytest.mark.parametrize(
    "token",
    [
        sign(b"another key", "C01", "email"),
        sign(KEY.encode(), "C01", "email")[:-2] + "AA",
        "garbage",
        sign(KEY.encode(), "NOPE", "email"),  # genuine, but nobody by that id
    ],
)
def test_unsubscribe_with_a_forged_token_exits_2(env: Env, token: str):
    result = env.cli("suppress", "unsubscribe", token)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert env.rows() == []


# --- the list is honoured by a following run -------------------------------------------------------------------------


def test_a_run_after_suppress_skips_the_suppressed(env: Env):
    env.ok("suppress", "add", "--customer", "C01", "--channel", "email")
    env.ok("suppress", "add", "--email", "c17@EXAMPLE.com")
    data = env.json("run", str(env.campaign), "--at", AT.isoformat())
    with env.engine.connect() as conn:
        rows = conn.execute(
            select(Customer.customer_id, Delivery.state, Delivery.reason).join(
                Customer, Customer.id == Delivery.customer_pk
            )
        ).all()
        suppressed = conn.execute(
            select(func.count()).select_from(Delivery).where(Delivery.reason == "suppressed")
        ).scalar_one()
    by_customer = {cid: (state, reason) for cid, state, reason in rows}
    assert by_customer["C01"] == ("skipped", "suppressed")
    assert by_customer["C17"] == ("skipped", "suppressed")
    assert suppressed == 2 == data["skipped"]["suppressed"]
    sent = [cid for cid, (state, _) in by_customer.items() if state == "sent"]
    assert sent, "the campaign should still reach someone"
    outbox = b"".join(p.read_bytes() for p in env.outbox.iterdir())
    assert b"c01@example.com" not in outbox and b"c17@example.com" not in outbox


# --- e-mail addresses match whatever their case ----------------------------------------------------------------------


def _import_email(env: Env, tmp_path: Path, customer_id: str, email: str) -> None:
    """The member's address as the customer importer stores it (it lower-cases the domain only)."""
    file = write_csv(tmp_path / "customers.csv", [["customer_id", "email"], [customer_id, email]])
    env.ok("import", "customers", str(file))


def _outcome(env: Env, customer_id: str) -> tuple[str, str | None]:
    with env.engine.connect() as conn:
        return conn.execute(
            select(Delivery.state, Delivery.reason)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Customer.customer_id == customer_id)
        ).one()


def test_an_email_suppression_matches_the_member_whatever_the_case(env: Env, tmp_path: Path):
    _import_email(env, tmp_path, "C01", "Alice@Example.com")
    env.ok("suppress", "add", "--email", "alice@example.com")
    env.ok("run", str(env.campaign), "--at", AT.isoformat())
    assert _outcome(env, "C01") == ("skipped", "suppressed")
    assert b"lice@example.com" not in b"".join(p.read_bytes() for p in env.outbox.iterdir())


def test_a_planned_message_is_not_sent_after_an_opt_out_in_another_case(env: Env, tmp_path: Path):
    _import_email(env, tmp_path, "C01", "Alice@Example.com")
    planned = env.json("run", str(env.campaign), "--at", AT.isoformat(), "--plan-only")
    assert _outcome(env, "C01") == ("pending", None)
    env.ok("suppress", "add", "--email", "ALICE@example.com", "--channel", "email")
    env.ok("dispatch", "--run", str(planned["run_id"]))
    assert _outcome(env, "C01") == ("skipped", "suppressed")
    assert b"lice@example.com" not in b"".join(p.read_bytes() for p in env.outbox.iterdir())


def test_a_mixed_case_suppression_matches_a_lower_case_member(env: Env, tmp_path: Path):
    stored = env.json("suppress", "add", "--email", "C17@Example.COM")
    assert stored["address"] == "c***@example.com"
    assert [r.address for r in env.rows()] == ["c17@example.com"]
    assert env.json("suppress", "add", "--email", "c17@example.com")["added"] is False
    env.ok("run", str(env.campaign), "--at", AT.isoformat())
    assert _outcome(env, "C17") == ("skipped", "suppressed")


def test_an_imported_suppression_matches_whatever_the_case(env: Env, tmp_path: Path):
    _import_email(env, tmp_path, "C01", "Alice@Example.com")
    file = write_csv(tmp_path / "s.csv", [["email", "channel"], ["ALICE@EXAMPLE.COM", "email"]])
    env.ok("suppress", "import", str(file))
    assert [r.address for r in env.rows()] == ["alice@example.com"]
    env.ok("run", str(env.campaign), "--at", AT.isoformat())
    assert _outcome(env, "C01") == ("skipped", "suppressed")


# --- contacts are masked in the output -------------------------------------------------------------------------------


def test_suppress_output_masks_contacts(env: Env):
    added = env.ok("suppress", "add", "--phone", "+86 138 1234 5679", "--channel", "sms").output
    assert "+8613812345679" not in added and "+86 138****5679" in added
    env.ok("suppress", "add", "--email", "alice@example.com", "--note", "asked by alice@example.com")
    again = env.ok("suppress", "add", "--email", "alice@example.com").output
    assert "alice@example.com" not in again and "a***@example.com" in again
    for output in (env.ok("suppress", "list").output, env.ok("suppress", "list", "--json").output):
        assert "alice@example.com" not in output and "+8613812345679" not in output, output
        assert "a***@example.com" in output and "+86 138****5679" in output
    removed = env.ok("suppress", "remove", "--email", "alice@example.com").output
    removed_json = env.ok("suppress", "remove", "--phone", "+8613812345679", "--json").output
    assert "alice@example.com" not in removed and "+8613812345679" not in removed_json


def test_an_address_added_by_a_bounce_is_lower_cased_and_an_openid_kept_exact(env: Env):
    """The provider paths (``claims.record_failed``) add the member's address as sent: ``suppressions.add``."""
    with env.engine.begin() as conn:
        for address, channel in (("Alice@Example.com", "email"), ("oAbC_Open-Id", "wechat")):
            target = suppressions.Target(address=address)
            suppressions.add(conn, target, channel=channel, reason="bounced", source="provider")
    assert [(r.address, r.channel) for r in env.rows()] == [("alice@example.com", "email"), ("oAbC_Open-Id", "wechat")]
    member = env.keys["C02"]
    with env.engine.connect() as conn:
        lookups = policies.BatchLookups(conn, [member], ["ALICE@example.com", "oabc_open-id", "oAbC_Open-Id"])
    assert lookups.is_suppressed(member, "email", "ALICE@example.com")
    assert lookups.is_suppressed(member, "wechat", "oAbC_Open-Id")
    assert not lookups.is_suppressed(member, "wechat", "oabc_open-id")  # openids are case-sensitive


def test_text_output_shows_times_in_the_shop_zone(env: Env):
    """The list and the "already suppressed" note printed UTC (+00:00) where every other text shows shop time."""
    env.ok("suppress", "add", "--customer", "C01")
    listed = env.cli("suppress", "list").output.strip().splitlines()[-1]
    again = env.cli("suppress", "add", "--customer", "C01").output
    for text in (listed, again):
        assert "+08:00" in text and "+00:00" not in text, text
