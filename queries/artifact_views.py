"""Views over the runs' Parquet artifacts: ``layer_metrics``, ``ari`` and ``cka``.

The files are listed once per connection (runs that have ended only) and read
lazily by DuckDB at query time. A store folder that moved is followed: artifact
locations still naming the old folder are looked up under the new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
from clusterprobe.queries.sources import Sources
from clusterprobe.queries.sql_text import empty_select, execute, ident, quote
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.conventions import ART_ARI, ART_CKA  # the `ari`, `cka` views
from clusterprobe.tracker.store import run_artifact_dir


def _artifact_files(con: duckdb.DuckDBPyConnection, root: Path | None, name: str) -> list[str]:
    """Files ``name`` of every ended run (a RUNNING run may still be writing them)."""
    rows = con.execute(
        "SELECT run_id, artifact_uri FROM snap.runs WHERE status <> 'RUNNING' ORDER BY run_id"
    ).fetchall()
    out = []
    for run_id, uri in rows:
        folder = run_artifact_dir(uri, run_id, root)
        if folder is not None and (folder / name).is_file():
            out.append(str(folder / name))
    return out


def _parquet_view(
    con: duckdb.DuckDBPyConnection,
    setup: list[str],
    view: str,
    files: Sequence[str],
    columns: Mapping[str, str],
) -> None:
    if files:
        listing = "[" + ", ".join(quote(f) for f in files) + "]"
        cols = ", ".join(f"TRY_CAST({ident(c)} AS {t}) AS {ident(c)}" for c, t in columns.items())
        body = (
            # Schema from the first file (every file has the conventions' columns);
            # union_by_name would open all files whenever the view is bound.
            f"SELECT {cols} FROM read_parquet({listing})\n"
            "WHERE run_id IN (SELECT run_id FROM snap.runs)"
        )
    else:
        body = empty_select(columns)
    execute(con, setup, f"CREATE VIEW {view} AS\n{body}")


def define_artifact_views(
    con: duckdb.DuckDBPyConnection, setup: list[str], sources: Sources
) -> list[Path]:
    """The ``layer_metrics`` and ``ari`` views; returns the folders of the files they read
    (at query time, so a read-only session must keep them readable)."""
    layer_cols = {
        "run_id": "VARCHAR",
        "layer_index": "INTEGER",
        "layer_name": "VARCHAR",
        "relative_depth": "DOUBLE",
        "superclass": "INTEGER",
        "factor": "INTEGER",
        "metric": "VARCHAR",
        "value": "DOUBLE",
    }
    layer_files = _artifact_files(con, sources.root, cv.ART_LAYER_METRICS)
    _parquet_view(con, setup, "layer_metrics", layer_files, layer_cols)
    ari_cols = {
        "run_id": "VARCHAR",
        "other_run_id": "VARCHAR",
        "kind": "VARCHAR",
        "layer_a": "INTEGER",
        "layer_b": "INTEGER",
        "factor": "INTEGER",
        "value": "DOUBLE",
    }
    ari_files = _artifact_files(con, sources.root, ART_ARI)
    _parquet_view(con, setup, "ari", ari_files, ari_cols)
    cka_cols = {
        "run_id": "VARCHAR",
        "other_run_id": "VARCHAR",
        "kind": "VARCHAR",
        "layer_a": "INTEGER",
        "layer_b": "INTEGER",
        "superclass": "INTEGER",
        "estimator": "VARCHAR",
        "value": "DOUBLE",
    }
    cka_files = _artifact_files(con, sources.root, ART_CKA)
    _parquet_view(con, setup, "cka", cka_files, cka_cols)
    return sorted({Path(f).parent for f in layer_files + ari_files + cka_files})
