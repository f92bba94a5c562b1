"""Attach the MLflow and Optuna databases to DuckDB read-only.

SQLite files and PostgreSQL databases are attached through DuckDB's sqlite and
postgres extensions, installed offline from the binaries that the
``duckdb-extension-sqlite`` / ``duckdb-extension-postgres`` PyPI packages ship
(DuckDB itself never downloads them: the connection turns autoinstall off). The setup
records ``INSTALL '<that file>'`` before ``LOAD``, so a fresh DuckDB session of the
same version replays it offline (a bare ``LOAD sqlite`` there would try to download).
A table is read as a SELECT of typed columns, or an empty SELECT where the database
lacks it.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import duckdb
from clusterprobe.queries.sources import Source
from clusterprobe.queries.sql_text import empty_select, execute, ident, quote
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import redact_uri


def extension_dir() -> Path:
    """Per-user folder for the extensions copied from the PyPI packages (offline)."""
    base = os.environ.get("CLUSTERPROBE_DUCKDB_EXTENSIONS")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"clusterprobe-duckdb-{os.getuid()}"


def extension_file(name: str) -> Path | None:
    """The ``name`` extension binary that the ``duckdb-extension-<name>`` package ships for
    this DuckDB version, or None where that package is not installed."""
    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError:
        return None
    path = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = path / f"{name}.duckdb_extension"
    return path if path.is_file() else None


def load_extension(con: duckdb.DuckDBPyConnection, setup: list[str], name: str) -> None:
    """LOAD extension ``name`` (installing it from its PyPI package first where needed);
    ``setup`` gets the INSTALL and LOAD a fresh offline session needs."""
    path = extension_file(name)
    install = f"INSTALL {quote(str(path))}" if path else f"INSTALL {name}"
    try:
        con.execute(f"LOAD {name}")  # installed in the extension folder by an earlier run
    except duckdb.Error:
        if path is None:
            raise UsageError(
                f"DuckDB's {name} extension is needed offline: pip install "
                f"duckdb-extension-{name}=={duckdb.__version__}"
            ) from None
        con.execute(install)
        con.execute(f"LOAD {name}")
    setup += [stmt for stmt in (install, f"LOAD {name}") if stmt not in setup]


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
    load_extension(con, setup, source.type)
    try:
        execute(
            con,
            setup,
            f"ATTACH {quote(source.target)} AS {alias} (TYPE {source.type}, READ_ONLY)",
        )
    except duckdb.Error as err:
        if is_locked(err):
            raise
        raise UsageError(
            redact_uri(f"cannot open {source.type} database {source.target!r}: {err}")
        ) from err
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
