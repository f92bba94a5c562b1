"""Attach the MLflow and Optuna databases to DuckDB read-only.

SQLite files and PostgreSQL databases are attached through DuckDB's sqlite and
postgres extensions, loaded offline from the ``duckdb-extension-*`` PyPI packages
(DuckDB itself never downloads them: the connection turns autoinstall off). A table
is read as a SELECT of typed columns, or an empty SELECT where the database lacks it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import duckdb
from clusterprobe.queries.sources import Source
from clusterprobe.queries.sql_text import empty_select, execute, ident, quote
from clusterprobe.tracker.errors import UsageError


def extension_dir() -> Path:
    """Per-user folder for the extensions copied from the PyPI packages (offline)."""
    base = os.environ.get("CLUSTERPROBE_DUCKDB_EXTENSIONS")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"clusterprobe-duckdb-{os.getuid()}"


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    try:
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error:
        pass
    try:
        import duckdb_extensions
    except ImportError as err:  # pragma: no cover - a broken install
        raise UsageError(
            f"DuckDB's {name} extension is needed offline: pip install "
            f"duckdb-extensions duckdb-extension-{name}=={duckdb.__version__}"
        ) from err
    duckdb_extensions.import_extension(name, con=con)
    con.execute(f"LOAD {name}")


def is_locked(err: Exception) -> bool:
    """Whether ``err`` is a SQLite writer's lock (worth a retry, not a failure)."""
    text = str(err).lower()
    return "locked" in text or "busy" in text


def attach(
    con: duckdb.DuckDBPyConnection, setup: list[str], source: Source, alias: str
) -> set[str]:
    """Attach ``source`` read-only as ``alias``; return the names of its tables."""
    if source.target is None:
        return set()
    load_extension(con, source.type)
    setup.append(f"LOAD {source.type}")
    try:
        execute(
            con,
            setup,
            f"ATTACH {quote(source.target)} AS {alias} (TYPE {source.type}, READ_ONLY)",
        )
    except duckdb.Error as err:
        if is_locked(err):
            raise
        raise UsageError(f"cannot open {source.type} database {source.target!r}: {err}") from err
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = ? AND table_schema = ?",
        [alias, source.schema_prefix],
    ).fetchall()
    return {r[0] for r in rows}


def raw_select(
    source: Source, alias: str, tables: set[str], name: str, columns: Mapping[str, str]
) -> str:
    """SELECT of the typed columns of table ``name``, or an empty SELECT if absent."""
    if name not in tables:
        return empty_select(columns)
    cols = ", ".join(f"CAST({ident(c)} AS {t}) AS {ident(c)}" for c, t in columns.items())
    return f"SELECT {cols} FROM {alias}.{source.schema_prefix}.{ident(name)}"
