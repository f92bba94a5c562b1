"""`clusterprobe export RUN_ID --layer L --out EMB.npz`: one layer's pooled embeddings.

Writes ``clusterprobe score``'s input format (``features`` [N, C] float32,
``superclass`` and ``subclass`` int64 [N], in eval-split order), so that
``clusterprobe score EMB.npz`` re-clusters them with the same engine.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument("run_id", metavar="RUN_ID", help="a stored eval run")
    parser.add_argument(
        "--layer",
        required=True,
        metavar="L",
        help="layer index (0..L-1, negative counts from the end) or name",
    )
    parser.add_argument("--out", required=True, metavar="EMB.npz", help="file to write")
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.evalrun.stored import export_layer
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    info = export_layer(Tracker(store_from_args(args)), args.run_id, args.layer, args.out)
    n, c = info["shape"]
    print(
        f"wrote {info['path']}: layer {info['layer']} ({info['name']}), {n} images x {c} features",
        file=sys.stderr,
    )
    return 0
