"""`clusterprobe score EMB.npz`: cluster your own embeddings with the paper's protocol.

The .npz holds ``features`` (N x ... floats; flattened and L2-normalised here),
``superclass`` (N ints) and ``subclass`` (N ints). Inside each superclass, Ward
into #subclasses x factor clusters; AMI and purity per superclass and averaged.
``--whole`` clusters all N points at once (no superclass needed) with
``runners.engine.whole``. stdout carries only the JSON; progress and the summary go
to stderr. No torch or mlflow import on this path.

Everything that can be wrong with the file is found before any clustering starts
and reported as a usage error (one line, exit 2); an error of the clustering itself
is a crash (one line ``clusterprobe score: failed: Type: message``, exit 1).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from clusterprobe.runners.choices import WHOLE_METHODS
from clusterprobe.runners.config import parse_factors
from clusterprobe.tracker.errors import UsageError, error_line

EXIT_CRASH = 1


def add_arguments(parser) -> None:
    parser.add_argument("npz", metavar="EMB.npz", help="features, superclass, subclass arrays")
    parser.add_argument(
        "--factors", default="1-5", metavar="SPEC", help="overclustering factors, e.g. 1-5 or 1,3"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the JSON result to this file")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="cluster the whole file at once (no superclass), #subclasses x factor clusters",
    )
    parser.add_argument(
        "--method",
        default="auto",
        choices=WHOLE_METHODS,
        help="whole-dataset algorithm (with --whole; default auto)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel workers (default: cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")


def main(args) -> int:
    factors = parse_factors(args.factors)
    if args.method != "auto" and not args.whole:
        raise UsageError(f"--method {args.method!r} applies to --whole only; add --whole")
    if args.json:
        out_dir = Path(args.json).resolve().parent
        if not out_dir.is_dir():
            raise UsageError(f"--json {args.json}: folder {out_dir} does not exist")
    t0 = time.perf_counter()
    try:
        checked = _read(args)
    except (ValueError, TypeError) as err:  # the file's fault: a usage error
        raise UsageError(str(err)) from None
    if not args.whole:
        _warn_undersized(checked[1], factors)
    try:
        result = _score(checked, factors, args)
    except Exception as err:  # the input was fine, so this is ours: a crash, in one line
        print(f"clusterprobe score: failed: {error_line(err)}", file=sys.stderr)
        return EXIT_CRASH
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    _summary(args, result, time.perf_counter() - t0)
    return 0


def _read(args) -> tuple:
    """Read and check the file; ValueError/TypeError name what is wrong with it.

    Returns what the clustering needs and can no longer refuse: with ``--whole``
    the L2-normalised rows and the subclass labels, otherwise every superclass's
    unit Gram matrix and subclass labels (NaN/Inf show on the Grams' diagonals, so
    the per-superclass path needs no extra pass over the file to find them).
    """
    from clusterprobe.runners.engine import score

    features, superclass, subclass = score.load_npz(
        args.npz, need_superclass=not args.whole, check_finite=args.whole
    )
    _log(args, f"loaded {features.shape[0]} x {features.shape[1]} features from {args.npz}")
    if args.whole:
        from clusterprobe.runners.engine.whole import check_features

        return check_features(score.unit_rows(features)), subclass
    return score.superclass_grams(
        features, superclass, subclass, n_jobs=args.jobs, progress=not args.quiet
    )


def _score(checked: tuple, factors: tuple[int, ...], args) -> dict:
    """The JSON result of the checked input."""
    if args.whole:
        from clusterprobe.runners.engine.whole import WholeOptions, score_whole

        x, subclass = checked
        res = score_whole(
            x, subclass, factors, method=args.method, options=WholeOptions(quiet=args.quiet)
        )
        return {
            "ami": {str(f): float(res.ami[f]) for f in sorted(res.ami)},
            "purity": {str(f): float(res.purity[f]) for f in sorted(res.purity)},
            "per_superclass": [],
            "params": {str(k): str(v) for k, v in res.params.items()},
        }
    from clusterprobe.runners.engine.cluster import cluster_protocol
    from clusterprobe.runners.engine.score import result_json

    grams, subclass = checked
    return result_json(cluster_protocol(grams, subclass, factors, n_jobs=args.jobs))


def _warn_undersized(subclass: dict, factors: tuple[int, ...]) -> None:
    """One line per superclass too small for its clusters (shown even with --quiet)."""
    from clusterprobe.runners.engine.score import undersized_superclasses

    for s, rows, clusters in undersized_superclasses(subclass, factors):
        print(
            f"clusterprobe score: warning: superclass {s} has {rows} row(s) for its "
            f"{clusters} clusters at factor {max(factors)}: one row per cluster, so its AMI "
            "and purity mean nothing (give more rows per superclass or lower --factors)",
            file=sys.stderr,
        )


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _summary(args, result: dict, seconds: float) -> None:
    if args.quiet:
        return
    lines = ["factor    AMI   purity"]
    for f, a in result["ami"].items():
        lines.append(f"{f:>6}  {a:6.4f}  {result['purity'][f]:6.4f}")
    where = f" (also in {args.json})" if args.json else ""
    lines.append(f"scored in {seconds:.2f} s{where}")
    print("\n".join(lines), file=sys.stderr, flush=True)
