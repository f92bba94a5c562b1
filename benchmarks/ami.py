"""AMI + purity of whole-dataset partitions: ours vs scikit-learn on the same labels.

The whole-dataset protocol scores one partition per overclustering factor
against the subclass labels; at N = 10^6 that scoring, not the clustering, was
the slow part (10.5 s of 12.7 s on the GPU machine). This times
``metrics.contingency`` + ``ami_many`` + purity against
``sklearn.metrics.adjusted_mutual_info_score`` on identical labels and prints
both times, the ratio and the largest AMI difference.

    python benchmarks/ami.py                 # N = 1,000,000, 50 subclasses, factors 1..5
    python benchmarks/ami.py --n 200000 --subclasses 200
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from clusterprobe.runners.engine.metrics import ami_many, contingency, purity_from_table
from sklearn.metrics import adjusted_mutual_info_score


def partitions(n: int, n_sub: int, factors, noise: float, seed: int = 0):
    """Subclass labels and, per factor, a clustering that splits each subclass into
    `factor` parts and reassigns a `noise` fraction of points at random."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_sub, n)
    preds = []
    for f in factors:
        p = y * f + rng.integers(0, f, n)
        flip = rng.random(n) < noise
        p[flip] = rng.integers(0, n_sub * f, int(flip.sum()))
        preds.append(p)
    return y, preds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--subclasses", type=int, default=50)
    ap.add_argument("--factors", default="1,2,3,4,5")
    ap.add_argument("--noise", type=float, default=0.3)
    args = ap.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]
    y, preds = partitions(args.n, args.subclasses, factors, args.noise)
    print(f"N = {args.n:,}, {args.subclasses} subclasses, factors {factors}", flush=True)

    t0 = time.perf_counter()
    tables = [contingency(y, p) for p in preds]
    ours = ami_many(tables)
    purity = [purity_from_table(t) for t in tables]
    t_ours = time.perf_counter() - t0
    print(
        f"ours    : {t_ours:7.2f} s  AMI {np.round(ours, 4).tolist()}  purity "
        f"{np.round(purity, 4).tolist()}",
        flush=True,
    )

    t0 = time.perf_counter()
    ref = np.array([adjusted_mutual_info_score(y, p) for p in preds])
    t_ref = time.perf_counter() - t0
    print(f"sklearn : {t_ref:7.2f} s  (AMI only)", flush=True)
    print(
        f"ratio   : {t_ref / t_ours:7.1f}x  max |AMI ours - sklearn| = "
        f"{np.abs(ours - ref).max():.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
