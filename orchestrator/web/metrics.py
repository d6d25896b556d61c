"""``GET /metrics``: Prometheus text format (prometheus-client).

Two kinds of figure. Counted by this process as requests go by: request latencies per endpoint group and status,
coupon answers by outcome, webhook events by kind. Read from the database at scrape time, so every process reports
the same shop-wide values: deliveries by state and channel, runs by state, redemptions, and the scheduler's lag
(seconds since the leading scheduler's last heartbeat; absent where no scheduler runs). Behind a proxy, each
process reports its own counters: scrape each process, or add them up in Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from orchestrator.db.models import CampaignRun, CouponRedemption, Delivery, SchedulerLease
from orchestrator.timeutil import utcnow

REGISTRY = CollectorRegistry()
LATENCY = Histogram(
    "orchestrator_http_request_seconds",
    "Time to answer a request, by endpoint group, method and status.",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
REDEMPTIONS = Counter(
    "orchestrator_coupon_answers",
    "Coupon check and redeem answers of this process, by action and outcome (status or refusal reason).",
    ["action", "outcome"],
    registry=REGISTRY,
)
HOOK_EVENTS = Counter(
    "orchestrator_hook_events",
    "Inbound webhook events of this process, by hook (sms, email) and what was done.",
    ["hook", "outcome"],
    registry=REGISTRY,
)


class StoredFigures(Collector):
    """Figures read from the database at each scrape."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        deliveries = GaugeMetricFamily(
            "orchestrator_deliveries", "Deliveries in the ledger by state and channel.", labels=["state", "channel"]
        )
        runs = GaugeMetricFamily("orchestrator_runs", "Campaign runs by state.", labels=["state"])
        redemptions = GaugeMetricFamily(
            "orchestrator_coupon_redemptions", "Coupon redemptions recorded.", labels=["source"]
        )
        lag = GaugeMetricFamily(
            "orchestrator_scheduler_lag_seconds", "Seconds since the leading scheduler's last heartbeat."
        )
        with self.engine.connect() as conn:
            query = select(Delivery.state, Delivery.channel, func.count()).group_by(Delivery.state, Delivery.channel)
            for state, channel, count in conn.execute(query):
                deliveries.add_metric([state, channel], count)
            for state, count in conn.execute(select(CampaignRun.state, func.count()).group_by(CampaignRun.state)):
                runs.add_metric([state], count)
            query = select(CouponRedemption.source, func.count()).group_by(CouponRedemption.source)
            for source, count in conn.execute(query):
                redemptions.add_metric([source], count)
            heartbeat = conn.execute(select(func.max(SchedulerLease.renewed_at))).scalar()
        yield deliveries
        yield runs
        yield redemptions
        if heartbeat is not None:
            lag.add_metric([], max(0.0, (utcnow() - heartbeat).total_seconds()))
            yield lag


def exposition(engine: Engine) -> bytes:
    """This process's counters and the stored figures, in the text format."""
    registry = CollectorRegistry()
    registry.register(StoredFigures(engine))
    return generate_latest(REGISTRY) + generate_latest(registry)
