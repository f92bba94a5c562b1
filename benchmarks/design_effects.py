"""Which design choices matter most: a small factorial on the built-in data, ranked by
the `design_effects` query.

Trains and records one `clusterprobe run` per cell of the factorial (in this process,
through `pipeline.run`, into one store), then prints the canned query's ranking:
for each choice, the mean difference of best-layer AMI (factor 1) between matched
pairs of runs one choice apart (same seed, every other choice equal), its 95%
interval and n.

    python benchmarks/design_effects.py --threads 1                 # 2 x 2 x 2 x 2 seeds, --quick
    python benchmarks/design_effects.py --store bench/mlruns --seeds 0 1 2
    python benchmarks/design_effects.py --epochs 1 --train-per-subclass 10 \\
        --eval-per-subclass 8 --seeds 0                             # a check of the script

Default factorial: arch (resnet18, vit_tiny_patch16_224) x hierarchy (natural,
shuffled) x training labels (superclass, subclass), seeds 0 and 1, the `--quick`
preset: 16 runs of about 30 s each on 2 quiet CPU cores. ``--third NAME=V1,V2``
swaps the third choice for another RunConfig field (e.g. ``lr=0.1,0.4``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time

import pandas as pd
from clusterprobe.queries.canned import query_df
from clusterprobe.queries.connect import connect
from clusterprobe.runners import pipeline
from clusterprobe.runners.config import PRESETS, RunConfig
from clusterprobe.tracker.schema import prepare_store
from clusterprobe.tracker.store import local_store

SIZES = ("epochs", "train_per_subclass", "eval_per_subclass", "probe_per_subclass")


def _field_value(name: str, text: str):
    """``text`` as the type of RunConfig field ``name`` (for --third)."""
    field = {f.name: f for f in dataclasses.fields(RunConfig)}.get(name)
    if field is None:
        raise SystemExit(f"--third {name}=...: not a RunConfig field")
    default = field.default
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    return type(default)(text) if default is not None else int(text)


def factorial(args) -> list[RunConfig]:
    base = RunConfig(**PRESETS["quick"], save=(), device="cpu")
    base = base.replace(**{k: getattr(args, k) for k in SIZES if getattr(args, k) is not None})
    name, _, values = args.third.partition("=")
    levels = [_field_value(name, v) for v in values.split(",")]
    cells = itertools.product(args.archs, (False, True), levels, args.seeds)
    return [
        base.replace(arch=arch, shuffled=shuffled, seed=seed, **{name: level})
        for arch, shuffled, level, seed in cells
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None, help="store folder (default: a temporary one)")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "vit_tiny_patch16_224"])
    parser.add_argument("--third", default="labels=superclass,subclass", metavar="NAME=V1,V2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for name in SIZES:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    configs = factorial(args)
    folder = args.store or tempfile.mkdtemp(prefix="design-effects-")
    store = local_store(folder)
    prepare_store(store)
    print(f"# {len(configs)} runs into {store.root}", file=sys.stderr)
    t_all = time.perf_counter()
    for i, config in enumerate(configs, start=1):
        t0 = time.perf_counter()
        result = pipeline.run(config, store, quiet=True)
        print(
            f"# run {i}/{len(configs)}: {config.arch} shuffled={config.shuffled} "
            f"{args.third.partition('=')[0]}={getattr(config, args.third.partition('=')[0])} "
            f"seed={config.seed}: best AMI {result.summary['best_ami']:.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    print(f"# all runs: {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    with connect(store.root) as analysis:
        ranking = query_df(analysis, "design_effects")
    cols = ["rank", "choice", "level_a", "level_b", "mean_diff", "ci_lo", "ci_hi", "n"]
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(ranking[cols].to_string(index=False, float_format=lambda x: f"{x:+.3f}"))
    print(f"# the same: clusterprobe query design_effects --store {store.root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
