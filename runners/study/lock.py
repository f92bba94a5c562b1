"""The slot lock: one cross-process mutex per study.

Workers take a trial slot only while holding it, so ``complete + running`` never
passes the wanted number of trials. A file lock sits next to a file storage (journal,
SQLite); a PostgreSQL storage uses an advisory lock on its own server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path

from clusterprobe.runners.study.storage import storage_kind


class SlotLock:
    """Cross-process mutex for one study: fcntl file lock or PostgreSQL advisory lock.

    ``release`` is idempotent, so the objective can release the lock as soon as its
    trial exists while the caller still releases it in a ``finally``. Both kinds are
    dropped by the OS / server when the holder dies, so a SIGKILL never wedges a study.
    """

    def __init__(self, spec: str, study_name: str):
        self._held = False
        self._fh = None
        self._conn = None
        kind = storage_kind(spec)
        if kind == "postgresql":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            digest = hashlib.sha1(f"clusterprobe-study:{study_name}".encode()).digest()
            self._key = int.from_bytes(digest[:8], "big", signed=True)
            self._engine = sqlalchemy.create_engine(spec, poolclass=NullPool)
            self._path = None
        else:
            path = spec.split(":///", 1)[1] if kind == "sqlite" else spec
            # Not "<file>.lock": Optuna's journal backend owns that name for its own lock.
            self._path = Path(f"{path}.clusterprobe-lock")
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def acquire(self) -> None:
        if self._path is not None:
            self._fh = open(self._path, "a+")
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        else:
            import sqlalchemy

            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        if self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key}
                )
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()
