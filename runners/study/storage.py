"""Optuna storages: resolve ``--storage`` to a spec, open it, list its studies.

A spec is a journal file path (many processes, one machine), ``sqlite:///FILE`` (the
store's default ``optuna.db``) or a PostgreSQL URL (many machines). URLs pass through
`redact` before they are printed or logged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import Store, postgres_driver

# How a study hands its storage to the worker processes it starts (a URL may hold a
# password, which their command lines would show to every user through `ps`).
ENV_STORAGE = "CLUSTERPROBE_STUDY_STORAGE"


def storage_kind(spec: str) -> str:
    """ "sqlite" | "postgresql" | "journal" for a resolved storage spec."""
    if "://" not in spec:
        return "journal"
    scheme = spec.split("://", 1)[0].split("+", 1)[0].lower()
    return {"postgres": "postgresql"}.get(scheme, scheme)


def resolve_storage(storage: str | None, store: Store) -> str:
    """``--storage`` (journal path or URL) or the store's ``optuna.db`` -> a storage spec."""
    if storage is None:
        if store.optuna_url is None:
            raise UsageError(
                f"--tracking-uri {redact(store.tracking_uri)!r} has no local folder for optuna.db; "
                "give --storage postgresql://... or a journal file path"
            )
        return store.optuna_url
    if "://" in storage:
        kind = storage_kind(storage)
        if kind not in ("sqlite", "postgresql"):
            raise UsageError(
                f"--storage {redact(storage)!r}: unsupported scheme {kind!r}; use a journal "
                "file path, sqlite:///FILE or postgresql://USER@HOST:PORT/DB"
            )
        if kind == "sqlite":
            path = storage.split(":///", 1)[-1]
            return "sqlite:///" + os.path.abspath(path)
        return postgres_driver(storage)
    path = Path(os.path.abspath(os.path.expanduser(storage)))
    if path.is_dir():
        raise UsageError(f"--storage {storage!r} is a folder; give a journal file path")
    if path.exists():
        with open(path, "rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                raise UsageError(
                    f"--storage {storage!r} is a SQLite database; write sqlite:///{path}"
                )
    return str(path)


def existing_storage(storage: str | None, store: Store) -> str:
    """:func:`resolve_storage`, for readers: a local SQLite or journal storage must exist
    (opening it would create an empty one)."""
    spec = resolve_storage(storage, store)
    kind = storage_kind(spec)
    path = spec.split(":///", 1)[1] if kind == "sqlite" else spec if kind == "journal" else None
    if path is not None and not Path(path).is_file():
        raise UsageError(
            f"no Optuna storage at {path}; run `clusterprobe study` first or give --storage"
        )
    return spec


def redact(url: str) -> str:
    """Hide a password in a URL before it is printed or logged."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def open_storage(spec: str, *, heartbeat: int | None = None, on_stale: Callable | None = None):
    """Optuna storage for a spec; RDB storages get heartbeats when ``heartbeat`` is set."""
    import optuna

    kind = storage_kind(spec)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec))
    engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {}
    if kind == "sqlite":
        Path(spec.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            spec,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=None if heartbeat is None else 3 * heartbeat,
            heartbeat_stale_trial_callback=on_stale if heartbeat is not None else None,
        )


def list_study_names(storage) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
