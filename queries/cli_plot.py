"""`clusterprobe plot NAME --out FILE.png|.svg`: draw a canned query."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clusterprobe.queries.canned import load_query, parse_params
from clusterprobe.queries.cli_query import add_database_arguments
from clusterprobe.queries.connect import connect
from clusterprobe.queries.plots import PLOTS
from clusterprobe.tracker.errors import UsageError

SUFFIXES = (".png", ".svg", ".pdf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(PLOTS)}")
    parser.add_argument("--out", metavar="FILE", required=False, help="FILE.png or FILE.svg")
    parser.add_argument(
        "--param",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="parameter of the plotted query (see `clusterprobe query --list`)",
    )
    parser.add_argument("--dpi", type=int, default=150)
    add_database_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.name not in PLOTS:
        raise UsageError(f"unknown plot {args.name!r}; choose one of: {', '.join(PLOTS)}")
    if not args.out or Path(args.out).suffix.lower() not in SUFFIXES:
        raise UsageError(f"--out {args.out!r}: give a file ending in {', '.join(SUFFIXES)}")
    plot = PLOTS[args.name]
    if plot.query is not None:
        query = load_query(plot.query)
        given = {pair.partition("=")[0].strip() for pair in args.param}
        defaults = [f"{k}={v}" for k, v in plot.params.items() if k not in given]
        params = parse_params(query, defaults + list(args.param))
        sql = query.sql
    else:
        if args.param:
            raise UsageError(f"plot {args.name} takes no --param")
        params, sql = {}, plot.sql
    with connect(args.store, args.tracking_uri, args.storage) as analysis:
        for line in analysis.sources.notes:
            print(f"clusterprobe plot: note: {line}", file=sys.stderr)
        df = analysis.sql(sql, params).df()
    import matplotlib.pyplot as plt
    from clusterprobe.queries.plots import figure

    fig = figure(args.name, df)
    try:
        fig.savefig(args.out, dpi=args.dpi)
    finally:
        plt.close(fig)  # pyplot keeps every figure alive: main() may run many times in one process
    print(f"clusterprobe plot: wrote {args.out} ({len(df)} rows)", file=sys.stderr)
    return 0
