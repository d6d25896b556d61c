"""Re-contact: whether a member this campaign already contacted may be contacted by a later run of it.

``recontact:`` in the campaign file says ``never``, ``always`` or ``{after: DURATION}``. Without it:

* a ``cron`` / ``every`` / ``at`` schedule (or none) is ``never``: a weekly "wake dormant members" wakes each
  dormant member once, not every week (members are not re-eligible unless the campaign says so);
* ``relative_to`` is once per occurrence: held back when contacted less than 183 days earlier, so a birthday or
  an anniversary (a year apart, at least 365 days) is celebrated once per year even if the campaign's ``time:`` or
  ``days_before`` changes in between;
* ``on:`` is once per triggering order or sign-up, which the tick's audience already guarantees
  (``orchestrator.scheduler.audiences``): no further hold here, so a member who orders again a week later gets
  the after-purchase message again. ``recontact: never`` makes it once per member, ``{after: 30d}`` at most once
  in 30 days.

*Contacted* means a delivery row of another run of the same campaign (by name) in state ``sent``, ``pending``,
``deferred`` (decided, still to be sent) or ``held_out``: a control-group member counts as contacted, or the
control group would be re-drawn into the treatment by the next run. Failed and skipped rows are no contact. The
time of a contact is its run's scheduled time (not the wall clock of writing), so a backtest holds back exactly
as live runs would; a run scheduled *later* than this one counts too (an earlier range replayed after a later
one).

The check is one query per batch of the audience, like the other customer-level policies, and comes before them
and before the offer: a held-back member is skipped with reason ``recontact`` and costs no coupon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select

from orchestrator.campaign.schema import Campaign as CampaignFile
from orchestrator.campaign.schema import RecontactAfter
from orchestrator.db.models import Campaign, CampaignRun, Delivery

RECONTACT = "recontact"  # the skip reason
CONTACTED_STATES = ("sent", "pending", "deferred", "held_out")
OCCURRENCE = timedelta(days=183)  # shorter than a year: one contact per yearly occurrence


@dataclass(frozen=True)
class RecontactRule:
    """Held back when contacted by another run of the campaign scheduled after ``at - window`` (any time when
    ``window`` is None)."""

    window: timedelta | None

    def describe(self) -> str:
        return "never" if self.window is None else f"after {self.window}"


def rule_of(campaign: CampaignFile) -> RecontactRule | None:
    """The campaign's rule; None when nothing holds a member back (``always``, and the default of ``on:``)."""
    setting = campaign.recontact
    schedule = campaign.schedule
    if setting is None:
        if schedule is not None and schedule.on is not None:
            return None
        if schedule is not None and schedule.relative_to is not None:
            return RecontactRule(OCCURRENCE)
        return RecontactRule(None)
    if setting == "always":
        return None
    if isinstance(setting, RecontactAfter):
        return RecontactRule(setting.after)
    return RecontactRule(None)


def held_back(
    conn: Connection, campaign: str, at: datetime, customer_pks: Sequence[int], rule: RecontactRule | None
) -> set[int]:
    """Which of ``customer_pks`` ``rule`` holds back from the run of ``campaign`` at ``at``: one query."""
    if rule is None or not customer_pks:
        return set()
    statement = (
        select(Delivery.customer_pk)
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .where(
            Campaign.name == campaign,
            CampaignRun.scheduled_at != at,
            Delivery.customer_pk.in_(list(customer_pks)),
            Delivery.state.in_(CONTACTED_STATES),
        )
        .distinct()
    )
    if rule.window is not None:
        statement = statement.where(CampaignRun.scheduled_at > at - rule.window)
    return set(conn.execute(statement).scalars())
