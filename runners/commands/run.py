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
from clusterprobe.tracker.errors import UsageError, error_line, interrupted_exit

EXIT_CRASH = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    add_data_arguments(parser)
    _add_model_arguments(parser.add_argument_group("model and training"))
    _add_measurement_arguments(parser.add_argument_group("measurement"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small demo preset {PRESETS['quick']} (explicit flags override)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def _add_model_arguments(m) -> None:
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
        "--pool",
        default=None,
        choices=choices.POOLS,
        help="ViT only: pool the class token (cls) or the mean of the patch tokens (gap: "
        "timm's global_pool='avg' with fc_norm; the class token stays in the sequence); "
        "probes, k-NN and transfer read the same pooling (default: timm's, cls)",
    )
    m.add_argument(
        "--augment",
        default=None,
        choices=choices.AUGMENTS,
        help="training augmentation: paper (random-resized crop, area 0.05-1, + flip; pixels "
        "in [0, 1], no mean/std), standard (timm's), none, or default: the dataset's own "
        "(the synthetic set: a 2 px translation)",
    )
    m.add_argument(
        "--labels",
        default=None,
        choices=choices.LABELS,
        help="train on superclass (default) or subclass labels",
    )
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--batch-size", type=int, default=None)
    add_training_arguments(m)
    m.add_argument("--seed", type=int, default=None)
    m.add_argument(
        "--save-every",
        type=int,
        default=None,
        metavar="N",
        help="store the training state (model, optimiser, schedule, RNG states) every N "
        "epochs, so that --resume can continue the run if it is interrupted (default 0: never)",
    )
    m.add_argument(
        "--resume",
        default=None,
        metavar="RUN_ID",
        help="continue an interrupted train run from its last --save-every state, in the "
        "same MLflow run, with the config it was started with (give no other run flags)",
    )
    m.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    m.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: the cores other running processes leave "
        "free, at least 1; OMP_NUM_THREADS, where set, decides instead). Busy processes "
        "sharing the cores make torch's threads spin-wait: one per free core avoids that",
    )


def _add_measurement_arguments(e) -> None:
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
        "--probe-features",
        default=None,
        choices=choices.PROBE_FEATURES,
        help="linear probe input: pooled (default: global average) or projected (the "
        "paper's: flattened features through a seeded sparse random projection)",
    )
    e.add_argument(
        "--probe-dim",
        type=int,
        default=None,
        help="dimension of the projected probe input (default 1024; narrower layers are "
        "used flattened as they are)",
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


# Flags of runners/recipes.py, runners/losses.py and runners/ema.py (RunConfig fields).
TRAINING_FLAGS = (
    "recipe",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "loss",
    "label_smoothing",
    "squared_k",
    "squared_m",
    "supcon_temperature",
    "ema",
)


def add_training_arguments(group) -> None:
    """The optimiser, recipe, loss and EMA flags (unset: the recipe's or RunConfig's)."""
    group.add_argument(
        "--recipe",
        default=None,
        choices=choices.RECIPES,
        help="values for the optimiser flags left unset: default (resnet SGD lr 0.4, VGG a "
        "tenth of it, ViT AdamW 1e-3 with weight decay 0.1) or paper (SGD lr 0.1, VGG 0.01, "
        "weight decay 1e-4, 5 warm-up epochs)",
    )
    group.add_argument(
        "--optimizer",
        default=None,
        choices=choices.OPTIMIZERS,
        help="sgd (Nesterov) or adamw (default: the recipe's for the family)",
    )
    group.add_argument(
        "--lr", type=float, default=None, help="learning rate per 256 images (default: recipe's)"
    )
    group.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    group.add_argument("--weight-decay", type=float, default=None)
    group.add_argument("--warmup-epochs", type=int, default=None, help="linear warm-up epochs")
    group.add_argument(
        "--loss",
        default=None,
        choices=choices.LOSSES,
        help="ce (cross-entropy, default), squared (Hui & Belkin's rescaled squared loss) or "
        "supcon (supervised contrastive on two views, linear head on detached features)",
    )
    group.add_argument(
        "--label-smoothing", type=float, default=None, help="--loss ce only (default 0)"
    )
    group.add_argument(
        "--squared-k", type=float, default=None, help="squared loss: true-class weight (9)"
    )
    group.add_argument(
        "--squared-m", type=float, default=None, help="squared loss: true-class target (60)"
    )
    group.add_argument(
        "--supcon-temperature", type=float, default=None, help="supcon temperature (0.1)"
    )
    group.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="evaluate and save an EMA of the weights, debiased (the paper's 0.99); 0 (default) "
        "turns it off",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """RunConfig: defaults < --quick preset < explicit flags (``pipeline.prepare`` validates it)."""
    kwargs: dict = dict(PRESETS["quick"]) if args.quick else {}
    kwargs.update(data_config_kwargs(args))
    for name in (
        "arch",
        "stem",
        "taps",
        "norm",
        "pool",
        "augment",
        "labels",
        "epochs",
        "batch_size",
        *TRAINING_FLAGS,
        "seed",
        "save_every",
        "device",
        "precision",
        "cka",
        "probe_features",
        "probe_dim",
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
    """The command that opens the MLflow UI on ``store`` (ours, and the plain mlflow one),
    without the URI's password: libpq reads it from ~/.pgpass or PGPASSWORD."""
    from clusterprobe.tracker.store import uri_without_password

    uri = uri_without_password(store.tracking_uri)
    if store.backend == "server":
        return f"open {uri}"
    mlflow_ui = f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
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
    from clusterprobe.runners.threads import apply_threads

    threads = args.threads
    if args.resume is not None and threads is None:
        # The thread count sets the order of float sums: a resumed run keeps its own, so it
        # ends with the weights an uninterrupted run would have.
        threads = _recorded_threads(store, args.resume)
    apply_threads(threads)

    if args.resume is not None and config != RunConfig():
        changed = [k for k, v in config.to_params().items() if RunConfig().to_params().get(k) != v]
        raise UsageError(
            f"--resume {args.resume}: the run keeps the config it was started with; drop "
            f"{', '.join('--' + k.replace('_', '-') for k in changed)}"
        )
    opened: list[str] = []  # the train run, once it exists
    try:
        with _sigterm_guard():
            if args.resume is not None:
                result = pipeline.resume(
                    args.resume, store, on_start=opened.append, quiet=args.quiet
                )
            else:
                result = pipeline.run(config, store, on_start=opened.append, quiet=args.quiet)
    except UsageError as err:
        if not opened:
            raise  # bad input, found before anything was stored: one line, exit 2
        # Found only after the runs were opened (they are marked FAILED): a crash.
        print(f"clusterprobe run: failed: {error_line(err)}", file=sys.stderr)
        return EXIT_CRASH
    except KeyboardInterrupt as err:
        resumable = opened and (config.save_every or args.resume)
        hint = f"; continue it: clusterprobe run --resume {opened[0]}" if resumable else ""
        print(f"clusterprobe run: interrupted; the runs were marked KILLED{hint}", file=sys.stderr)
        return interrupted_exit(err)
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


def _recorded_threads(store, run_id: str) -> int | None:
    """The torch thread count a stored run recorded; None where it cannot be read (the
    resume itself then says what is wrong with the run id)."""
    from clusterprobe.tracker.conventions import TAG_THREADS
    from clusterprobe.tracker.tracking import Tracker

    try:
        return int(Tracker(store).get_run(run_id).data.tags[TAG_THREADS])
    except Exception:
        return None


def _sigterm_guard():
    """SIGTERM -> KeyboardInterrupt, so the open runs end KILLED (tracker's helper)."""
    from clusterprobe.tracker import tracking

    return tracking.handle_sigterm()
