"""Where the MLflow and Optuna databases of a store are, as DuckDB ATTACH targets.

SQLite URLs become file paths (None when the file is missing: its views are then
empty), PostgreSQL URLs become libpq connection strings, and an Optuna ``--storage``
given as a file path is a journal file (as `clusterprobe study` reads it), replayed
in SQL. Tracking servers cannot be read with SQL and are refused with the flag to use
instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import redact_uri


@dataclass(frozen=True)
class Source:
    """One database to attach: DuckDB ATTACH target and type, or None when absent."""

    target: str | None  # file path (sqlite, journal) or libpq connection string (postgres)
    type: str = "sqlite"  # "sqlite" | "postgres" | "journal"

    @property
    def schema_prefix(self) -> str:
        return "public" if self.type == "postgres" else "main"


@dataclass(frozen=True)
class Sources:
    mlflow: Source
    optuna: Source
    root: Path | None = None  # local store folder (to find artifacts of a moved store)
    notes: tuple[str, ...] = field(default_factory=tuple)


def _resolve_store(store: str | os.PathLike | None, tracking_uri: str | None):
    from clusterprobe.tracker.store import resolve_store

    return resolve_store(store, tracking_uri)


def _database_source(url: str, flag: str) -> Source:
    """A DuckDB ATTACH target for a SQLAlchemy-style database URL."""
    scheme = urlparse(url).scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        from clusterprobe.tracker.store import sqlite_path

        path = sqlite_path(url)
        return Source(str(path) if path.is_file() else None, "sqlite")
    if scheme in ("postgresql", "postgres"):
        # libpq takes the URL itself once the SQLAlchemy driver suffix is gone.
        return Source("postgresql://" + url.split("://", 1)[1], "postgres")
    if scheme in ("http", "https"):
        raise UsageError(
            f"{flag} {url!r}: a tracking server cannot be queried with SQL; pass its "
            "backend database instead (--tracking-uri sqlite:///... or postgresql://...)"
        )
    raise UsageError(
        f"{flag} {url!r}: unsupported for SQL queries; use a sqlite:/// or postgresql:// URL"
    )


def _journal_source(storage: str) -> Source:
    """An Optuna journal file (``--storage PATH``, as `clusterprobe study` takes it)."""
    path = Path(os.path.abspath(os.path.expanduser(storage)))
    if path.is_dir():
        raise UsageError(f"--storage {storage!r} is a folder; give a journal file or a URL")
    if not path.exists():
        return Source(None, "journal")
    with open(path, "rb") as fh:
        if fh.read(16) == b"SQLite format 3\x00":
            raise UsageError(f"--storage {storage!r} is a SQLite database; write sqlite:///{path}")
    return Source(str(path), "journal")


def locate(
    store: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> Sources:
    """Where the MLflow and Optuna databases are, with the precedence of `run`.

    MLflow: ``tracking_uri`` > ``$MLFLOW_TRACKING_URI`` > ``store`` > ``./mlruns``.
    Optuna: ``storage`` > the store folder's ``optuna.db``. Missing files are not an
    error: their views are empty.
    """
    resolved = _resolve_store(store, tracking_uri)
    mlflow = _database_source(resolved.tracking_uri, "--tracking-uri")
    notes: list[str] = []
    if storage:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", storage):
            optuna = _database_source(storage, "--storage")
        else:
            optuna = _journal_source(storage)
            if optuna.target is None:
                notes.append(f"no Optuna journal at {storage}: trials are empty")
    elif resolved.optuna_url:
        optuna = _database_source(resolved.optuna_url, "--storage")
    else:
        optuna = Source(None)
    if mlflow.target is None:
        notes.append(f"no MLflow database at {redact_uri(resolved.tracking_uri)}: views are empty")
    return Sources(mlflow=mlflow, optuna=optuna, root=resolved.root, notes=tuple(notes))
