"""The one-scheduler-per-SQLite-file rule, held by the operating system: an exclusive ``flock`` on a lock file next
to the database (``<database>-scheduler.lock``), taken at start-up and kept for the life of the process.

Why a file lock and not only the lease row: a scheduler that dies without releasing its lease (SIGKILL, the OOM
killer, a power cut) leaves the row live for a ttl, and a restart within it would be refused as "another
scheduler is running". The kernel drops a ``flock`` the moment its process dies, however it dies, so the lock tells
a live scheduler from a dead one exactly, with no guessing from host names or process ids (which are reused). The
lease row stays the record of who leads, as on PostgreSQL; on SQLite whoever holds the file lock may take it over.

An in-memory database cannot be shared between processes, so it needs no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Engine

SUFFIX = "-scheduler.lock"


def lock_path(engine: Engine) -> Path | None:
    """Where the lock file of a SQLite database lives; None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database + SUFFIX)


class SchedulerFileLock:
    """An exclusive, non-blocking ``flock`` on ``path``; released by ``release()`` or by the process's death."""

    def __init__(self, path: Path | None):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True: no other live process holds it (now this one does). False: another scheduler is running."""
        if self.path is None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock; the file stays for the next start
            self._fd = None
