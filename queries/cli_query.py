"""`clusterprobe query NAME`: run one canned SQL query (queries/NAME.sql) over the store."""

from __future__ import annotations

import argparse
import sys

from clusterprobe.queries import output
from clusterprobe.queries.canned import load_query, parse_params, query_names
from clusterprobe.queries.connect import connect
from clusterprobe.queries.orphans import warn_orphans
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import add_store_arguments


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """--store / --tracking-uri as for `run`, plus --storage (query, sql, plot)."""
    group = add_store_arguments(parser, artifact_root=False)
    group.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="Optuna storage: a URL (sqlite:///FILE, postgresql://...) or a journal file "
        "(default: the store folder's optuna.db)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=output.FORMATS, default="table")
    parser.add_argument("--out", metavar="FILE", default=None, help="write here, not stdout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(query_names())}")
    parser.add_argument(
        "--param",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="set a query parameter (repeatable; NAME= clears a default); see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the queries and their parameters")
    parser.add_argument("--show", action="store_true", help="print the query's SQL and exit")
    add_database_arguments(parser)
    add_output_arguments(parser)


def _listing() -> str:
    lines = []
    for name in query_names():
        query = load_query(name)
        # the header's first sentence, on one line
        text = " ".join(query.description.split())
        first = text.split(". ")[0].rstrip(".") if text else name
        lines.append(first + ".")
        for p in query.params:
            default = "" if p.default is None else f" [default {p.default}]"
            lines.append(f"    --param {p.name}={p.type}{default}: {p.help}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write(_listing())
        return 0
    if not args.name or args.name not in query_names():
        raise UsageError(f"unknown query {args.name!r}; choose one of: {', '.join(query_names())}")
    query = load_query(args.name)
    if args.show:
        sys.stdout.write(query.sql)
        return 0
    params = parse_params(query, args.param)
    with connect(args.store, args.tracking_uri, args.storage) as analysis:
        for line in analysis.sources.notes:
            print(f"clusterprobe query: note: {line}", file=sys.stderr)
        warn_orphans(analysis, "query")
        relation = analysis.sql(query.sql, params)
        output.write(relation, args.format, args.out)
    return 0
