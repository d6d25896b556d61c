"""The results report: one document for ``orchestrator report`` (``--json``, ``--csv``, the terminal table).

Everything is aggregated in SQL at two grains, (run, step, variant) and (run, step, variant, channel); the
document's totals, ``by_campaign``, ``by_step``, ``by_variant`` and ``by_channel`` are sums of those few rows,
since every figure is a count or a sum (members, converters, Σ revenue, Σ revenue²). A member belongs to one step
and one variant of a run, so those rows add up to the run; a member reached on two channels appears in both
channel rows. A variant is compared with the held-out members assigned the same variant (see
``orchestrator.variants``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Connection, Engine, and_, case, func, literal, or_, select

from orchestrator.config import Settings
from orchestrator.db.models import Campaign, CampaignRun, Coupon, CouponRedemption, Delivery, Order
from orchestrator.db.types import UTCDateTime
from orchestrator.errors import InputError
from orchestrator.facts import days_between
from orchestrator.money import CENT, from_minor, quantize
from orchestrator.results import attribution as attr
from orchestrator.results.stats import GroupSums, newcombe_interval, welch_interval

STEP, CHANNEL = "step", "channel"
_WINDOW = TypeAdapter(timedelta)


@dataclass
class Tally:
    """Everything a report row says, as counts and sums that add up across runs, steps and channels."""

    targeted: int = 0
    sent: int = 0  # messages handed to a provider: delivered + failed
    delivered: int = 0
    failed: int = 0
    skipped: Counter = field(default_factory=Counter)
    issued: int = 0
    redeemed: int = 0
    offer_cost: Decimal = Decimal(0)
    send_cost: Decimal = Decimal(0)
    attributed_minor: int = 0
    treatment: GroupSums = field(default_factory=GroupSums)
    control: GroupSums = field(default_factory=GroupSums)

    def __add__(self, other: Tally) -> Tally:
        total = Tally()
        for f in fields(self):
            setattr(total, f.name, getattr(self, f.name) + getattr(other, f.name))
        return total


@dataclass(frozen=True)
class Scope:
    campaign: str | None
    run_id: int | None
    at: datetime
    runs_until: datetime | None = None  # only runs scheduled at or before this (default: ``at``)


def build_report(engine: Engine, settings: Settings, scope: Scope) -> dict[str, Any]:
    """The report document (see docs/domain.md, "Results", and README, ``orchestrator report``)."""
    with engine.connect() as conn:
        runs = _runs(conn, settings, scope)
        run_pks = [r["pk"] for r in runs]
        windows = _windows(conn, settings)
        by_step: dict[tuple, Tally] = defaultdict(Tally)
        by_channel: dict[tuple, Tally] = defaultdict(Tally)
        daily: list[dict[str, Any]] = []
        follow_ups: dict[tuple, Tally] = {}
        follow_up_channels: dict[tuple, Tally] = {}
        if run_pks:
            attr.fill_tables(conn, scope.at, run_pks, windows, settings.results.attribution.model)
            _collect(conn, settings, scope.at, run_pks, runs, by_step, by_channel)
            follow_ups = _follow_up_members(conn, scope.at, run_pks, windows)
            follow_up_channels = _follow_up_members(conn, scope.at, run_pks, windows, by_channel=True)
            daily = _daily(conn, settings, scope.at, run_pks, runs)
            attr.drop_tables(conn)
    results = settings.results
    total = sum(by_step.values(), Tally())
    document: dict[str, Any] = {
        "campaign": scope.campaign,
        "at": scope.at.astimezone(settings.tz).isoformat(timespec="seconds"),
        "runs": [
            {k: r[k] for k in ("run_id", "campaign", "scheduled_at", "state")}
            for r in sorted(runs, key=lambda r: (r["scheduled_at"], r["run_id"]))
        ],
        **metrics(total, settings),
        "margin": str(results.margin) if results.margin is not None else None,
        "attribution": {"model": results.attribution.model, "default_window": _days(results.attribution.window)},
        "currency": settings.currency,
        "daily": daily,
    }
    document["funnel"] = [
        {"stage": "targeted", "value": total.targeted},
        {"stage": "contacted", "value": total.treatment.members},
        {"stage": "redeemed", "value": total.redeemed},
        {"stage": "revenue", "value": _money(from_minor(total.attributed_minor))},
    ]
    campaign_of = {r["pk"]: r["campaign"] for r in runs}
    document["by_campaign"] = [
        {"campaign": name, **metrics(tally, settings)}
        for name, tally in _roll_up(by_step, lambda k: campaign_of[k[0]]).items()
    ]
    # a follow-up is a row of by_step like a step: its messages and coupons are in the totals above, its members
    # (the run's members again) and its control comparison only here
    follow_up_members = _roll_up(follow_ups, lambda k: (campaign_of[k[0]], k[1]))
    document["by_step"] = [
        {
            "campaign": name,
            "step": step,
            **({"follow_up": True} if (name, step) in follow_up_members else {}),
            **metrics(tally + follow_up_members.get((name, step), Tally()), settings),
        }
        for (name, step), tally in _roll_up(by_step, lambda k: (campaign_of[k[0]], k[1])).items()
    ]
    with_variant = {key: tally for key, tally in by_step.items() if key[2] is not None}
    document["by_variant"] = [
        {"campaign": name, "step": step, "variant": variant, **metrics(tally, settings)}
        for (name, step, variant), tally in _roll_up(with_variant, lambda k: (campaign_of[k[0]], k[1], k[2])).items()
    ]
    document["by_channel"] = [
        {"channel": channel, **metrics(tally, settings)}
        for channel, tally in _roll_up(by_channel, lambda k: k[3]).items()
    ]
    document["rows"] = [
        {
            "run_id": key[0],
            "campaign": runs_by_pk[key[0]]["campaign"],
            "step": key[1],
            "variant": key[2],
            "channel": key[3],
            # a follow-up's row: its members and control comparison on that channel, added here only
            **metrics(tally + follow_up_channels.get((key[0], key[1], key[3]), Tally()), settings),
        }
        for runs_by_pk in [{r["pk"]: r for r in runs}]
        for key, tally in sorted(by_channel.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), str(kv[0][2]), kv[0][3]))
    ]
    return document


def _roll_up(tallies: Mapping[tuple, Tally], label) -> dict[Any, Tally]:
    out: dict[Any, Tally] = {}
    for key in sorted(tallies, key=lambda k: str(label(k))):
        name = label(key)
        out[name] = out.get(name, Tally()) + tallies[key]
    return out


# --- figures from a tally -----------------------------------------------------------------------------------


def metrics(tally: Tally, settings: Settings) -> dict[str, Any]:
    """The contract's metric keys for one tally (top level, a step, a channel, a CSV row)."""
    t, c = tally.treatment, tally.control
    rate_t, rate_c = t.rate, c.rate
    uplift = rate_t - rate_c if rate_t is not None and rate_c is not None else None
    uplift_ci = newcombe_interval(t.converted, t.members, c.converted, c.members)
    revenue_ci = welch_interval(t, c)  # minor units per member
    per_t = _per_member(t)
    per_c = _per_member(c)
    incremental = quantize((per_t - per_c) * t.members) if per_t is not None and per_c is not None else None
    attributed = from_minor(tally.attributed_minor)
    margin = settings.results.margin if settings.results.margin is not None else Decimal(1)
    cost = tally.offer_cost + tally.send_cost
    return {
        "targeted": tally.targeted,
        "control": c.members,
        "contacted": t.members,
        "sent": tally.sent,
        "delivered": tally.delivered,
        "failed": tally.failed,
        "skipped": dict(sorted(tally.skipped.items())),
        "offers": {
            "issued": tally.issued,
            "redeemed": tally.redeemed,
            "redemption_rate": tally.redeemed / tally.issued if tally.issued else None,
            "cost": _money(tally.offer_cost),
        },
        "conversions": {
            "treatment": t.converted,
            "control": c.converted,
            "rate_treatment": rate_t,
            "rate_control": rate_c,
            "uplift": uplift,
            "uplift_ci95": list(uplift_ci) if uplift_ci else None,
            "uplift_relative": uplift / rate_c if uplift is not None and rate_c else None,
            "incremental": round(uplift * t.members, 1) if uplift is not None else None,
        },
        "revenue": {
            "attributed": _money(attributed),
            "per_member_treatment": _money(per_t),
            "per_member_control": _money(per_c),
            "incremental": _money(incremental),
            "incremental_ci95": (
                [_money(_scaled(bound, t.members)) for bound in revenue_ci] if revenue_ci is not None else None
            ),
        },
        "send_cost": _money(tally.send_cost),
        "roi": _roi(attributed, margin, cost),
        "roi_incremental": _roi(incremental, margin, cost),
        "cannibalisation": min(1.0, rate_c / rate_t) if rate_t and rate_c is not None else None,
        "verdict": verdict(tally, settings.results.min_group_size, uplift, uplift_ci),
    }


def _per_member(group: GroupSums) -> Decimal | None:
    if not group.members:
        return None
    return Decimal(int(group.total)) / group.members / 100


def _scaled(per_member_minor: float, members: int) -> Decimal:
    return quantize(Decimal(repr(per_member_minor)) * members / 100)


def _roi(revenue: Decimal | None, margin: Decimal, cost: Decimal) -> float | None:
    """(revenue × margin − cost) ÷ cost, where cost is offer cost + send cost; undefined without a cost."""
    if revenue is None or cost <= 0:
        return None
    return float(quantize((revenue * margin - cost) / cost, "0.0001"))


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(CENT))


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def verdict(tally: Tally, min_group: int, uplift: float | None, ci: tuple[float, float] | None) -> str:
    """One plain sentence on the conversion uplift."""
    t, c = tally.treatment, tally.control
    if not t.members and not c.members:
        skipped = sum(tally.skipped.values())
        return (
            f"Nobody was contacted or held out ({skipped} members skipped, see the reasons): "
            "there is no effect to measure."
        )
    if not c.members:
        return "No control group: the effect cannot be measured (hold some members out with control_group:)."
    if t.members < min_group or c.members < min_group or ci is None or uplift is None:
        return (
            f"Too small a sample to tell: {t.members} contacted and {c.members} held-out members "
            f"(at least {min_group} in each are needed)."
        )
    measured = f"{_points(uplift)} points conversion (95% CI {_points(ci[0])} to {_points(ci[1])})"
    if ci[0] > 0:
        return f"Clear positive effect: {measured}."
    if ci[1] < 0:
        return f"Clear negative effect: {measured}."
    return f"Not distinguishable from no effect: {measured}."


def _days(window: timedelta) -> str:
    return f"{window.days}d" if window == timedelta(days=window.days) else str(window)


# --- the queries --------------------------------------------------------------------------------------------


def _runs(conn: Connection, settings: Settings, scope: Scope) -> list[dict[str, Any]]:
    query = (
        select(CampaignRun.id, Campaign.name, CampaignRun.scheduled_at, CampaignRun.state, CampaignRun.summary)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .where(CampaignRun.scheduled_at <= literal(scope.runs_until or scope.at, UTCDateTime()))
    )
    if scope.campaign is not None:
        if conn.execute(select(Campaign.id).where(Campaign.name == scope.campaign)).first() is None:
            raise InputError(
                f"no campaign named {scope.campaign!r} has run",
                hint="orchestrator runs lists the runs; give a campaign's name (its name: key), or none for all",
            )
        query = query.where(Campaign.name == scope.campaign)
    if scope.run_id is not None:
        query = query.where(CampaignRun.id == scope.run_id)
    runs = [
        {
            "pk": row.id,
            "run_id": row.id,
            "campaign": row.name,
            "scheduled_at": row.scheduled_at.astimezone(settings.tz).isoformat(timespec="seconds"),
            "scheduled": row.scheduled_at,
            "state": row.state,
            "summary": row.summary or {},
        }
        for row in conn.execute(query)
    ]
    if scope.run_id is not None and not runs:
        raise InputError(
            f"run {scope.run_id} does not exist"
            + (f" for campaign {scope.campaign!r}" if scope.campaign else "")
            + " or was scheduled after --at",
            hint="orchestrator runs lists the runs and their ids",
        )
    return runs


def _windows(conn: Connection, settings: Settings) -> attr.Windows:
    """Each campaign's window from the definition its runs were made with (``attribution: {window: …}``)."""
    default = settings.results.attribution.window
    per_campaign: dict[int, timedelta] = {}
    for pk, definition in conn.execute(select(Campaign.id, Campaign.definition)):
        window = ((definition or {}).get("attribution") or {}).get("window")
        if window is not None:
            per_campaign[pk] = _WINDOW.validate_python(window)
    return attr.Windows(default, per_campaign)


def _collect(conn, settings, at, run_pks, runs, by_step, by_channel) -> None:
    exposure, outcomes, attributed = attr.EXPOSURES, attr.OUTCOMES, attr.ATTRIBUTED
    in_scope = Delivery.run_pk.in_(run_pks)

    # messages and skips per (run, step, channel); the step grain adds its channels up
    for row in conn.execute(
        select(
            Delivery.run_pk,
            Delivery.step,
            Delivery.variant,
            Delivery.channel,
            Delivery.state,
            Delivery.reason,
            func.count(),
        )
        .where(in_scope)
        .group_by(Delivery.run_pk, Delivery.step, Delivery.variant, Delivery.channel, Delivery.state, Delivery.reason)
    ):
        run_pk, step, variant, channel, state, reason, n = row
        for tally in (by_step[(run_pk, step, variant, None)], by_channel[(run_pk, step, variant, channel)]):
            if state in ("sent", "failed"):
                tally.sent += n
                tally.delivered += n if state == "sent" else 0
                tally.failed += n if state == "failed" else 0
            elif state == "skipped":
                tally.skipped[reason or "unknown"] += n
        if state == "sent":
            cost = _send_cost(settings, channel, n, runs, run_pk)
            by_step[(run_pk, step, variant, None)].send_cost += cost
            by_channel[(run_pk, step, variant, channel)].send_cost += cost

    # members each run decided about (a follow-up's are the run's again: counted apart, see _follow_up_members)
    members = func.count(func.distinct(Delivery.customer_pk))
    own = Delivery.follow_up == ""
    for run_pk, step, variant, n in conn.execute(
        select(Delivery.run_pk, Delivery.step, Delivery.variant, members)
        .where(in_scope, own)
        .group_by(Delivery.run_pk, Delivery.step, Delivery.variant)
    ):
        by_step[(run_pk, step, variant, None)].targeted += n
    for run_pk, step, variant, channel, n in conn.execute(
        select(Delivery.run_pk, Delivery.step, Delivery.variant, Delivery.channel, members)
        .where(in_scope, own)
        .group_by(Delivery.run_pk, Delivery.step, Delivery.variant, Delivery.channel)
    ):
        by_channel[(run_pk, step, variant, channel)].targeted += n

    # the control comparison
    def add_groups(rows, tallies, key_of):
        for row in rows:
            sums = GroupSums(
                int(row.members), int(row.converted or 0), float(row.revenue or 0), float(row.revenue_squares or 0)
            )
            tally = tallies[key_of(row)]
            if row.grp == attr.TREATMENT:
                tally.treatment = tally.treatment + sums
            else:
                tally.control = tally.control + sums

    add_groups(
        conn.execute(attr.group_sums(outcomes, [outcomes.c.run_pk, outcomes.c.step, outcomes.c.variant])),
        by_step,
        lambda r: (r.run_pk, r.step, r.variant, None),
    )
    reached = _reached_on(outcomes.c.run_pk, outcomes.c.customer_pk, outcomes.c.grp)
    add_groups(
        conn.execute(
            attr.group_sums(outcomes, [outcomes.c.run_pk, outcomes.c.step, outcomes.c.variant, Delivery.channel]).join(
                Delivery, reached
            )
        ),
        by_channel,
        lambda r: (r.run_pk, r.step, r.variant, r.channel),
    )

    # attributed revenue of contacted members
    treated = and_(
        exposure.c.run_pk == attributed.c.run_pk,
        exposure.c.customer_pk == attributed.c.customer_pk,
        exposure.c.grp == attr.TREATMENT,
    )
    scoped = attributed.c.run_pk.in_(run_pks)
    for run_pk, step, variant, total in conn.execute(
        select(attributed.c.run_pk, exposure.c.step, exposure.c.variant, func.sum(attributed.c.amount))
        .join(exposure, treated)
        .where(scoped)
        .group_by(attributed.c.run_pk, exposure.c.step, exposure.c.variant)
    ):
        by_step[(run_pk, step, variant, None)].attributed_minor += int(total or 0)
    sent_row = _reached_on(attributed.c.run_pk, attributed.c.customer_pk, literal(attr.TREATMENT))
    for run_pk, step, variant, channel, total in conn.execute(
        select(
            attributed.c.run_pk, exposure.c.step, exposure.c.variant, Delivery.channel, func.sum(attributed.c.amount)
        )
        .join(exposure, treated)
        .join(Delivery, sent_row)
        .where(scoped)
        .group_by(attributed.c.run_pk, exposure.c.step, exposure.c.variant, Delivery.channel)
    ):
        by_channel[(run_pk, step, variant, channel)].attributed_minor += int(total or 0)

    _offers(conn, settings, at, run_pks, by_step, by_channel)


def _follow_up_members(conn, at, run_pks, windows, *, by_channel: bool = False) -> dict[tuple, Tally]:
    """Per (run, follow-up) - and channel, ``by_channel`` - the members it decided about and its own control
    comparison. Kept apart from the steps' tallies: its members are the run's members again, so they must not add
    to the run's totals, nor to a channel's."""
    found: dict[tuple, Tally] = defaultdict(Tally)
    members = func.count(func.distinct(Delivery.customer_pk))
    keys = [Delivery.run_pk, Delivery.follow_up] + ([Delivery.channel] if by_channel else [])
    for *key, n in conn.execute(
        select(*keys, members).where(Delivery.run_pk.in_(run_pks), Delivery.follow_up != "").group_by(*keys)
    ):
        found[tuple(key)].targeted += n
    for row in conn.execute(attr.follow_up_groups(at, run_pks, windows, by_channel=by_channel)):
        sums = GroupSums(
            int(row.members), int(row.converted or 0), float(row.revenue or 0), float(row.revenue_squares or 0)
        )
        tally = found[(row.run_pk, row.follow_up, row.channel) if by_channel else (row.run_pk, row.follow_up)]
        if row.grp == attr.TREATMENT:
            tally.treatment = tally.treatment + sums
        else:
            tally.control = tally.control + sums
    return found


def _reached_on(run_pk, customer_pk, grp):
    """The delivery rows that put a member in a channel's slice: sent ones for the contacted, held-out ones for
    the control group."""
    return and_(
        Delivery.run_pk == run_pk,
        Delivery.customer_pk == customer_pk,
        or_(
            and_(grp == attr.TREATMENT, Delivery.state == "sent"),
            and_(grp == attr.CONTROL, Delivery.state == "held_out"),
        ),
    )


def _send_cost(settings: Settings, channel: str, delivered: int, runs, run_pk: int) -> Decimal:
    """``cost_per_message`` × messages + ``cost_per_segment`` × segments, the segments per message taken from the
    run's own count of SMS segments (the rendered messages are not kept once sent)."""
    price = settings.channels.get(channel) or {}
    per_message = Decimal(str(price.get("cost_per_message") or 0))
    per_segment = Decimal(str(price.get("cost_per_segment") or 0))
    cost = per_message * delivered
    if per_segment:
        summary = next((r["summary"] for r in runs if r["pk"] == run_pk), {})
        planned = (summary.get("channels") or {}).get(channel) or 0
        segments = summary.get("sms_segments") or 0
        per_message_segments = Decimal(segments) / planned if planned and segments else Decimal(1)
        cost += per_segment * per_message_segments * delivered
    return quantize(cost)


def _offers(conn, settings: Settings, at: datetime, run_pks: list[int], by_step, by_channel) -> None:
    """Coupons issued (not voided) and redeemed by ``at`` on an order still paid; the cost of each redeemed one."""
    at_lit = literal(at, UTCDateTime())
    redeemed = case(
        (
            and_(
                CouponRedemption.id.is_not(None),
                CouponRedemption.redeemed_at <= at_lit,
                or_(CouponRedemption.order_pk.is_(None), Order.status == "paid"),
            ),
            1,
        ),
        else_=0,
    )
    face = Coupon.terms["face_value"].as_string()
    value = attr.amount_minor(Coupon.value)
    base = (
        select(Coupon.run_pk, Coupon.step, Coupon.offer_kind, face.label("face"), value.label("value"))
        .outerjoin(CouponRedemption, CouponRedemption.coupon_pk == Coupon.id)
        .outerjoin(Order, Order.id == CouponRedemption.order_pk)
        .where(Coupon.run_pk.in_(run_pks), Coupon.state != "void", Coupon.issued_at <= at_lit)
    )
    keys = (Coupon.run_pk, Coupon.step, Coupon.offer_kind, face, value)
    # a coupon's variant is its deliveries' (one member, one step, one variant)
    carried = (
        select(Delivery.coupon_pk, func.max(Delivery.variant).label("variant"))
        .where(Delivery.run_pk.in_(run_pks), Delivery.coupon_pk.is_not(None))
        .group_by(Delivery.coupon_pk)
        .subquery("coupon_variants")
    )
    step_rows = conn.execute(
        base.add_columns(carried.c.variant, func.count().label("issued"), func.sum(redeemed).label("redeemed"))
        .outerjoin(carried, carried.c.coupon_pk == Coupon.id)
        .group_by(*keys, carried.c.variant)
    )
    # from the runs' sent deliveries to their coupons (deliveries have no index on coupon_pk, coupons a primary key)
    channel_rows = conn.execute(
        select(
            Coupon.run_pk,
            Coupon.step,
            Coupon.offer_kind,
            face.label("face"),
            value.label("value"),
            Delivery.variant,
            Delivery.channel,
            func.count().label("issued"),
            func.sum(redeemed).label("redeemed"),
        )
        .select_from(Delivery)
        .join(Coupon, Coupon.id == Delivery.coupon_pk)
        .outerjoin(CouponRedemption, CouponRedemption.coupon_pk == Coupon.id)
        .outerjoin(Order, Order.id == CouponRedemption.order_pk)
        .where(
            Delivery.run_pk.in_(run_pks),
            Delivery.state == "sent",
            Coupon.state != "void",
            Coupon.issued_at <= at_lit,
        )
        .group_by(*keys, Delivery.variant, Delivery.channel)
    )
    for rows, tallies, key_of in (
        (step_rows, by_step, lambda r: (r.run_pk, r.step, r.variant, None)),
        (channel_rows, by_channel, lambda r: (r.run_pk, r.step, r.variant, r.channel)),
    ):
        for row in rows:
            tally = tallies[key_of(row)]
            tally.issued += row.issued
            tally.redeemed += int(row.redeemed or 0)
            tally.offer_cost += _coupon_cost(settings, row.offer_kind, row.face, row.value) * int(row.redeemed or 0)


def _coupon_cost(settings: Settings, kind: str, face: str | None, value_minor: int | None) -> Decimal:
    """What one redeemed coupon costs the shop: the configured cost of its kind, else its face value (the amount
    off, the percent-off cap, a gift's declared face value)."""
    configured = settings.results.offer_cost.get(kind)
    if configured is not None:
        return configured
    if face not in (None, "", "None") and Decimal(face) > 0:
        return Decimal(face)
    if kind == "amount_off" and value_minor:
        return from_minor(value_minor)
    return Decimal(0)


def _daily(conn, settings: Settings, at: datetime, run_pks, runs) -> list[dict[str, Any]]:
    """Conversions (by the day of each member's first converting order) and window revenue per shop-local day,
    contacted against held out, from the first run's day to ``at`` or the end of the last window."""
    exposure, outcomes = attr.EXPOSURES, attr.OUTCOMES
    first_day = min(r["scheduled"] for r in runs).astimezone(settings.tz).date()
    anchor = datetime.combine(first_day, time(0), settings.tz)
    day = days_between(anchor, outcomes.c.first_order)
    per_day: dict[int, dict[str, Any]] = defaultdict(lambda: Counter())
    for grp, index, n in conn.execute(
        select(outcomes.c.grp, day, func.count()).where(outcomes.c.converted == 1).group_by(outcomes.c.grp, day)
    ):
        per_day[index][f"conversions_{grp}"] += n
    scoped = exposure.c.run_pk.in_(run_pks)
    order_day = days_between(anchor, Order.ordered_at)
    for grp, index, total in conn.execute(
        select(exposure.c.grp, order_day, func.sum(attr.amount_minor()))
        .select_from(exposure)
        .join(Order, attr.paid_in_window(at, exposure))
        .where(scoped)
        .group_by(exposure.c.grp, order_day)
    ):
        per_day[index][f"revenue_{grp}"] += int(total or 0)
    members = dict(conn.execute(select(outcomes.c.grp, func.count()).group_by(outcomes.c.grp)).all())
    last = max(per_day) if per_day else 0
    return [
        {
            "date": (first_day + timedelta(days=i)).isoformat(),
            "conversions_treatment": per_day[i]["conversions_treatment"] if i in per_day else 0,
            "conversions_control": per_day[i]["conversions_control"] if i in per_day else 0,
            "revenue_treatment": _money(from_minor(per_day[i]["revenue_treatment"] if i in per_day else 0)),
            "revenue_control": _money(from_minor(per_day[i]["revenue_control"] if i in per_day else 0)),
            "members_treatment": members.get(attr.TREATMENT, 0),
            "members_control": members.get(attr.CONTROL, 0),
        }
        for i in range(0, last + 1)
    ]


def csv_rows(document: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """Flat rows, one per run × step × variant × channel, for ``--csv``."""
    for row in document["rows"]:
        conv, rev, offers = row["conversions"], row["revenue"], row["offers"]
        ci, rci = conv["uplift_ci95"] or [None, None], rev["incremental_ci95"] or [None, None]
        yield {
            "run_id": row["run_id"],
            "campaign": row["campaign"],
            "step": row["step"],
            "variant": row["variant"],
            "channel": row["channel"],
            "targeted": row["targeted"],
            "control": row["control"],
            "contacted": row["contacted"],
            "sent": row["sent"],
            "delivered": row["delivered"],
            "failed": row["failed"],
            "skipped": sum(row["skipped"].values()),
            "offers_issued": offers["issued"],
            "offers_redeemed": offers["redeemed"],
            "offer_cost": offers["cost"],
            "send_cost": row["send_cost"],
            "conversions_treatment": conv["treatment"],
            "conversions_control": conv["control"],
            "rate_treatment": conv["rate_treatment"],
            "rate_control": conv["rate_control"],
            "uplift": conv["uplift"],
            "uplift_ci95_low": ci[0],
            "uplift_ci95_high": ci[1],
            "revenue_attributed": rev["attributed"],
            "revenue_per_member_treatment": rev["per_member_treatment"],
            "revenue_per_member_control": rev["per_member_control"],
            "revenue_incremental": rev["incremental"],
            "revenue_incremental_ci95_low": rci[0],
            "revenue_incremental_ci95_high": rci[1],
            "roi": row["roi"],
            "roi_incremental": row["roi_incremental"],
            "cannibalisation": row["cannibalisation"],
            "verdict": row["verdict"],
        }
