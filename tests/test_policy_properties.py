"""Property: whatever the members, consents, suppressions, caps and quiet hours, a real run never sends a message
against a policy, defers (never drops) those in their quiet hours, contacts whoever has an allowed channel, and
records every skipped member with exactly one reason.

Policies may change between planning and sending: the world also holds opt-outs that happen after the run is
planned (``--plan-only``) and before it is dispatched - suppressions by member or address, consents withdrawn.
A message planned before such a change is never sent: it ends ``skipped`` with the reason the planner would give.

Hypothesis draws small worlds; each is written to a fresh SQLite database and run through the real pipeline and
dispatcher (file outboxes). The oracle below is written from the policy rules in docs/guarantees.md, not from the code.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update

from orchestrator.config import Settings
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Campaign, CampaignRun, Customer, CustomerConsent, Delivery, Suppression
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.service import Orchestrator
from orchestrator.timeutil import DailyWindow

AT = datetime(2026, 11, 2, 12, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
ZONES = ("Asia/Shanghai", "Europe/London", "America/New_York", None)
CHANNELS = ("sms", "email")
CONSENT = {"sms": "sms", "email": "email"}


@dataclass(frozen=True)
class Member:
    email: bool
    phone: bool
    consents: frozenset[str]
    zone: str | None
    earlier_sends: tuple[tuple[str, int], ...]  # (channel, hours before AT) of messages already sent


@dataclass(frozen=True)
class Block:
    member: int
    by_address: bool  # the suppression names the address instead of the member
    channel: str | None  # None: every channel


@dataclass(frozen=True)
class Cap:
    max: int
    days: int
    channel: str | None


@dataclass(frozen=True)
class World:
    members: tuple[Member, ...]
    blocks: tuple[Block, ...]
    caps: tuple[Cap, ...]
    quiet: str | None
    strategy: str
    # opt-outs after planning, before dispatch
    late_blocks: tuple[Block, ...] = ()
    late_withdrawals: frozenset[tuple[int, str]] = frozenset()  # (member, consent channel)


members = st.builds(
    Member,
    email=st.booleans(),
    phone=st.booleans(),
    consents=st.frozensets(st.sampled_from(CHANNELS)),
    zone=st.sampled_from(ZONES),
    earlier_sends=st.lists(st.tuples(st.sampled_from(CHANNELS), st.integers(1, 24 * 10)), max_size=3).map(tuple),
)
worlds = st.integers(1, 10).flatmap(
    lambda n: st.builds(
        World,
        members=st.lists(members, min_size=n, max_size=n).map(tuple),
        blocks=st.lists(
            st.builds(Block, st.integers(0, n - 1), st.booleans(), st.sampled_from((None, *CHANNELS))), max_size=4
        ).map(tuple),
        caps=st.lists(
            st.builds(Cap, st.integers(1, 3), st.integers(1, 7), st.sampled_from((None, *CHANNELS))), max_size=2
        ).map(tuple),
        quiet=st.sampled_from((None, "21:00-09:00", "12:00-13:00", "00:00-23:59", "20:00-04:00")),
        strategy=st.sampled_from(("first_reachable", "all")),
        late_blocks=st.lists(
            st.builds(Block, st.integers(0, n - 1), st.booleans(), st.sampled_from((None, *CHANNELS))), max_size=3
        ).map(tuple),
        late_withdrawals=st.frozensets(st.tuples(st.integers(0, n - 1), st.sampled_from(CHANNELS)), max_size=3),
    )
)


def address(world: World, index: int, channel: str) -> str | None:
    member = world.members[index]
    if channel == "email":
        return f"m{index}@example.com" if member.email else None
    return f"+86138000{index:05d}" if member.phone else None


def blocked(world: World, blocks: tuple[Block, ...], index: int, channel: str) -> bool:
    contact = address(world, index, channel)
    for block in blocks:
        if block.by_address:  # the written address: the member's on the block's channel (e-mail for all)
            applies = address(world, block.member, block.channel or "email") == contact
        else:
            applies = block.member == index
        if applies and block.channel in (None, channel):
            return True
    return False


def allowed(world: World, index: int, channel: str) -> str | None:
    """Why ``channel`` may not be used for this member (None: it may), by the rules, not the code."""
    member = world.members[index]
    contact = address(world, index, channel)
    if contact is None:
        return "no_contact"
    if CONSENT[channel] not in member.consents:
        return "no_consent"
    if blocked(world, world.blocks, index, channel):
        return "suppressed"
    for cap in world.caps:
        if cap.channel in (None, channel):
            counted = [c for c, hours in member.earlier_sends if cap.channel in (None, c) and hours < cap.days * 24]
            if len(counted) >= cap.max:
                return "frequency_cap"
    return None


def late_reason(world: World, index: int, channel: str) -> str | None:
    """Why a message planned on ``channel`` may no longer be sent, after the late opt-outs (None: it may)."""
    if (index, CONSENT[channel]) in world.late_withdrawals:
        return "no_consent"
    if blocked(world, world.late_blocks, index, channel):
        return "suppressed"
    return None


def in_quiet_hours(world: World, index: int) -> bool:
    if not world.quiet:
        return False
    zone = ZoneInfo(world.members[index].zone or "Asia/Shanghai")
    return DailyWindow.parse(world.quiet).contains(AT.astimezone(zone).time())


def write(engine, world: World) -> dict[int, int]:
    now = datetime.now(UTC)
    pks: dict[int, int] = {}
    with engine.begin() as conn:
        campaign = conn.execute(
            insert(Campaign).values(name="earlier", definition={}, content_hash="x", created_at=now, updated_at=now)
        ).inserted_primary_key[0]
        for i, member in enumerate(world.members):
            pk = conn.execute(
                insert(Customer).values(
                    customer_id=f"M{i:03d}",
                    name=f"Member {i}",
                    email=address(world, i, "email"),
                    phone=address(world, i, "sms"),
                    timezone=member.zone,
                    signup_at=AT - timedelta(days=400),
                    attributes={},
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            pks[i] = pk
            for channel in member.consents:
                conn.execute(
                    insert(CustomerConsent).values(customer_pk=pk, channel=channel, opted_in=True, updated_at=now)
                )
            for n, (channel, hours) in enumerate(member.earlier_sends):
                run = conn.execute(
                    insert(CampaignRun).values(
                        campaign_pk=campaign,
                        scheduled_at=AT - timedelta(days=30, hours=i * 10 + n),
                        state="done",
                        summary={},
                    )
                ).inserted_primary_key[0]
                sent_at = AT - timedelta(hours=hours, minutes=1)
                conn.execute(
                    insert(Delivery).values(
                        run_pk=run,
                        customer_pk=pk,
                        channel=channel,
                        state="sent",
                        attempts=1,
                        sent_at=sent_at,
                        created_at=sent_at,
                        updated_at=sent_at,
                    )
                )
        write_blocks(conn, world, world.blocks, pks)
    return pks


def write_blocks(conn, world: World, blocks: tuple[Block, ...], pks: dict[int, int]) -> None:
    # the list holds one entry per target and channel (a unique key): a repeated block, or a late one already in
    # place, adds nothing
    rows = conn.execute(select(Suppression.customer_pk, Suppression.address, Suppression.channel))
    written = {tuple(row) for row in rows}
    for block in blocks:
        channel = block.channel or "email"
        target = address(world, block.member, channel) if block.by_address else None
        if block.by_address and target is None:
            continue  # nothing to name: no suppression is written (and the oracle needs none)
        key = (None if block.by_address else pks[block.member], target, block.channel)
        if key in written:
            continue
        written.add(key)
        conn.execute(
            insert(Suppression).values(
                customer_pk=None if block.by_address else pks[block.member],
                address=target,
                channel=block.channel,
                reason="unsubscribed",
                created_at=datetime.now(UTC),
            )
        )


def opt_out_late(engine, world: World, pks: dict[int, int]) -> None:
    """The opt-outs that happen after planning: suppressions added, consents withdrawn."""
    with engine.begin() as conn:
        write_blocks(conn, world, world.late_blocks, pks)
        for index, channel in world.late_withdrawals:
            conn.execute(
                update(CustomerConsent)
                .where(CustomerConsent.customer_pk == pks[index], CustomerConsent.channel == channel)
                .values(opted_in=False)
            )


def campaign_file(folder: Path, world: World) -> Path:
    caps = ", ".join(
        f"{{max: {c.max}, per: {c.days}d" + (f", channel: {c.channel}" if c.channel else "") + "}" for c in world.caps
    )
    dispatch = [f"strategy: {world.strategy}", "channels: [sms, email]"]
    if caps:
        dispatch.append(f"frequency_cap: [{caps}]")
    if world.quiet:
        dispatch.append(f'quiet_hours: "{world.quiet}"')
    path = folder / "campaign.yaml"
    path.write_text(
        "name: property\nsegment: {frequency: {gte: 0}}\nmessage:\n  sms: {text: 'Hi {{ customer.name }}'}\n"
        "  email: {subject: Hi, text: 'Hello {{ customer.name }}'}\n"
        f"dispatch: {{{', '.join(dispatch)}}}\n",
        encoding="utf-8",
    )
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds)
def test_no_message_against_a_policy_and_one_reason_per_skip(world: World, tmp_path_factory, _sqlite_template):
    folder = tmp_path_factory.mktemp("world")
    shutil.copyfile(_sqlite_template, folder / "db.sqlite")
    engine = create_db_engine(f"sqlite:///{folder / 'db.sqlite'}")
    try:
        # a block on a missing address writes nothing: drop it from the world the oracle reads too
        def written(blocks: tuple[Block, ...]) -> tuple[Block, ...]:
            return tuple(b for b in blocks if not b.by_address or address(world, b.member, b.channel or "email"))

        world = World(
            world.members,
            written(world.blocks),
            world.caps,
            world.quiet,
            world.strategy,
            written(world.late_blocks),
            world.late_withdrawals,
        )
        pks = write(engine, world)
        config = Settings(
            base_dir=str(folder),
            templates=[],
            channels={"sms": {"outbox": "out/sms"}, "email": {"outbox": "out/email"}},
        )
        service = Orchestrator(config, engine)
        runner = service.runner(service.load(campaign_file(folder, world)))
        result = runner.execute(AT, dry_run=False, sample=0, send=False)  # planned, as with --plan-only
        query = select(Delivery.customer_pk, Delivery.channel, Delivery.state, Delivery.reason).where(
            Delivery.run_pk == result.run_id
        )
        with engine.connect() as conn:
            planned = conn.execute(query).all()
        opt_out_late(engine, world, pks)
        dispatcher = Dispatcher(engine, config, service.channel)
        try:  # everything due, the quiet hours' deferrals included
            dispatcher.drain(result.run_id, linger=0, deferred_due_at=AT + timedelta(days=2))
        finally:
            dispatcher.close()
        with engine.connect() as conn:
            sent = {(row.customer_pk, row.channel): row for row in conn.execute(query)}
    finally:
        engine.dispose()
    by_member = defaultdict(list)
    for row in planned:
        by_member[row.customer_pk].append(row)
    for index in range(len(world.members)):
        mine = by_member[pks[index]]
        reasons = {channel: allowed(world, index, channel) for channel in ("sms", "email")}
        open_channels = [c for c in ("sms", "email") if reasons[c] is None]
        states = {row.state for row in mine}
        if not open_channels:
            assert len(mine) == 1 and mine[0].state == "skipped", mine  # exactly one row, one reason
            assert mine[0].reason in set(reasons.values()), (mine, reasons)  # a reason that holds
            assert sent[(mine[0].customer_pk, mine[0].channel)] == mine[0]  # dispatch left it alone
            continue
        assert "skipped" not in states, (mine, reasons)
        for row in mine:
            assert reasons[row.channel] is None, (row, reasons)  # never a message against a policy
        expected = open_channels[:1] if world.strategy == "first_reachable" else open_channels
        assert sorted(row.channel for row in mine) == sorted(expected)
        assert states == ({"deferred"} if in_quiet_hours(world, index) else {"pending"}), (mine, world.quiet)
        for row in mine:  # policy changes between plan and send: the opted-out are skipped, the rest sent
            late = late_reason(world, index, row.channel)
            after = sent[(row.customer_pk, row.channel)]
            assert (after.state, after.reason) == (("skipped", late) if late else ("sent", None)), (after, world)
    assert sum(result.skipped.values()) == sum(1 for m in by_member.values() if m[0].state == "skipped")
