"""Files holding personal data or secrets are private (mode 600) whatever the caller's umask: the SQLite database
and its -wal / -shm files, the e-mail outbox, the call list, the signing key. Real processes, started with the
permissive umask 022."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")
CUSTOMERS = """\
customer_id,name,email,phone,province,city,gender,birthday,signup_at,tags,email_opt_in,sms_opt_in,wechat_openid,timezone
M1,王芳,wang.fang@example.com,+8613800000001,浙江,杭州,F,,2025-01-01T00:00:00+08:00,,true,true,,
M2,李雷,li.lei@example.com,+8613800000002,四川,成都,M,,2025-01-01T00:00:00+08:00,,true,true,,
"""
EMAIL_CAMPAIGN = """\
name: private-email
segment: {signup_days: {gte: 1}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}"
"""
CALL_CAMPAIGN = """\
name: private-calls
segment: {signup_days: {gte: 1}}
message:
  call_list:
    script: "您好，{{ customer.name }}"
"""


def orchestrator(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    result = subprocess.run(
        [ORCHESTRATOR, *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_real_run_creates_private_files(tmp_path: Path):
    work = tmp_path / "shop"
    work.mkdir()
    (work / "orchestrator.yaml").write_text(
        "timezone: Asia/Shanghai\ntemplates: []\ndatabase: {url: sqlite:///data/shop.db}\nchannels:\n"
        "  email:\n    from: Shop <shop@example.com>\n    outbox: outbox/email\n"
        "  call_list:\n    outbox: outbox/call_list\n    xlsx: true\n",
        encoding="utf-8",
    )
    (work / "customers.csv").write_text(CUSTOMERS, encoding="utf-8")
    (work / "email.yaml").write_text(EMAIL_CAMPAIGN, encoding="utf-8")
    (work / "calls.yaml").write_text(CALL_CAMPAIGN, encoding="utf-8")

    orchestrator(work, "init")
    database = work / "data" / "shop.db"
    assert mode(work / "orchestrator.secret") == 0o600
    assert mode(database) == 0o600
    orchestrator(work, "import", "customers", "customers.csv")
    orchestrator(work, "run", "email.yaml", "--at", "2025-07-01T10:00:00+08:00")
    orchestrator(work, "run", "calls.yaml", "--at", "2025-07-01T10:00:00+08:00")

    outbox = sorted(p for p in (work / "outbox").rglob("*") if p.is_file())
    assert {p.suffix for p in outbox} >= {".eml", ".csv", ".xlsx"}, outbox
    assert {p: mode(p) for p in outbox} == {p: 0o600 for p in outbox}
    assert mode(database) == 0o600
    # the -wal and -shm files exist while a connection is open; SQLite gives them the database's mode
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("SELECT count(*) FROM deliveries").fetchone()
        journal = [database.with_name(database.name + suffix) for suffix in ("-wal", "-shm")]
        assert {p: mode(p) for p in journal} == {p: 0o600 for p in journal}
    for folder in [p for p in (work / "outbox").rglob("*") if p.is_dir()] + [database.parent]:
        assert not mode(folder) & 0o077, folder
