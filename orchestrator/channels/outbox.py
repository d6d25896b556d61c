"""File outboxes: where a channel without a provider writes its messages, one file per delivery.

Every built-in channel falls back to one, so that a new user sees exactly what would be sent. A file is named from
the delivery's idempotency key, so a resent delivery overwrites its own file instead of adding a second one, and
written through a temporary file and a rename, so a reader (or a killed process) never sees half a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from orchestrator.channels.base import OutgoingMessage, SendResult


def file_name(key: str, suffix: str) -> str:
    """A safe file name from an idempotency key; when sanitising changed the key (or it is long), a hash of the
    original keeps distinct keys distinct."""
    if not key:
        return f"{os.urandom(16).hex()}{suffix}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).lstrip(".")
    if safe != key or len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return f"{safe}{suffix}"


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, then rename. No fsync: the rename already makes each file all-or-nothing for
    a process crash, and an fsync per message would make a large run disk-bound."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def deliver(folder: Path, outgoing: OutgoingMessage, suffix: str, data: bytes) -> SendResult:
    """One message to one file; the file name is the provider id. A full disk is worth retrying."""
    name = file_name(outgoing.idempotency_key, suffix)
    try:
        write_atomically(folder / name, data)
    except OSError as exc:
        return SendResult.transient(f"cannot write {folder / name}: {exc.strerror or exc}")
    return SendResult.sent(provider_id=name)
