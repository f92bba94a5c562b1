"""`clusterprobe transfer RUN_ID --set SOURCE`: cluster a transfer set with a stored model.

Loads the final checkpoint of a train run (RUN_ID may also name one of its eval
runs), runs the transfer set through it and clusters every layer's pooled
features as one whole dataset (``runners.transfer``), then records a new eval
run nested under the train run: ``eval_set`` is the transfer set's name,
``protocol`` is ``whole``, and the usual per-layer series, layer_metrics.parquet
and layers.json, so ``clusterprobe query transfer_by_pretraining_labels`` reads it.
Everything is read and checked before the run exists: bad input stores nothing.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from clusterprobe.tracker import conventions as cv
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
        choices=("auto", "exact", "knn-ward", "two-stage", "kmeans"),
        help="whole-dataset clustering (default auto: exact Ward while it fits memory)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def train_run_of(tracker, run_id: str):
    """The train run ``run_id`` names (itself, or the parent of an eval run)."""
    run = tracker.open_run(run_id)
    kind = run.data.tags.get(cv.TAG_KIND)
    if kind == "eval" and run.data.tags.get(cv.TAG_PARENT):
        return train_run_of(tracker, run.data.tags[cv.TAG_PARENT])
    if kind != "train":
        raise UsageError(
            f"RUN_ID {run_id!r} is a {kind or 'non-clusterprobe'} run; give a train run or "
            "one of its eval runs"
        )
    return run


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.config import parse_factors
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    factors = tuple(sorted(set(parse_factors(args.factors)) | {1}))
    if args.per_class is not None and args.per_class < 2:
        raise UsageError(f"--per-class {args.per_class}: give at least 2 images per class")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: give a positive number")
    tracker = Tracker(store_from_args(args))
    train = train_run_of(tracker, args.run_id)
    result, new_id = transfer_run(tracker, train, args, factors)
    f1 = result.factors.index(1)
    print(f"{'layer':>5}  {'name':<24}  {'AMI f1':>7}  {'purity f1':>9}")
    for i, name in enumerate(result.layer_names):
        print(f"{i:>5}  {name:<24}  {result.ami[i, f1]:>7.3f}  {result.purity[i, f1]:>9.3f}")
    print(f"eval run: {new_id} (nested under train run {train.info.run_id})")
    return 0


def transfer_run(tracker, train, args, factors):
    """Score the transfer set with the train run's final checkpoint; record a new eval run."""
    from clusterprobe.runners import models, recording
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.data.transfer import load_transfer
    from clusterprobe.runners.device import resolve_device
    from clusterprobe.runners.transfer import transfer_scores

    params = dict(train.data.params)
    train_id = train.info.run_id
    # Read and check everything before a run exists: a bad input stores nothing.
    try:
        folder = tracker.artifact_path(train_id, cv.ART_CHECKPOINT_DIR)
    except FileNotFoundError:
        folder = None
    if folder is None or not (folder / models.WEIGHTS_FILE).is_file():
        raise UsageError(
            f"train run {train_id} has no stored checkpoint ({cv.ART_WEIGHTS}); rerun it "
            "with --save including checkpoint (the default)"
        )
    device = resolve_device(args.device)
    try:
        model = models.load_checkpoint(folder, device)
    except UsageError:
        raise
    except Exception as err:  # corrupt weights or a config this timm cannot build
        raise UsageError(f"train run {train_id}: checkpoint does not load ({err})") from None
    config = RunConfig(arch=params.get("arch", "resnet18"), taps=params.get("taps", "blocks"))
    taps = models.layer_taps(model, config)
    image_size = int(models.checkpoint_config(folder).get("image_size") or 224)
    data = load_transfer(
        args.source,
        data_dir=args.data_dir,
        image_size=image_size,
        arch=config.arch,
        per_class=args.per_class,
        seed=int(params.get("seed", 0) or 0),
        download=args.download,
    )
    if not args.quiet:
        print(
            f"clusterprobe: transfer of train run {train_id} ({config.arch}) to {data.name}: "
            f"{len(data.labels)} images, {data.num_classes} classes, factors "
            f"{','.join(map(str, factors))}",
            file=sys.stderr,
        )
    result = transfer_scores(
        model,
        taps,
        data,
        factors,
        device=device,
        method=args.method,
        batch_size=args.batch_size,
        seed=int(params.get("seed", 0) or 0),
        quiet=args.quiet,
    )

    new_params = {k: v for k, v in params.items() if not k.startswith(("cluster.", "whole."))}
    new_params.update({f"whole.{k}": v for k, v in result.params.items()})
    new_params.update(
        {
            cv.PARAM_CHECKPOINT_EPOCH: params.get("epochs", ""),
            cv.PARAM_EVAL_SET: data.name,
            cv.PARAM_PROTOCOL: "whole",
            "factors": ",".join(map(str, factors)),
            "eval_factors": ",".join(map(str, factors)),
            "transfer.source": args.source,
            "transfer.images": str(result.num_images),
            "transfer.classes": str(result.num_classes),
        }
    )
    ami, purity = result.ami[:, None, :], result.purity[:, None, :]  # one "superclass": all
    with tracker.start_run(
        "eval",
        params=new_params,
        parent_run_id=train_id,
        tags={cv.TAG_DEVICE: str(device)},
        run_name=f"transfer {data.name} {train.info.run_name or train_id}",
    ) as ctx:
        recording.log_layer_scores(ctx, result.layer_names, [None], factors, ami, purity)
        # one "superclass", the whole set: export and rescore --method read these
        recording.log_embeddings(ctx, result.pooled, np.zeros_like(data.labels), data.labels)
        ctx.log_json(
            {
                **data.record,
                "name": data.name,
                "classes": data.class_names,
                "images_per_class": np.bincount(data.labels).tolist(),
            },
            cv.ART_DATASET_RECORD,
        )
    return result, ctx.run_id
