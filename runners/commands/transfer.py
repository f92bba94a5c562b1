"""`clusterprobe transfer`: cluster a transfer set with a stored or external model.

The model comes from one source (``runners.sources``): a train run's final checkpoint
(RUN_ID, or one of its eval runs), a weights file (``--weights FILE --arch NAME``) or
timm's pretrained weights (``--pretrained NAME``). Every layer's pooled features of the
transfer set are clustered as one whole dataset and recorded as a new eval run nested
under the source's run (``runners.transfer``).
"""

from __future__ import annotations

import argparse

from clusterprobe.runners import choices
from clusterprobe.tracker.errors import UsageError

ONE_MODEL = "give one model: RUN_ID, --weights FILE --arch NAME, or --pretrained NAME"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.runners.data.transfer import TORCHVISION_SETS
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument(
        "run_id", metavar="RUN_ID", nargs="?", help="a train run (or one of its eval runs)"
    )
    parser.add_argument("--weights", metavar="FILE", help="a state dict (as for eval)")
    parser.add_argument("--arch", default=None, help="with --weights: the timm model")
    parser.add_argument(
        "--pretrained", metavar="NAME", help="timm's pretrained weights (Hugging Face cache)"
    )
    parser.add_argument(
        "--set",
        required=True,
        metavar="SOURCE",
        dest="source",
        help="the transfer set: a folder root/<class>/<images>, or a torchvision dataset "
        f"({', '.join(TORCHVISION_SETS)}, ...) read from --data-dir",
    )
    parser.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch what is missing: a torchvision dataset, the --pretrained weights",
    )
    parser.add_argument(
        "--per-class", type=int, default=None, help="images per class (default all)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="input size (default: the train run's, or the weights' data config)",
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


def _source(args: argparse.Namespace, tracker_factory):
    """The model source the flags name (files found before the store is opened)."""
    from clusterprobe.runners import sources
    from clusterprobe.runners.weights import read_weights

    if sum(map(bool, (args.run_id, args.weights, args.pretrained))) != 1:
        raise UsageError(ONE_MODEL)
    if bool(args.weights) != bool(args.arch):
        raise UsageError("--weights FILE and --arch NAME go together")
    if args.weights:
        return sources.WeightsSource(read_weights(args.weights), args.arch)
    if args.pretrained:
        return sources.PretrainedSource(args.pretrained, args.download)
    from clusterprobe.runners.evalrun.stored import train_run_of

    tracker = tracker_factory()
    return sources.TrainRunSource(tracker, train_run_of(tracker, args.run_id).info.run_id)


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
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size {args.image_size}: must be >= 1")
    request = TransferRequest(
        source=args.source,
        data_dir=args.data_dir,
        download=args.download,
        per_class=args.per_class,
        factors=parse_factors(args.factors),
        method=args.method,
        device=args.device,
        batch_size=args.batch_size,
        image_size=args.image_size,
    )
    opened: list = []

    def tracker():
        if not opened:
            opened.append(Tracker(store_from_args(args)))
        return opened[0]

    source = _source(args, tracker)
    result, run_id, parent_id = transfer_run(tracker(), source, request, quiet=args.quiet)
    print(format_layers(result.scores.rows()))
    parent = "train" if source.kind == "trained" else "model"
    print(f"eval run: {run_id} (nested under {parent} run {parent_id})")
    return 0
