"""`clusterprobe transfer RUN_ID --set SOURCE`: cluster a transfer set with a stored model.

The train run's final checkpoint (RUN_ID may also name one of its eval runs) embeds
the transfer set; every layer's pooled features are clustered as one whole dataset
and recorded as a new eval run nested under the train run (``runners.transfer``).
"""

from __future__ import annotations

import argparse

from clusterprobe.runners import choices
from clusterprobe.tracker.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.runners.data.transfer import TORCHVISION_SETS
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument("run_id", metavar="RUN_ID", help="a train run (or one of its eval runs)")
    parser.add_argument(
        "--set",
        required=True,
        metavar="SOURCE",
        dest="source",
        help="the transfer set: a folder root/<class>/<images>, or a torchvision dataset "
        f"({', '.join(TORCHVISION_SETS)}, ...) read from --data-dir",
    )
    parser.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    parser.add_argument("--download", action="store_true", help="fetch a torchvision dataset")
    parser.add_argument(
        "--per-class", type=int, default=None, help="images per class (default all)"
    )
    parser.add_argument(
        "--factors", default="1-10", metavar="SPEC", help="clusters per class, e.g. 1-10 (default)"
    )
    parser.add_argument(
        "--method",
        default="auto",
        choices=choices.WHOLE_METHODS,
        help="whole-dataset clustering (default auto: exact Ward while it fits memory)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.config import parse_factors
    from clusterprobe.runners.evalrun import format_layers
    from clusterprobe.runners.transfer import TransferRequest, transfer_run
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    if args.per_class is not None and args.per_class < 2:
        raise UsageError(f"--per-class {args.per_class}: give at least 2 images per class")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: give a positive number")
    request = TransferRequest(
        source=args.source,
        data_dir=args.data_dir,
        download=args.download,
        per_class=args.per_class,
        factors=parse_factors(args.factors),
        method=args.method,
        device=args.device,
        batch_size=args.batch_size,
    )
    tracker = Tracker(store_from_args(args))
    result, run_id, train_id = transfer_run(tracker, args.run_id, request, quiet=args.quiet)
    print(format_layers(result.scores.rows()))
    print(f"eval run: {run_id} (nested under train run {train_id})")
    return 0
