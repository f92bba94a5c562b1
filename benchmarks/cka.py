"""What layer x layer CKA adds to a `clusterprobe run` eval: its time beside the clustering.

Every eval of `clusterprobe run` computes CKA between all its layers from the
per-superclass Grams the protocol already built. This times ``engine.cka`` (linear
and debiased) and, on the same Grams, the per-superclass Ward + AMI protocol that
every eval runs anyway, and prints both times and their ratio. Defaults: the default
run's shape (8 superclasses x 200 eval images, resnet18's 8 blocks, factors 1..5).

    python benchmarks/cka.py
    python benchmarks/cka.py --superclasses 13 --images 1000 --layers 16   # entity13, ResNet-50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from clusterprobe.runners.engine.cka import cka_by_superclass
from clusterprobe.runners.engine.cluster import cluster_protocol


def grams(superclasses: int, images: int, layers: int, dim: int = 256, seed: int = 0):
    """Per superclass [L, n, n] Grams of unit vectors (4 subclass blobs) and the labels."""
    rng = np.random.default_rng(seed)
    out, labels = {}, {}
    for s in range(superclasses):
        sub = rng.integers(0, 4, images)
        centres = rng.normal(size=(4, dim))
        g = []
        for _ in range(layers):
            x = centres[sub] + rng.normal(size=(images, dim)) * 2.0
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            g.append(x @ x.T)
        out[s], labels[s] = np.stack(g).astype(np.float32), sub
    return out, labels


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--superclasses", type=int, default=8)
    ap.add_argument("--images", type=int, default=200, help="eval images per superclass")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    g, sub = grams(args.superclasses, args.images, args.layers)
    print(f"{args.superclasses} superclasses x {args.images} images, {args.layers} layers")
    t_cluster = best_of(lambda: cluster_protocol(g, sub, (1, 2, 3, 4, 5)), args.repeats)
    print(f"Ward + AMI/purity, factors 1..5: {t_cluster * 1000:8.1f} ms")
    for estimator in ("linear", "debiased"):
        t = best_of(lambda e=estimator: cka_by_superclass(g, estimator=e), args.repeats)
        print(
            f"{estimator:8s} CKA, {args.layers}^2 pairs : {t * 1000:8.1f} ms "
            f"({t / t_cluster:.1%} of the clustering)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
