"""`clusterprobe register RUN_ID --name NAME`: a run's model into the MLflow Model Registry.

RUN_ID is a train run, or an eval run of its final checkpoint; the new version of
registered model NAME points at the train run's logged model (``runners.register``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument(
        "run_id", metavar="RUN_ID", help="a train run, or an eval run of its final checkpoint"
    )
    parser.add_argument(
        "--name", required=True, help="registered model name (created when new; no '/' or ':')"
    )
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.register import register_run
    from clusterprobe.tracker.logged_models import check_model_name
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    check_model_name(args.name)  # before the store is opened: bad input stores nothing
    version = register_run(Tracker(store_from_args(args)), args.run_id, args.name)
    print(
        f"registered {version.name} version {version.version}: models:/{version.name}/"
        f"{version.version} = logged model {version.model_id} of train run {version.run_id}"
    )
    return 0
