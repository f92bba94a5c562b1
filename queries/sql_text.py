"""SQL-writing helpers shared by the modules that build the store's views.

Every statement that builds the views goes through `execute`, which also records
it, so the whole setup can be replayed in a DuckDB shell (`clusterprobe sql --setup`).
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb


def quote(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def empty_select(columns: Mapping[str, str]) -> str:
    """A SELECT of no rows with the typed ``columns`` (name -> DuckDB type)."""
    cols = ", ".join(f"NULL::{t} AS {ident(c)}" for c, t in columns.items())
    return f"SELECT {cols} WHERE false"


def execute(con: duckdb.DuckDBPyConnection, setup: list[str], statement: str) -> None:
    """Run ``statement`` on ``con`` and append it to ``setup``."""
    con.execute(statement)
    setup.append(statement)
