"""`clusterprobe eval`: measure a model you already have (a stored checkpoint, a weights
file, or timm's pretrained weights) and record it as an eval run (``runners.evaluate``).

Thin edge: check which source the flags name, gather the data and measurement flags
given, call ``evaluate``, print the per-layer table, the model's own accuracy and the
run ids. ``--taps list`` prints the model's taps instead (``runners.taplist``).
Bad input is one line and exit 2 with nothing stored; a failure once the eval run
is open ends it FAILED (one line, exit 1).
"""

from __future__ import annotations

import argparse
import sys

from clusterprobe.runners import choices
from clusterprobe.runners.data.cli_args import add_data_arguments, data_config_kwargs
from clusterprobe.tracker.errors import UsageError, error_line, interrupted_exit

EXIT_CRASH = 1
MEASURE_FLAGS = (
    "taps",
    "precision",
    "batch_size",
    "probe_per_subclass",
    "probe_features",
    "probe_dim",
    "device",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    s = parser.add_argument_group(
        "the model: --from RUN_ID, --weights FILE --arch NAME, or --pretrained NAME"
    )
    s.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_ID",
        help="a train run of the store: its final checkpoint, on its own eval set by default",
    )
    s.add_argument(
        "--epoch", type=int, default=None, help="with --from: the checkpoint saved at epoch N"
    )
    s.add_argument(
        "--weights",
        metavar="FILE",
        help="a state dict: .safetensors, or .pt/.pth/.bin (torch.load, weights_only=True)",
    )
    s.add_argument(
        "--pretrained",
        metavar="NAME",
        help="timm's pretrained weights (e.g. resnet50.a1_in1k) from the Hugging Face cache; "
        "--download fetches them when missing",
    )
    s.add_argument(
        "--arch",
        default=None,
        help="with --weights: the timm model they are for (any timm name; alone: --taps list)",
    )
    s.add_argument("--stem", default=None, choices=choices.STEMS, help="with --weights (ResNets)")
    s.add_argument("--norm", default=None, choices=choices.NORMS, help="with --weights (VGG)")
    s.add_argument(
        "--pool",
        default=None,
        choices=choices.POOLS,
        help="with --weights (ViT): the pooling the weights were trained with (cls | gap)",
    )
    add_data_arguments(parser)
    m = parser.add_argument_group("measurement (default: the train run's, else run's defaults)")
    m.add_argument(
        "--taps",
        default=None,
        choices=(*choices.TAPS, choices.TAPS_LIST),
        help="blocks (default) or stages; 'list' prints the model's taps and stores nothing",
    )
    m.add_argument("--factors", default=None, metavar="SPEC", help="e.g. 1-5 (default)")
    m.add_argument(
        "--precision",
        default=None,
        choices=choices.PRECISIONS,
        help="forward pass and Grams: fp32 (default), bf16, or fp64 (exact references)",
    )
    m.add_argument("--batch-size", type=int, default=None)
    m.add_argument("--probe-per-subclass", type=int, default=None, metavar="N")
    m.add_argument(
        "--probe-features",
        default=None,
        choices=choices.PROBE_FEATURES,
        help="linear probe input: pooled (default) or projected (flattened, sparse projection)",
    )
    m.add_argument("--probe-dim", type=int, default=None, help="projected probe dimension")
    m.add_argument(
        "--save",
        default=None,
        metavar="LIST",
        help="embeddings,distances,plots (default), 'all' or 'none'",
    )
    m.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    m.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


ONE_MODEL = "give one model: --from RUN_ID, --weights FILE --arch NAME, or --pretrained NAME"


def _check_source_flags(args: argparse.Namespace) -> None:
    if sum(map(bool, (args.from_run, args.weights, args.pretrained))) != 1:
        raise UsageError(ONE_MODEL)
    if args.epoch is not None and not args.from_run:
        raise UsageError("--epoch goes with --from RUN_ID (a train run's checkpoints)")
    flags = [f"--{n}" for n in ("arch", "stem", "norm", "pool") if getattr(args, n) is not None]
    whose = "a train run's" if args.from_run else "timm's pretrained" if args.pretrained else ""
    if whose and flags:
        raise UsageError(f"{', '.join(flags)}: {whose} model is its own; they go with --weights")
    if args.weights and args.arch is None:
        raise UsageError("--weights needs --arch NAME: the timm model the weights are for")


def _tap_list(args: argparse.Namespace, data_flags: dict, flags: dict) -> str:
    """The taps of the model named by --arch or --pretrained (no weights read, no store)."""
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.evaluate import eval_config
    from clusterprobe.runners.taplist import format_taps

    arch = args.pretrained or args.arch
    if not arch:
        raise UsageError("--taps list: name the model with --arch NAME or --pretrained NAME")
    base = RunConfig(
        arch=arch,
        stem=args.stem or "standard",
        norm=args.norm or "default",
        pool=args.pool or "default",
        preprocess="model",
    )
    flags = {k: v for k, v in flags.items() if k != "taps"}
    return format_taps(eval_config(base, data_flags, flags).validate())


def measure_flags(args: argparse.Namespace) -> dict:
    """RunConfig measurement fields given on the command line."""
    from clusterprobe.runners.config import parse_factors, parse_save

    out = {k: getattr(args, k) for k in MEASURE_FLAGS if getattr(args, k) is not None}
    for name in ("batch_size", "probe_per_subclass"):
        if name in out and out[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} {out[name]}: must be >= 1")
    if args.factors is not None:
        out["factors"] = parse_factors(args.factors)
    if args.save is not None:
        out["save"] = parse_save(args.save)
    return out


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners import sources
    from clusterprobe.runners.evalrun import format_layers
    from clusterprobe.runners.evaluate import evaluate
    from clusterprobe.runners.weights import read_weights
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker, handle_sigterm

    data_flags, flags = data_config_kwargs(args), measure_flags(args)
    if args.taps == choices.TAPS_LIST:
        print(_tap_list(args, data_flags, flags))
        return 0
    _check_source_flags(args)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: give a number of threads >= 1")
    # Files are found and read before the store is opened: a bad one touches nothing,
    # and a missing pretrained file is reported at once.
    if args.weights:
        source = sources.WeightsSource(
            read_weights(args.weights),
            args.arch,
            args.stem or "standard",
            args.norm or "default",
            args.pool or "default",
        )
    elif args.pretrained:
        source = sources.PretrainedSource(args.pretrained, bool(data_flags.get("download")))
    tracker = Tracker(store_from_args(args))
    if args.from_run:
        source = sources.TrainRunSource(tracker, args.from_run, args.epoch)
    from clusterprobe.runners.threads import apply_threads

    apply_threads(args.threads)

    opened: list[str] = []
    try:
        with handle_sigterm():
            result = evaluate(
                tracker,
                source,
                data_flags=data_flags,
                measure_flags=flags,
                quiet=args.quiet,
                on_start=opened.append,
            )
    except UsageError as err:
        if not opened:
            raise  # bad input, found before the eval run existed: one line, exit 2
        print(f"clusterprobe eval: failed: {error_line(err)}", file=sys.stderr)
        return EXIT_CRASH
    except KeyboardInterrupt as err:
        print("clusterprobe eval: interrupted; the run was marked KILLED", file=sys.stderr)
        return interrupted_exit(err)
    except Exception as err:  # one line; the eval run is already marked FAILED
        print(f"clusterprobe eval: failed: {error_line(err)}", file=sys.stderr)
        return EXIT_CRASH

    print(format_layers(result.scores.rows()))
    s = result.summary
    print(
        f"\nbest layer {int(s['best_layer'])} (AMI f1 {s['best_ami']:.3f}); "
        f"best probe acc {s.get('best_probe_acc', float('nan')):.3f}; "
        f"raw pixels AMI f1 {s.get('pixel_ami_f1', float('nan')):.3f}"
    )
    for note in result.notes:
        print(note)
    if "test_acc" in s:
        print(f"test_acc {s['test_acc']:.3f}")
    parent = "train" if result.source == "trained" else "model"
    print(f"eval run: {result.run_id} (nested under {parent} run {result.parent_run_id})")
    return 0
