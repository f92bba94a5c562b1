"""Prepare an MLflow store before first use: schema, upgrades and relocation.

Opening a store creates or upgrades its database schema once, under a lock
(parallel first use of a fresh SQLite database otherwise crashes MLflow; on
PostgreSQL an advisory lock), backs a SQLite file up before an upgrade, checks
that a tracking server answers, and rewrites the absolute artifact locations
stored in the database when the store folder was moved or copied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from clusterprobe.tracker.conventions import STORE_SCHEMA
from clusterprobe.tracker.errors import UsageError, error_line
from clusterprobe.tracker.store import ARTIFACTS_DIR, Store, redact_uri, store_lock
from mlflow.exceptions import MlflowException

# (table, column) pairs that hold absolute artifact locations; rewritten on relocation.
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("workspaces", "default_artifact_root"),
)
_PG_SCHEMA_LOCK = 0x636C7072  # advisory-lock key ("clpr") held while a PostgreSQL schema is made

_log = logging.getLogger(__name__)


def _read_store_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise UsageError(
            f"{path}: unreadable store description ({err}); delete it to rebuild"
        ) from err


def _write_store_json(path: Path, root: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"schema": STORE_SCHEMA, "root": str(root)}, indent=1) + "\n")
    os.replace(tmp, path)


def _prefix_pairs(old: Path, new: Path) -> list[tuple[str, str]]:
    """Old -> new prefixes, as file URIs and as plain paths (MLflow stores both forms)."""
    return [
        (old.as_uri() + "/", new.as_uri() + "/"),
        ("file://" + str(old) + "/", "file://" + str(new) + "/"),
        (str(old) + "/", str(new) + "/"),
    ]


def relocate_sqlite(db: Path, old_root: Path, new_root: Path) -> int:
    """Rewrite artifact locations under ``old_root`` to ``new_root`` in one transaction.

    Returns the number of rows changed. Only prefixes are replaced, so a value that
    merely contains the old path somewhere else is left alone.
    """
    changed = 0
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in _LOCATION_COLUMNS:
            if table not in tables:
                continue
            if column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                continue
            for old, new in _prefix_pairs(old_root, new_root):
                cur = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old),
                )
                changed += cur.rowcount
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return changed


@contextlib.contextmanager
def _quiet_mlflow_setup() -> Iterator[None]:
    # Schema creation logs a page of INFO lines from mlflow and alembic; keep stderr clean.
    loggers = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _schema_state(uri: str) -> str:
    """ "empty" (no tables yet), "current", or "old" (made by an older MLflow)."""
    import sqlalchemy
    from mlflow.store.db import utils as db_utils

    engine = sqlalchemy.create_engine(uri)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        if not tables:
            return "empty"
        if "alembic_version" not in tables:
            return "old"
        current = db_utils._get_schema_version(engine)
        return "current" if current == db_utils._get_latest_schema_revision() else "old"
    finally:
        engine.dispose()


def _open_schema(uri: str, artifact_root: str | None) -> None:
    """Create or upgrade MLflow's tables and the default experiment, then let go.

    MLflow's store constructor creates missing tables and runs the migrations; we call
    it once, under our lock, so that no two processes run them at the same time.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with _quiet_mlflow_setup():
        try:
            sql_store = SqlAlchemyStore(uri, artifact_root or "./mlruns")
        except MlflowException as err:
            if "out-of-date database schema" not in str(err):
                raise
            from mlflow.store.db import utils as db_utils

            engine = db_utils.create_sqlalchemy_engine_with_retry(uri)
            try:
                db_utils._upgrade_db(engine)
            finally:
                engine.dispose()
            sql_store = SqlAlchemyStore(uri, artifact_root or "./mlruns")
        sql_store.engine.dispose()


def _backup_sqlite(db: Path) -> Path:
    """Consistent copy of a live SQLite database (WAL content included)."""
    target = db.with_name(f"{db.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
    src, dst = sqlite3.connect(db, timeout=60), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def _prepare_sqlite(store: Store) -> None:
    root, db, info = store.root, store.db_path, store.store_json
    assert root is not None and db is not None and info is not None
    if store.tracking_uri in _PREPARED and _read_store_json(info).get("root") == str(root):
        return  # this process already prepared it, and it has not moved since
    root.mkdir(parents=True, exist_ok=True)
    (root / ARTIFACTS_DIR).mkdir(exist_ok=True)
    with store_lock(store):
        meta = _read_store_json(info)
        if int(meta.get("schema", STORE_SCHEMA)) > STORE_SCHEMA:
            raise UsageError(
                f"{root}: store schema {meta['schema']} is newer than this clusterprobe "
                f"understands ({STORE_SCHEMA}); upgrade clusterprobe"
            )
        existed = db.exists()
        old_root = meta.get("root")
        if existed and old_root and Path(old_root) != root:
            n = relocate_sqlite(db, Path(old_root), root)
            _log.info("store moved from %s to %s: rewrote %d artifact locations", old_root, root, n)
        if not existed:
            # WAL: readers never block the writer, and concurrent writers queue on the
            # busy timeout instead of failing. Set once; SQLite keeps it in the file.
            con = sqlite3.connect(db, timeout=60)
            try:
                con.execute("PRAGMA journal_mode=WAL")
            finally:
                con.close()
        if existed and _schema_state(store.tracking_uri) == "old":
            # An older MLflow made this database: keep a copy, then migrate it.
            backup = _backup_sqlite(db)
            print(
                f"clusterprobe: upgrading the MLflow schema of {db} (copy kept at {backup.name})",
                file=sys.stderr,
            )
        _open_schema(store.tracking_uri, store.artifact_root)
        if meta != {"schema": STORE_SCHEMA, "root": str(root)}:
            _write_store_json(info, root)


def _prepare_database(store: Store) -> None:
    import sqlalchemy

    uri = store.tracking_uri
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # A session-level advisory lock serialises schema creation across machines.
                conn.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_PG_SCHEMA_LOCK})"))
                conn.commit()
            try:
                if _schema_state(uri) == "old":
                    # A shared database is migrated by its owner, deliberately, not by a run.
                    raise UsageError(
                        f"{redact_uri(uri)}: database schema is older than mlflow "
                        f"{metadata.version('mlflow')} expects; back it up, then run "
                        "`mlflow db upgrade <uri>`"
                    )
                _open_schema(uri, store.artifact_root)
            finally:
                if engine.dialect.name == "postgresql":
                    conn.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({_PG_SCHEMA_LOCK})"))
                    conn.commit()
    except sqlalchemy.exc.OperationalError as err:
        raise UsageError(f"{redact_uri(uri)}: cannot connect ({str(err).splitlines()[0]})") from err
    finally:
        engine.dispose()


def _check_server(store: Store) -> None:
    # MLflow's HTTP client retries with back-off for minutes; say at once when nobody answers.
    import urllib.error
    import urllib.request

    if "@" in urlparse(store.tracking_uri).netloc:
        return  # credentials in the URL: leave the talking to MLflow's client
    url = store.tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read(100)
    except urllib.error.HTTPError:
        return  # something answers (perhaps behind a proxy without /health)
    except (OSError, ValueError) as err:
        raise UsageError(
            f"tracking server {redact_uri(store.tracking_uri)} does not answer "
            f"({error_line(err, 200)})"
        ) from err


_PREPARED: set[str] = set()


def prepare_store(store: Store) -> None:
    """Make the store ready for concurrent writers: schema, relocation, store.json."""
    backend = store.backend
    if backend == "sqlite":
        _prepare_sqlite(store)
    elif backend == "database" and store.tracking_uri not in _PREPARED:
        _prepare_database(store)
    elif backend == "server" and store.tracking_uri not in _PREPARED:
        _check_server(store)
    _PREPARED.add(store.tracking_uri)
