"""`clusterprobe rescore RUN_ID`: re-cluster a stored eval run without the model.

Default: the paper's per-superclass protocol on the run's stored Gram matrices (and the
layer x layer CKA from them); with
``--method M``, whole-dataset clustering of each layer's stored pooled embeddings.
The result is a new eval run nested under the same train run (``runners.rescore``).
"""

from __future__ import annotations

import argparse

from clusterprobe.runners import choices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument("run_id", metavar="RUN_ID", help="a stored eval run")
    parser.add_argument(
        "--factors",
        default=None,
        metavar="SPEC",
        help="overclustering factors, e.g. 1-5 (default: the source run's)",
    )
    parser.add_argument(
        "--method",
        default=None,
        choices=choices.WHOLE_METHODS,
        help="cluster each layer's pooled embeddings as a whole dataset instead of the "
        "per-superclass protocol on stored Gram matrices",
    )
    parser.add_argument(
        "--cka",
        default=None,
        choices=choices.CKA_ESTIMATORS,
        help="estimator of the layer x layer CKA recorded with a per-superclass re-score "
        "(default: the source run's, else linear)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.config import parse_factors
    from clusterprobe.runners.evalrun import format_layers
    from clusterprobe.runners.rescore import rescore
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    factors = parse_factors(args.factors) if args.factors is not None else None
    tracker = Tracker(store_from_args(args))
    result = rescore(
        tracker, args.run_id, factors=factors, method=args.method, cka=args.cka, quiet=args.quiet
    )
    print(format_layers(result.scores.rows()))
    print(
        f"\nbest layer {int(result.summary['best_layer'])} "
        f"(AMI f1 {result.summary['best_ami']:.3f})"
    )
    print(
        f"eval run: {result.run_id} (re-scored from {args.run_id}, "
        f"train run {result.parent_run_id})"
    )
    return 0
