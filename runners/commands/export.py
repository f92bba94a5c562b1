"""`clusterprobe export RUN_ID --layer L --out EMB.npz`: one layer's pooled embeddings.

Writes ``clusterprobe score``'s input format: ``features`` [N, C] float32,
``superclass`` and ``subclass`` int64 [N], in eval-split order, so that
``clusterprobe score EMB.npz`` re-clusters them (per superclass) with the same engine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from clusterprobe.tracker.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument("run_id", metavar="RUN_ID", help="a stored eval run")
    parser.add_argument(
        "--layer",
        required=True,
        metavar="L",
        help="layer index (0..L-1, negative counts from the end) or name",
    )
    parser.add_argument("--out", required=True, metavar="EMB.npz", help="file to write")
    add_store_arguments(parser)


def resolve_layer(spec: str, names: list[str]) -> int:
    try:
        index = int(spec)
    except ValueError:
        if spec in names:
            return names.index(spec)
        raise UsageError(
            f"--layer {spec!r}: not a layer index or name; "
            f"valid: 0..{len(names) - 1} or {', '.join(names)}"
        ) from None
    if not -len(names) <= index < len(names):
        raise UsageError(f"--layer {spec}: valid indices are 0..{len(names) - 1}")
    return index % len(names)


def export(tracker, run_id: str, layer: str, out: str | os.PathLike) -> dict:
    """Write the npz; returns {path, layer, name, shape}."""
    from clusterprobe.runners.commands.rescore import layer_names, load_pooled, open_eval_run

    open_eval_run(tracker, run_id)
    names = layer_names(tracker, run_id)
    index = resolve_layer(str(layer), names)
    stored = load_pooled(tracker, run_id, layers=[index])
    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"--out {str(out)!r}: give a file name ending in .npz")
    if not out.parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    features = np.asarray(stored.pooled[0], dtype=np.float32)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, features=features, superclass=stored.superclass, subclass=stored.subclass)
    os.replace(tmp, out)  # never leave a half-written file under the asked name
    return {"path": str(out), "layer": index, "name": names[index], "shape": features.shape}


def main(args: argparse.Namespace) -> int:
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    info = export(Tracker(store_from_args(args)), args.run_id, args.layer, args.out)
    n, c = info["shape"]
    print(
        f"wrote {info['path']}: layer {info['layer']} ({info['name']}), {n} images x {c} features",
        file=sys.stderr,
    )
    return 0
