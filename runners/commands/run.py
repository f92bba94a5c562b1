"""`clusterprobe run`: train a model, measure every layer, record it in the store.

Thin edge: parse flags into a RunConfig (``--quick`` preset first, explicit flags
override it), call ``pipeline.run`` (which validates it before anything is stored),
print the per-layer table, the run ids, the bytes stored and the command that opens
the MLflow UI on this store.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from clusterprobe.runners import choices
from clusterprobe.runners.config import (
    PRESETS,
    RunConfig,
    parse_factors,
    parse_int_list,
    parse_save,
)
from clusterprobe.runners.data.cli_args import add_data_arguments, data_config_kwargs
from clusterprobe.tracker.errors import UsageError, error_line

EXIT_CRASH = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    add_data_arguments(parser)
    m = parser.add_argument_group("model and training")
    m.add_argument(
        "--arch",
        default=None,
        help="any timm model name (default: resnet18); --taps list shows what is measured",
    )
    m.add_argument(
        "--stem",
        default=None,
        choices=choices.STEMS,
        help="standard timm stem (default) or stride-1 CIFAR stem (5-10x slower on CPU)",
    )
    m.add_argument(
        "--taps",
        default=None,
        choices=(*choices.TAPS, choices.TAPS_LIST),
        help="tap every residual block (default) or every stage; 'list' prints the "
        "model's taps and runs nothing",
    )
    m.add_argument(
        "--norm",
        default=None,
        choices=choices.NORMS,
        help="VGG only: normalisation after every conv/fc (default: as named)",
    )
    m.add_argument(
        "--labels",
        default=None,
        choices=choices.LABELS,
        help="train on superclass (default) or subclass labels",
    )
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--batch-size", type=int, default=None)
    m.add_argument("--lr", type=float, default=None, help="learning rate per 256 images")
    m.add_argument("--weight-decay", type=float, default=None)
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    m.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's, one per core). Use 1 when other "
        "busy processes share the cores: torch's threads spin-wait for each other and "
        "were measured ~17x slower on a shared 2-core machine",
    )
    e = parser.add_argument_group("measurement")
    e.add_argument(
        "--factors",
        default=None,
        metavar="SPEC",
        help="overclustering factors, e.g. 1-5 (default) or 1,3",
    )
    e.add_argument(
        "--precision",
        default=None,
        choices=choices.PRECISIONS,
        help="embedding forward pass precision (default fp32)",
    )
    e.add_argument(
        "--cka",
        default=None,
        choices=choices.CKA_ESTIMATORS,
        help="estimator of the layer x layer CKA each eval records: linear (default) or "
        "debiased (unbiased HSIC; needs 4+ eval images per superclass)",
    )
    e.add_argument(
        "--eval-epochs",
        default=None,
        metavar="SPEC",
        help="also measure these intermediate checkpoints, e.g. 5,10",
    )
    e.add_argument(
        "--save",
        default=None,
        metavar="LIST",
        help=f"heavy artifacts to keep: comma list of {', '.join(choices.SAVE)}, "
        "'all' (default) or 'none'",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small demo preset {PRESETS['quick']} (explicit flags override)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """RunConfig: defaults < --quick preset < explicit flags (``pipeline.prepare`` validates it)."""
    kwargs: dict = dict(PRESETS["quick"]) if args.quick else {}
    kwargs.update(data_config_kwargs(args))
    for name in (
        "arch",
        "stem",
        "taps",
        "norm",
        "labels",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "seed",
        "device",
        "precision",
        "cka",
    ):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[name] = value
    if args.factors is not None:
        kwargs["factors"] = parse_factors(args.factors)
    if args.eval_epochs is not None:
        kwargs["eval_epochs"] = parse_int_list(args.eval_epochs, "--eval-epochs")
    if args.save is not None:
        kwargs["save"] = parse_save(args.save)
    try:
        config = RunConfig(**kwargs)
    except TypeError as err:  # a flag the RunConfig does not know: a programming error
        raise UsageError(f"bad run options: {err}") from None
    return config


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown (remote artifact store)"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def ui_command(store) -> str:
    """The command that opens the MLflow UI on ``store`` (ours, and the plain mlflow one)."""
    if store.backend == "server":
        return f"open {store.tracking_uri}"
    mlflow_ui = f"mlflow ui --backend-store-uri {shlex.quote(store.tracking_uri)}"
    if store.root is None:
        return mlflow_ui
    return f"clusterprobe ui --store {shlex.quote(str(store.root))}  (or: {mlflow_ui})"


def main(args: argparse.Namespace) -> int:
    from clusterprobe.tracker.store import store_from_args

    if args.taps == choices.TAPS_LIST:
        from clusterprobe.runners.taplist import format_taps

        args.taps = None
        print(format_taps(config_from_args(args).validate()))
        return 0
    config = config_from_args(args)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: give a number of threads >= 1")
    store = store_from_args(args)
    from clusterprobe.runners import pipeline
    from clusterprobe.runners.evalrun import format_layers

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    opened: list[str] = []  # the train run, once it exists
    try:
        with _sigterm_guard():
            result = pipeline.run(config, store, on_start=opened.append, quiet=args.quiet)
    except UsageError as err:
        if not opened:
            raise  # bad input, found before anything was stored: one line, exit 2
        # Found only after the runs were opened (they are marked FAILED): a crash.
        print(f"clusterprobe run: failed: {error_line(err)}", file=sys.stderr)
        return EXIT_CRASH
    except KeyboardInterrupt:
        print("clusterprobe run: interrupted; the runs were marked KILLED", file=sys.stderr)
        return 130
    except Exception as err:  # one line; the run itself is already marked FAILED
        print(f"clusterprobe run: failed: {error_line(err)}", file=sys.stderr)
        return EXIT_CRASH

    print(format_layers(result.layers))
    s = result.summary
    print(
        f"\nbest layer {int(s['best_layer'])} (AMI f1 {s['best_ami']:.3f}); "
        f"best probe acc {s.get('best_probe_acc', float('nan')):.3f}; "
        f"best kNN acc {s.get('best_knn_acc', float('nan')):.3f}; "
        f"raw pixels AMI f1 {s.get('pixel_ami_f1', float('nan')):.3f}; "
        f"test acc {s.get('test_acc', float('nan')):.3f}"
    )
    seconds = dict(result.seconds)
    share = seconds.pop("measure_share", None)
    if seconds:
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if share is not None:
        print(f"measuring (embed, cluster, CKA, probes): {100 * share:.1f} % of the run")
    print(f"train run: {result.train_run_id}")
    print(f"eval runs: {' '.join(result.eval_run_ids)}")
    if result.model_id:
        print(
            f"logged model: models:/{result.model_id} (to register it: clusterprobe register "
            f"{result.train_run_id} --name NAME)"
        )
    print(f"bytes stored: {format_bytes(result.bytes_stored)}")
    print(f"open the MLflow UI: {ui_command(store)}")
    return 0


def _sigterm_guard():
    """SIGTERM -> KeyboardInterrupt, so the open runs end KILLED (tracker's helper)."""
    from clusterprobe.tracker import tracking

    return tracking.handle_sigterm()
