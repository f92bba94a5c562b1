"""`clusterprobe sql "SELECT ..."`: ad-hoc, read-only SQL over the store's views.

Read-only twice over: statements that would write are refused before they run, and
once the views are built the session may read the store and nothing else
(`Analysis.restrict_to_store`): ``read_csv('/etc/passwd')`` is refused, one line,
exit 2.
"""

from __future__ import annotations

import argparse
import sys

import duckdb
from clusterprobe.queries import output
from clusterprobe.queries.cli_query import add_database_arguments, add_output_arguments
from clusterprobe.queries.connect import connect
from clusterprobe.queries.orphans import warn_orphans
from clusterprobe.queries.view_columns import VIEW_COLUMNS
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import uri_without_password

# Statement types that only read. Everything else (INSERT, CREATE, COPY, ATTACH, ...)
# is refused before it runs; the databases are attached READ_ONLY besides.
READ_ONLY_TYPES = ("SELECT", "EXPLAIN", "SET", "VARIABLE_SET")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "query",
        nargs="?",
        help="SQL over the views: " + ", ".join(VIEW_COLUMNS) + " (read '-' from stdin)",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="print the SQL that attaches the stores and defines the views, and exit",
    )
    add_database_arguments(parser)
    add_output_arguments(parser)


def error_line(err: duckdb.Error) -> str:
    """DuckDB's message on one line: its first line and its hint ("Did you mean ...",
    "Candidate bindings: ..."), which names what would be valid; a parse error's caret
    drawing is left out (its first line names the token). A missing table also gets the
    list of views, since DuckDB's guess may be one of its own catalog tables."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    hints = [line for line in lines[1:] if line.startswith(("Did you mean", "Candidate"))]
    text = " ".join(lines[:1] + hints)
    if isinstance(err, duckdb.CatalogException) and "Table with name" in text:
        text += f" (the views: {', '.join(VIEW_COLUMNS)})"
    return text


def check_read_only(text: str) -> None:
    """Raise UsageError naming the first statement that would write."""
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as err:
        raise UsageError(f"SQL does not parse: {error_line(err)}") from err
    if not statements:
        raise UsageError("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind not in READ_ONLY_TYPES:
            raise UsageError(
                f"clusterprobe sql is read-only: {kind} statements are refused "
                "(use SELECT over the views; the stores are never changed)"
            )


def main(args: argparse.Namespace) -> int:
    if args.setup:
        with connect(args.store, args.tracking_uri, args.storage) as analysis:
            # For a DuckDB shell to run: libpq reads a password from PGPASSWORD/~/.pgpass.
            text = ";\n\n".join(analysis.setup) + ";\n"
            sys.stdout.write(uri_without_password(text))
        return 0
    text = sys.stdin.read() if args.query == "-" else args.query
    if not text:
        raise UsageError('give a query: clusterprobe sql "SELECT * FROM runs"')
    check_read_only(text)
    with connect(args.store, args.tracking_uri, args.storage) as analysis:
        warn_orphans(analysis, "sql")
        allowed = analysis.restrict_to_store()
        try:
            relation = analysis.con.sql(text)
        except duckdb.PermissionException as err:
            where = ", ".join(allowed) or "the store's databases"
            raise UsageError(
                f"{error_line(err)} (clusterprobe sql reads only the store: {where})"
            ) from err
        except duckdb.Error as err:
            raise UsageError(error_line(err)) from err
        if relation is None:
            return 0  # e.g. SET VARIABLE alone
        output.write(relation, args.format, args.out)
    return 0
