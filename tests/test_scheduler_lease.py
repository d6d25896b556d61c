"""The scheduler's lease on SQLite and PostgreSQL: one holder at a time, takeover after expiry or release, renew
lost to a takeover; and real processes racing for it never both believe they lead."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.db.models import SchedulerLease
from orchestrator.scheduler.lease import Lease, is_sqlite

TTL = timedelta(seconds=1)


def lease(engine: Engine, holder: str, ttl: timedelta = TTL) -> Lease:
    return Lease(engine, name="scheduler", holder=holder, ttl=ttl)


def test_one_holder_at_a_time_and_takeover_after_expiry(engine: Engine):
    a, b = lease(engine, "a"), lease(engine, "b")
    assert a.try_acquire() and a.held
    assert not b.try_acquire() and not b.held
    assert a.try_acquire()  # taking one's own lease again keeps it
    info = b.holder_info()
    assert info is not None and info.holder == "a" and info.live
    assert info.acquired_at <= info.renewed_at < info.expires_at
    time.sleep(TTL.total_seconds() + 0.2)
    assert not a.held  # the holder's own belief ran out with the ttl
    assert b.try_acquire() and b.held
    assert not a.try_acquire()
    info = a.holder_info()
    assert info.holder == "b" and info.live


def test_renew_extends_the_lease_and_fails_once_another_took_over(engine: Engine):
    a, b = lease(engine, "a"), lease(engine, "b")
    assert a.try_acquire()
    first = a.holder_info()
    for _ in range(3):  # renewing every half ttl keeps it for longer than the ttl
        time.sleep(TTL.total_seconds() / 2)
        assert a.renew()
        assert not b.try_acquire()
    info = a.holder_info()
    assert info.acquired_at == first.acquired_at and info.renewed_at > first.renewed_at
    time.sleep(TTL.total_seconds() + 0.2)
    assert b.try_acquire()
    assert not a.renew() and not a.held  # lost: the former holder learns it and stops leading
    assert a.holder_info().holder == "b"
    assert b.renew()


def test_release_lets_another_take_over_at_once(engine: Engine):
    a, b = lease(engine, "a", ttl=timedelta(minutes=5)), lease(engine, "b", ttl=timedelta(minutes=5))
    assert a.holder_info() is None  # nobody ever took it
    assert a.try_acquire()
    assert not b.try_acquire()
    b.release()  # not b's to release: changes nothing
    assert not b.try_acquire()
    a.release()
    assert not a.held
    info = b.holder_info()
    assert info.holder == "a" and not info.live  # who led last stays readable
    assert "is free" in info.describe() and "a" in info.describe()
    assert b.try_acquire()
    assert "held by b" in b.holder_info().describe()


def test_leases_of_different_names_are_independent(engine: Engine):
    assert Lease(engine, name="one", holder="a").try_acquire()
    assert Lease(engine, name="two", holder="b").try_acquire()
    with engine.connect() as conn:
        assert sorted(conn.execute(select(SchedulerLease.name, SchedulerLease.holder)).all()) == [
            ("one", "a"),
            ("two", "b"),
        ]


HOLD_IN_ANOTHER_PROCESS = """
import sys
from orchestrator.db.engine import create_db_engine
from orchestrator.scheduler.lease import Lease
lease = Lease(create_db_engine(sys.argv[1]), holder="second")
if lease.try_acquire():
    print("acquired")
    sys.exit(0)
print(lease.holder_info().describe())
sys.exit(2)
"""


def test_a_second_process_sees_the_lease_is_held(engine: Engine, db_url: str):
    first = lease(engine, "first", ttl=timedelta(minutes=5))
    assert first.try_acquire()
    done = subprocess.run(
        [sys.executable, "-c", HOLD_IN_ANOTHER_PROCESS, db_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "held by first" in done.stdout
    first.release()
    done = subprocess.run(
        [sys.executable, "-c", HOLD_IN_ANOTHER_PROCESS, db_url], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "acquired"), done.stderr
    assert is_sqlite(engine) == db_url.startswith("sqlite")


# Each process loops for RACE_SECONDS: try to take the lease; while leading, renew after a random pause, now and
# then release it or go silent past the ttl (a crash, as the others see it). It records each span during which it
# believed it led, on the system-wide monotonic clock: from try_acquire returning True to the end of its last
# take or renew's ttl (held_until), or to the moment it released it or learnt it had lost it.
RACER = """
import json, random, sys, time
from datetime import timedelta
from orchestrator.db.engine import create_db_engine
from orchestrator.scheduler.lease import Lease

url, out, start_at, seconds, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
lease = Lease(create_db_engine(url), name="race", ttl=timedelta(seconds=ttl))
rng = random.Random(lease.holder)
spans, attempts = [], 0
while time.monotonic() < start_at:
    time.sleep(0.005)
stop = start_at + seconds
while time.monotonic() < stop:
    attempts += 1
    if not lease.try_acquire():
        time.sleep(rng.uniform(0, 0.02))
        continue
    begin = end = time.monotonic()
    while time.monotonic() < stop and lease.held:
        end = lease.held_until
        roll = rng.random()
        if roll < 0.25:
            break
        time.sleep(ttl * 1.3 if roll < 0.4 else rng.uniform(0, ttl / 2))
        if not lease.held:  # went silent past the ttl: leadership lapsed with it; try_acquire again
            break
        asked = time.monotonic()
        if not lease.renew():
            end = min(end, asked)
            break
        end = lease.held_until
    spans.append([begin, min(end, time.monotonic())])
    lease.release()
    time.sleep(rng.uniform(0, 0.05))  # give the others a chance at it
with open(out, "w") as f:
    json.dump({"holder": lease.holder, "spans": spans, "attempts": attempts}, f)
"""

RACERS = 4
RACE_SECONDS = 4.0
RACE_TTL = 0.3


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_racing_processes_never_both_lead(db_url: str, tmp_path: Path):
    start_at = time.monotonic() + 4.0  # after every interpreter has imported the orchestrator
    outputs = [tmp_path / f"racer{i}.json" for i in range(RACERS)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, db_url, str(out), str(start_at), str(RACE_SECONDS), str(RACE_TTL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outputs
    ]
    for process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    reports = [json.loads(out.read_text()) for out in outputs]
    spans = sorted((begin, end, r["holder"]) for r in reports for begin, end in r["spans"])
    for (_, end, holder), (begin, _, other) in itertools.pairwise(spans):
        assert begin >= end, f"{other} began leading {end - begin:.4f} s before {holder} stopped"
    # not vacuous: the lease changed hands many times and every process led at some point
    handovers = sum(1 for a, b in itertools.pairwise(spans) if a[2] != b[2])
    assert handovers >= 5, [(r["holder"], len(r["spans"]), r["attempts"]) for r in reports]
    assert {s[2] for s in spans} == {r["holder"] for r in reports}
    led = sum(end - begin for begin, end, _ in spans)
    assert led > RACE_SECONDS / 3  # the processes spent much of the race with a leader
    gap = min(b[0] - a[1] for a, b in itertools.pairwise(spans))
    print(f"{len(spans)} spans, {handovers} handovers, led {led:.2f} of {RACE_SECONDS} s, closest gap {gap:.4f} s")
