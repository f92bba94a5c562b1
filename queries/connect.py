"""Open DuckDB over a clusterprobe store: MLflow DB + Optuna DB + Parquet layer tables.

Nothing here imports mlflow, optuna or torch: the stores are read as databases.

`connect(store)` attaches the MLflow database and the Optuna storage read-only
(SQLite files by default, PostgreSQL URIs through DuckDB's postgres extension, both
loaded offline from the ``duckdb-extension-*`` PyPI packages), copies the small
tables it needs into memory once (one consistent snapshot: the run list is read
first, so a run shown FINISHED has all its metrics), and defines the views that
`clusterprobe.queries.view_columns` lists. A missing database or table gives empty
views with the same columns, so every query runs on any store and returns zero rows
where there is nothing.

Where the pieces live: `sources` (finding the databases), `attach` (attaching them),
`snapshot` (the in-memory copy; `journal` replays an Optuna journal file into it),
`run_views`, `design_views`, `score_views`, `artifact_views` and `optuna_views` (the
views), `intervals` (the interval macros), `canned` (the ``*.sql`` queries).
`Analysis.restrict_to_store` then limits the session to the store's own files.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import duckdb
from clusterprobe.queries.artifact_views import define_artifact_views
from clusterprobe.queries.attach import extension_dir, is_locked

# query_df is re-exported: Python users open a connection and run canned queries
# with one import (`from clusterprobe.queries.connect import connect, query_df`).
from clusterprobe.queries.canned import query_df
from clusterprobe.queries.design_views import define_design_views
from clusterprobe.queries.intervals import define_interval_macros
from clusterprobe.queries.optuna_views import define_optuna_views
from clusterprobe.queries.run_views import define_param_views, define_run_views
from clusterprobe.queries.score_views import define_score_views
from clusterprobe.queries.snapshot import take_snapshot
from clusterprobe.queries.sources import Sources, locate
from clusterprobe.queries.sql_text import ident, quote

__all__ = ["Analysis", "connect", "connect_sources", "note", "query_df"]

_LOCK_RETRY_S = 60.0  # SQLite writers hold their lock for milliseconds; wait, never fail


class Analysis:
    """A DuckDB connection with the store's views, plus the setup that made them.

    ``setup`` holds the SQL statements in order (ATTACH, snapshot tables, views), so
    the same views can be rebuilt in a DuckDB shell (`clusterprobe sql --setup`).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        setup: list[str],
        sources: Sources,
        read_dirs: list[Path] | None = None,
    ):
        self.con = con
        self.setup = setup
        self.sources = sources
        self.read_dirs = list(read_dirs or [])  # folders the views read files from

    def restrict_to_store(self) -> list[str]:
        """Let this session read the store and nothing else, for good: the store folder
        and the folders of the artifact files the views read (which may lie outside it)
        stay readable; any other file, glob, ATTACH or INSTALL is refused by DuckDB
        (``allowed_directories``, then ``enable_external_access = false``, which cannot
        be turned back). The attached databases and the in-memory tables still read.
        Returns the allowed folders."""
        allowed = _outermost([*([self.sources.root] if self.sources.root else []), *self.read_dirs])
        listing = "[" + ", ".join(quote(str(d) + os.sep) for d in allowed) + "]"
        self.con.execute(f"SET allowed_directories = {listing}")
        self.con.execute("SET enable_external_access = false")
        return [str(d) for d in allowed]

    def sql(self, text: str, variables: Mapping[str, object] | None = None):
        """Run ``text`` (one or more statements) and return the last result relation."""
        for name, value in (variables or {}).items():
            self.con.execute(f"SET VARIABLE {ident(name)} = ?", [value])
        return self.con.sql(text)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(
    store: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    *,
    threads: int | None = None,
) -> Analysis:
    """Open an in-memory DuckDB with the views over the resolved stores."""
    sources = locate(store, tracking_uri, storage)
    return connect_sources(sources, threads=threads)


def connect_sources(sources: Sources, *, threads: int | None = None) -> Analysis:
    ext_dir = extension_dir()
    ext_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "extension_directory": str(ext_dir),
    }
    if threads:
        config["threads"] = threads
    deadline = time.monotonic() + _LOCK_RETRY_S
    delay = 0.05
    while True:
        con = duckdb.connect(":memory:", config=config)
        con.execute("SET enable_progress_bar = false")  # it prints; stdout may be JSON
        setup: list[str] = []
        try:
            read_dirs = _build(con, sources, setup)
            return Analysis(con, setup, sources, read_dirs)
        except duckdb.Error as err:
            con.close()
            if not is_locked(err) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _build(con: duckdb.DuckDBPyConnection, sources: Sources, setup: list[str]) -> list[Path]:
    """Snapshot and views; returns the folders the views read files from at query time."""
    take_snapshot(con, sources, setup)
    define_run_views(con, setup)
    define_param_views(con, setup)
    define_design_views(con, setup)
    define_interval_macros(con, setup)
    define_score_views(con, setup)
    read_dirs = define_artifact_views(con, setup, sources)
    define_optuna_views(con, setup)
    return read_dirs


def _outermost(folders: list[Path]) -> list[Path]:
    """``folders`` less those inside another one of them (sorted)."""
    out: list[Path] = []
    # Each folder as named and as resolved: DuckDB compares the paths a query names.
    named = {Path(os.path.abspath(f)) for f in folders}
    for folder in sorted(named | {Path(os.path.realpath(f)) for f in named}):
        if not any(folder.is_relative_to(kept) for kept in out):
            out.append(folder)
    return out


def note(message: str) -> None:
    print(f"clusterprobe: note: {message}", file=sys.stderr)
