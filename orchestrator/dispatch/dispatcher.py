"""The dispatch loop: claim what is due, send it, record each result the moment the channel yields it.

``Dispatcher.drain(run)`` keeps going while something is due now; when nothing is, it waits for the next thing
that will be (a retry time, a breaker's cooldown, a rate limit's next token) if that is at most ``linger`` seconds
away, and otherwise returns, leaving the rest ``pending`` for ``orchestrator resume`` or the scheduler. Channels are
served round-robin, ``claim_size`` messages at a time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine

from orchestrator import ledger
from orchestrator.channels.base import Channel, SendResult, SendStatus
from orchestrator.config import BreakerConfig, RateLimitConfig, RetryConfig, Settings
from orchestrator.dispatch import claims
from orchestrator.dispatch.breaker import CircuitBreaker
from orchestrator.dispatch.quotas import Quota
from orchestrator.dispatch.retry import RetryPolicy
from orchestrator.errors import InputError, RuntimeFailure
from orchestrator.progress import SILENT, Progress
from orchestrator.timeutil import utcnow

ADDRESS_FIELDS = ("email", "phone", "wechat_openid")  # a provider's suppression follows these addresses


@dataclass
class DrainReport:
    # sent and failed count attempts' final results; retrying counts messages whose last attempt failed
    # transiently and that wait for a retry (a message tried five times is one message retrying, not five);
    # skipped counts messages whose member opted out after planning (checked again when claimed)
    outcomes: Counter = field(default_factory=Counter)
    paused: dict[str, str] = field(default_factory=dict)  # channel -> why it is paused (breaker, rate limit)
    open: dict[str, int] = field(default_factory=dict)  # rows left pending / deferred when the drain returned
    retrying: set[int] = field(default_factory=set)  # delivery ids waiting for a retry
    settled: set[int] = field(default_factory=set)  # delivery ids sent or failed

    def merge(self, other: DrainReport) -> None:
        self.outcomes.update({key: n for key, n in other.outcomes.items() if key != "retrying"})
        self.paused.update(other.paused)
        self.open = dict(other.open)
        self.retrying = (self.retrying - other.settled) | other.retrying
        self.settled |= other.settled
        self.count_retrying()

    def note(self, delivery_id: int, outcome: str, *, retried: bool = True) -> None:
        """``retried=False`` for a message settled at its first attempt: never retrying, so it need not be kept
        in ``settled`` (a set that would otherwise hold every id of a million-message run)."""
        if outcome == "retrying":
            self.retrying.add(delivery_id)
        else:
            self.outcomes[outcome] += 1
            self.retrying.discard(delivery_id)
            if retried:
                self.settled.add(delivery_id)
        self.count_retrying()

    def count_retrying(self) -> None:
        if self.retrying:
            self.outcomes["retrying"] = len(self.retrying)
        else:
            self.outcomes.pop("retrying", None)


@dataclass
class _ChannelState:
    channel: Channel
    retry: RetryPolicy
    breaker: CircuitBreaker
    quota: Quota


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        channel_for: Callable[[str], Channel],
        *,
        worker: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress = SILENT,
    ):
        self.engine = engine
        self.settings = settings
        self.config = settings.dispatch
        self.channel_for = channel_for
        self.worker = worker or claims.worker_name()
        self.sleep = sleep
        self.progress = progress  # messages attempted, for a bar on the terminal
        self._states: dict[str, _ChannelState] = {}
        self._released: set[int] = set()  # runs whose dead claims this dispatcher released

    def state(self, name: str) -> _ChannelState:
        if name not in self._states:
            own = self.settings.channels.get(name, {})
            self._states[name] = _ChannelState(
                channel=self.channel_for(name),
                retry=RetryPolicy(self._setting(name, own, "retry", RetryConfig, self.config.retry)),
                breaker=CircuitBreaker(self._setting(name, own, "breaker", BreakerConfig, self.config.breaker)),
                quota=Quota(
                    self.engine,
                    name,
                    self._setting(name, own, "rate_limit", RateLimitConfig, self.config.rate_limit),
                    self.settings.tz,
                ),
            )
        return self._states[name]

    def _setting(self, channel: str, own: dict[str, Any], key: str, model: type[BaseModel], default: BaseModel):
        """``channels.<channel>.<key>`` over the ``dispatch.<key>`` default."""
        if key not in own:
            return default
        try:
            return model.model_validate({**default.model_dump(), **dict(own[key] or {})})
        except (ValidationError, TypeError) as exc:
            raise InputError(
                f"channels.{channel}.{key}: {exc}".splitlines()[0],
                file=self.settings.source,
                hint=f"keys: {', '.join(model.model_fields)}",
            ) from None

    def close(self) -> None:
        for state in self._states.values():
            state.channel.close()

    # -- the loop ---------------------------------------------------------------------------------------------
    def drain(
        self,
        run_pk: int,
        *,
        linger: float | None = None,
        deferred_due_at: datetime | None = None,
        count_open: bool = True,
    ):
        """Send what is due for this run; see the module docstring for when it returns. ``count_open=False``
        leaves ``report.open`` empty: counting the run's open rows reads every row of it, which a run drained
        after each batch would otherwise pay once per batch."""
        linger = self.config.linger_seconds if linger is None else linger
        report = DrainReport()
        if run_pk not in self._released:  # once per run: a run drained after every batch need not look again
            with self.engine.begin() as conn:
                claims.release_dead_claims(conn, run_pk)
            self._released.add(run_pk)
        names: list[str] = []
        while True:
            if not names:  # looked up again only once the channels being served have nothing due
                with self.engine.connect() as conn:
                    names = claims.due_channels(conn, run_pk, utcnow(), deferred_due_at)
            waits: list[float] = []
            progressed = False
            held: list[str] = []  # channels that may not send now (breaker open, rate limit)
            busy: list[str] = []
            for name in names:
                sent, wait = self._serve(run_pk, name, deferred_due_at, report)
                progressed |= sent
                if sent:
                    busy.append(name)
                if wait is not None:
                    waits.append(wait)
                    held.append(name)
            if progressed:  # keep serving these, round-robin; a channel whose claim came back empty drops out
                names = [name for name in names if name in busy or name in held]
                continue
            names = []
            with self.engine.connect() as conn:
                wake = claims.next_wake(conn, run_pk, deferred_due_at, excluding=held)
            if wake is not None:
                waits.append(max(0.0, (wake - utcnow()).total_seconds()))
            if not waits or min(waits) > linger:
                break
            self.sleep(max(min(waits), 0.01))
        if count_open:
            with self.engine.connect() as conn:
                report.open = ledger.open_counts(conn, run_pk)
        return report

    def serve_round(self, run_pk: int) -> tuple[DrainReport, float | None]:
        """One claim of each channel of this run with something due now, sent: the work of one Celery dispatch
        task. Returns what happened and, when a channel may not send now (breaker, rate limit), the seconds
        until the first of them may."""
        report = DrainReport()
        if run_pk not in self._released:
            with self.engine.begin() as conn:
                claims.release_dead_claims(conn, run_pk)
            self._released.add(run_pk)
        with self.engine.connect() as conn:
            names = claims.due_channels(conn, run_pk, utcnow(), None)
        waits = [wait for name in names if (wait := self._serve(run_pk, name, None, report)[1]) is not None]
        return report, min(waits, default=None)

    def _serve(self, run_pk: int, name: str, deferred_due_at, report: DrainReport) -> tuple[bool, float | None]:
        """One claim of one channel: (whether anything was attempted, seconds until it may go on if paused)."""
        state = self.state(name)
        allowed = state.breaker.allowed()
        if allowed == 0:
            report.paused[name] = f"circuit breaker open after repeated failures ({state.breaker.opened}x)"
            return False, state.breaker.reopens_in()
        want = self.config.claim_size if allowed is None else allowed
        granted, wait = state.quota.acquire(want)
        if granted == 0:
            report.paused[name] = "rate limit"
            return False, wait
        now = utcnow()
        with self.engine.begin() as conn:
            batch = claims.claim(
                conn,
                run_pk=run_pk,
                channel=name,
                consent=state.channel.consent,
                limit=granted,
                worker=self.worker,
                now=now,
                lease=timedelta(seconds=self.config.lease_seconds),
                deferred_due_at=deferred_due_at,
            )
        state.quota.give_back(granted - len(batch.messages))
        if batch.skipped:
            report.outcomes["skipped"] += sum(batch.skipped.values())
        if not batch.messages:
            return bool(batch.skipped), None
        report.paused.pop(name, None)
        self._send(state, batch.messages, report)
        return True, None

    def _send(self, state: _ChannelState, batch: list[claims.Claimed], report: DrainReport) -> None:
        sendable = [c for c in batch if c.message is not None]
        for missing in (c for c in batch if c.message is None):
            self._record(state, missing, SendResult.permanent("no rendered message in the ledger"), report)
        if not sendable:
            return
        results = _results(state.channel, sendable)
        # a channel whose receiving end deduplicates by key records its sent messages a claim at a time: a crash
        # resends at most that claim, and the duplicates land on the same key (the same file, the same request)
        batched = bool(getattr(state.channel, "idempotent_by_key", False))
        sent: list[tuple[claims.Claimed, SendResult]] = []
        attempted = 0
        try:
            for claimed in sendable:
                result = next(results)
                attempted += 1
                if batched and result.status == SendStatus.SENT:
                    sent.append((claimed, result))
                    state.breaker.record(False)
                else:
                    self._record_sent(sent, report)
                    sent = []
                    self._record(state, claimed, result, report)
                if state.breaker.allowed() == 0:
                    break  # opened mid-batch: the rest stay pending, untried
        finally:
            results.close()
            self._record_sent(sent, report)
            if attempted < len(sendable):
                with self.engine.begin() as conn:
                    claims.release(conn, sendable[attempted:], self.worker)

    def _record_sent(self, sent: list[tuple[claims.Claimed, SendResult]], report: DrainReport) -> None:
        """Messages sent through a channel that deduplicates by key, recorded in one transaction."""
        if not sent:
            return
        with self.engine.begin() as conn:
            claims.record_sent_many(conn, sent, self.worker, utcnow())
        for claimed, _ in sent:
            report.note(claimed.id, "sent", retried=claimed.attempts > 0)
        self.progress.advance("sending", len(sent))

    def _record(self, state: _ChannelState, claimed: claims.Claimed, result: SendResult, report) -> None:
        now = utcnow()
        by_address = state.channel.contact_field in ADDRESS_FIELDS
        with self.engine.begin() as conn:
            if result.status == SendStatus.SENT:
                claims.record_sent(conn, claimed, self.worker, result, now)
                report.note(claimed.id, "sent", retried=claimed.attempts > 0)
            elif result.status == SendStatus.PERMANENT:
                claims.record_failed(
                    conn,
                    claimed,
                    self.worker,
                    result.error or "failed",
                    now,
                    suppress=result.suppress,
                    suppress_address=by_address,
                )
                report.note(claimed.id, "failed", retried=claimed.attempts > 0)
            else:
                decision = state.retry.after_failure(claimed.attempts + 1, claimed.created_at, now)
                error = result.error or "transient failure"
                if decision.retry_at is None:
                    claims.record_failed(conn, claimed, self.worker, f"{decision.why_not}: {error}", now)
                    report.note(claimed.id, "failed", retried=claimed.attempts > 0)
                else:
                    claims.record_retry(conn, claimed, self.worker, error, now, decision.retry_at)
                    report.note(claimed.id, "retrying")
        state.breaker.record(result.status == SendStatus.TRANSIENT)
        self.progress.advance("sending")


def _results(channel: Channel, batch: list[claims.Claimed]) -> Iterator[SendResult]:
    """The channel's results, checked to be one per message; closing this closes the channel's generator."""
    produced = iter(channel.send([c.outgoing() for c in batch]))
    try:
        for count, _ in enumerate(batch, start=1):
            try:
                yield next(produced)
            except StopIteration:
                raise RuntimeFailure(
                    f"channel {channel.name} returned {count - 1} results for {len(batch)} messages",
                    hint="a channel's send() must yield one result per message, in order",
                ) from None
    finally:
        close = getattr(produced, "close", None)
        if close is not None:
            close()
