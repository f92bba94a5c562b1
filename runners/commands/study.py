"""`clusterprobe study`: an Optuna study over design choices; each trial is one `run`.

Thin edge: parse flags, call `study.run_study` (or `study.worker.run_worker` for the
worker processes it spawns), print the best trial(s) with their run ids and the
command that opens optuna-dashboard on the study.
"""

from __future__ import annotations

import argparse
import os
import sys

from clusterprobe.tracker.store import add_store_arguments, store_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="study name (default: study-YYYYmmdd-HHMMSS)")
    parser.add_argument(
        "--resume",
        metavar="NAME",
        help="continue study NAME until it has --trials complete trials (fails dead trials first)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        help="number of COMPLETE trials wanted, counted across workers and --resume (default 20)",
    )
    parser.add_argument(
        "--space",
        metavar="FILE",
        help="search space TOML (default: the shipped runners/default_space.toml)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: a journal file path (many processes, one machine) or "
        "postgresql://USER@HOST:PORT/DB (many machines); default: sqlite DIR/optuna.db",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (needs --storage journal or postgresql when > 1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="start every trial from the quick preset"
    )
    parser.add_argument(
        "--objective",
        action="append",
        dest="objectives",
        metavar="METRIC[:max|min]",
        help="summary metric to optimise (repeat for a Pareto front); default best_ami:max",
    )
    parser.add_argument(
        "--pruner",
        choices=("none", "median"),
        help="stop weak trials at intermediate checkpoints (needs eval_epochs); default none",
    )
    parser.add_argument("--seed", type=int, help="sampler seed (default: random)")
    parser.add_argument(
        "--register-best",
        metavar="NAME",
        help="when the study ends, register the best trial's model as a new version of NAME "
        "(several objectives: the Pareto-front trial best on the first objective)",
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SECONDS",
        help="trial heartbeat interval on RDB storages; a trial silent for 3x this is failed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.study.worker import StudyFailed

    try:
        return _main(args)
    except StudyFailed as err:
        print(f"clusterprobe study: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the trial is FAIL, its runs KILLED
        from clusterprobe.tracker.errors import interrupted_exit

        name = args.resume or args.name or "NAME"
        print(f"clusterprobe study: interrupted; continue with --resume {name}", file=sys.stderr)
        return interrupted_exit(err)


def _main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.study import run_study
    from clusterprobe.runners.study.options import StudyOptions
    from clusterprobe.runners.study.report import format_outcome
    from clusterprobe.runners.study.storage import resolve_storage
    from clusterprobe.runners.study.worker import run_worker

    store = store_from_args(args)
    if args.worker is not None:  # a process spawned by --workers N: run trials, print nothing
        from clusterprobe.runners.study.storage import ENV_STORAGE

        spec = resolve_storage(args.storage or os.environ.get(ENV_STORAGE), store)
        run_worker(
            spec,
            args.resume,
            store,
            worker_index=args.worker,
            heartbeat=args.heartbeat,
            quiet=args.quiet,
        )
        return 0
    opts = StudyOptions(
        name=args.name,
        resume=args.resume,
        trials=args.trials,
        space=args.space,
        storage=args.storage,
        workers=args.workers,
        quick=args.quick,
        objectives=tuple(args.objectives or ()),
        pruner=args.pruner,
        seed=args.seed,
        heartbeat=args.heartbeat,
        quiet=args.quiet,
        register_best=args.register_best,
    )
    outcome = run_study(opts, store)
    print(format_outcome(outcome, store))
    return 0
