"""`clusterprobe run`: train a model, measure every layer, record it in the store.

Thin edge: parse flags into a RunConfig (``--quick`` preset first, explicit flags
override it), validate, call ``pipeline.run``, print the per-layer table, the run
ids, the bytes stored and the command that opens the MLflow UI on this store.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from clusterprobe.runners.config import PRESETS, SAVE_CHOICES, RunConfig, parse_factors
from clusterprobe.runners.data.cli_args import add_data_arguments, data_config_kwargs
from clusterprobe.tracker.errors import UsageError

EXIT_CRASH = 1


def parse_int_list(spec: str, flag: str) -> tuple[int, ...]:
    """``"1-3,5"`` -> (1, 2, 3, 5); '' or 'none' -> (). One error line naming ``flag``."""
    if spec.strip().lower() in ("", "none"):
        return ()
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            lo_i, hi_i = int(lo), int(hi or lo)
            if lo_i > hi_i:
                raise ValueError
            out.update(range(lo_i, hi_i + 1))
    except ValueError:
        raise UsageError(f"{flag} {spec!r}: use ints or ranges such as '5,10' or '1-3'") from None
    return tuple(sorted(out))


def parse_save(spec: str) -> tuple[str, ...]:
    """``"all"``, ``"none"`` or a comma list of SAVE_CHOICES."""
    spec = spec.strip().lower()
    if spec == "all":
        return SAVE_CHOICES
    if spec in ("none", ""):
        return ()
    items = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [s for s in items if s not in SAVE_CHOICES]
    if bad:
        raise UsageError(
            f"--save {','.join(bad)}: choose from {', '.join(SAVE_CHOICES)}, 'all' or 'none'"
        )
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    add_data_arguments(parser)
    m = parser.add_argument_group("model and training")
    m.add_argument("--arch", default=None, help="timm model name (default: resnet18)")
    m.add_argument(
        "--stem",
        default=None,
        choices=("standard", "cifar"),
        help="standard timm stem (default) or stride-1 CIFAR stem (5-10x slower on CPU)",
    )
    m.add_argument(
        "--taps",
        default=None,
        choices=("blocks", "stages"),
        help="tap every residual block (default) or every stage",
    )
    m.add_argument(
        "--norm",
        default=None,
        choices=("default", "none", "bn", "ln"),
        help="VGG only: normalisation after every conv/fc (default: as named)",
    )
    m.add_argument(
        "--labels",
        default=None,
        choices=("superclass", "subclass"),
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
        choices=("fp32", "bf16"),
        help="embedding forward pass precision (default fp32)",
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
        help=f"heavy artifacts to keep: comma list of {', '.join(SAVE_CHOICES)}, "
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
    """RunConfig: defaults < --quick preset < explicit flags; validated."""
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
    return config.validate()


def format_table(layers: list[dict]) -> str:
    """The per-layer table printed at the end (a probe not run shows as '-')."""
    width = max([len("name")] + [len(str(r["name"])) for r in layers])
    lines = [
        f"{'layer':>5}  {'name':<{width}}  {'AMI f1':>7}  {'purity f1':>9}  {'probe acc':>9}"
        f"  {'kNN acc':>7}"
    ]
    for r in layers:
        probe, knn = (r.get(key, float("nan")) for key in ("probe_acc", "knn_acc"))
        probe_text = "-" if probe != probe else f"{probe:.3f}"  # NaN: no probe
        knn_text = "-" if knn != knn else f"{knn:.3f}"
        lines.append(
            f"{r['index']:>5}  {r['name']:<{width}}  {r['ami_f1']:>7.3f}  "
            f"{r['purity_f1']:>9.3f}  {probe_text:>9}  {knn_text:>7}"
        )
    return "\n".join(lines)


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

    config = config_from_args(args)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: give a number of threads >= 1")
    store = store_from_args(args)
    from clusterprobe.runners import pipeline

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    try:
        with _sigterm_guard():
            result = pipeline.run(config, store, quiet=args.quiet)
    except UsageError:
        raise
    except KeyboardInterrupt:
        print("clusterprobe run: interrupted; the runs were marked KILLED", file=sys.stderr)
        return 130
    except Exception as err:  # one line; the run itself is already marked FAILED
        print(f"clusterprobe run: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_CRASH

    print(format_table(result.layers))
    s = result.summary
    print(
        f"\nbest layer {int(s['best_layer'])} (AMI f1 {s['best_ami']:.3f}); "
        f"best probe acc {s.get('best_probe_acc', float('nan')):.3f}; "
        f"best kNN acc {s.get('best_knn_acc', float('nan')):.3f}; "
        f"raw pixels AMI f1 {s.get('pixel_ami_f1', float('nan')):.3f}"
    )
    if result.seconds:
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    print(f"train run: {result.train_run_id}")
    print(f"eval runs: {' '.join(result.eval_run_ids)}")
    print(f"bytes stored: {format_bytes(result.bytes_stored)}")
    print(f"open the MLflow UI: {ui_command(store)}")
    return 0


def _sigterm_guard():
    """SIGTERM -> KeyboardInterrupt, so the open runs end KILLED (tracker's helper)."""
    from clusterprobe.tracker import tracking

    return tracking.handle_sigterm()
