"""`clusterprobe compare RUN_A RUN_B`: CKA and ARI between the layers of two eval runs.

Both runs must have stored their Grams (``--save distances``) and cluster assignments
of the same eval images; the comparison is recorded as a run of kind ``compare``
(``runners.compare``).
"""

from __future__ import annotations

import argparse

from clusterprobe.runners import choices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument("run_a", metavar="RUN_A", help="an eval run with stored distances")
    parser.add_argument("run_b", metavar="RUN_B", help="an eval run of the same eval images")
    parser.add_argument(
        "--cka",
        default="linear",
        choices=choices.CKA_ESTIMATORS,
        help="CKA estimator: linear (default) or debiased (unbiased HSIC)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.compare import compare_runs, format_comparison
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(store_from_args(args))
    result = compare_runs(tracker, args.run_a, args.run_b, estimator=args.cka, quiet=args.quiet)
    print(format_comparison(result))
    print(f"compare run: {result.run_id} (A = {args.run_a}, B = {args.run_b})")
    return 0
