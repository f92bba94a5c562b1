"""Whole-dataset clustering: our methods vs sklearn's full Ward, time / memory / AMI.

Data: hierarchical Gaussian blobs in d dimensions (``--supers`` super-blobs x
``--subs`` sub-blobs each; labels = sub-blob), L2-normalised as ``score`` does.
Every (N, method) runs in its own subprocess, so its peak memory (``ru_maxrss``,
whole process: interpreter, imports and data included) is its own; the timed
region is the clustering call alone (data generated before it). Labels come back
through a temporary .npy so AMI against full Ward (sklearn's, else our exact) is
computed here. ``time_s`` is wall time of the timed region, ``cpu_s`` its CPU
time (user + system, all threads): on a shared machine the wall time grows with
the load, the CPU time much less.

    python benchmarks/whole.py                        # 10k, 20k: everything (minutes)
    python benchmarks/whole.py --sizes 20000 --methods sklearn-ward,exact,exact-rnn,fastcluster
    python benchmarks/whole.py --sizes 100000 --methods exact-rnn,two-stage,kmeans
    python benchmarks/whole.py --sizes 5000 --methods exact,sklearn-ward,two-stage  # quick

Methods: ``sklearn-ward`` (the baseline: ``AgglomerativeClustering(linkage="ward")``,
refit per factor), ``fastcluster`` (``fastcluster.linkage_vector(X, "ward")``: exact
in O(N d) memory, single-threaded; a benchmark extra, ``pip install -e '.[bench]'``,
skipped with a message where absent; the tree cut at every factor), and
``score_whole``'s ``exact``, ``exact-rnn``, ``knn-ward``, ``two-stage``, ``kmeans``,
``auto``. sklearn's Ward runs only up to ``--full-ward-max`` points and ``exact`` up
to ``--exact-max`` (both need ~16 N^2/2 bytes: 3.2 GB at 20k), fastcluster up to
``--fastcluster-max`` (time ~N^2, one core). Exact-rnn's rounds and merged fractions:
``benchmarks/rnn_scaling.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from clusterprobe.runners.choices import WHOLE_METHODS

OURS = (*(m for m in WHOLE_METHODS if m != "auto"), "auto")  # exact, knn-ward, ..., auto
ALL = ("sklearn-ward", "fastcluster", *OURS)


def blobs(n, d, supers, subs, seed, spread):
    """float32 [n, d] unit rows and int labels; centres: super ~ N(0, s0^2 I),
    sub = super + N(0, s1^2 I), point = sub + N(0, s2^2 I)."""
    rng = np.random.default_rng(seed)
    s0, s1, s2 = spread
    sup = rng.standard_normal((supers, d), dtype=np.float32) * s0
    sub = (
        np.repeat(sup, subs, axis=0)
        + rng.standard_normal((supers * subs, d), dtype=np.float32) * s1
    )
    y = rng.integers(0, supers * subs, n)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):  # chunks: no float64 or full-size temporaries
        e = min(n, s + 65536)
        x[s:e] = sub[y[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32) * s2
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def worker(args) -> None:
    x, y = blobs(args.n, args.dim, args.supers, args.subs, args.seed, args.spread)
    factors = tuple(args.factors)
    n_sub = args.supers * args.subs
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.method == "sklearn-ward":
        from sklearn.cluster import AgglomerativeClustering

        labels = {
            f: AgglomerativeClustering(n_sub * f, linkage="ward").fit_predict(x) for f in factors
        }
        elapsed = time.perf_counter() - t0
        from sklearn.metrics import adjusted_mutual_info_score

        ami = {f: float(adjusted_mutual_info_score(y, labels[f])) for f in factors}
        params = {"algorithm": "sklearn AgglomerativeClustering(linkage='ward')"}
        timings = {}
    elif args.method == "fastcluster":
        labels, ami, params = fastcluster_ward(x, y, factors, n_sub)
        elapsed = time.perf_counter() - t0
        timings = {}
    else:
        from clusterprobe.runners.engine.whole import WholeOptions, score_whole

        options = WholeOptions(k=args.k, seed=args.seed, refine=args.refine)
        res = score_whole(x, y, factors, method=args.method, options=options)
        elapsed = time.perf_counter() - t0
        labels, ami, params, timings = res.labels, res.ami, res.params, res.timings
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    np.save(args.out + ".npy", np.stack([labels[f] for f in factors]).astype(np.int32))
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    info = {
        "time": elapsed,
        "cpu": cpu,
        "rss_gb": rss_gb,
        "ami": ami,
        "params": params,
        "timings": timings,
    }
    Path(args.out + ".json").write_text(json.dumps(info))


def fastcluster_ward(x, y, factors, n_sub):
    """fastcluster's memory-saving Ward (float64 input, as it requires), cut per factor."""
    import fastcluster
    from clusterprobe.runners.engine.metrics import ami as ami_score
    from clusterprobe.runners.engine.ward import cut_tree

    z = fastcluster.linkage_vector(np.asarray(x, dtype=np.float64), method="ward")
    labels = {f: cut_tree(z, x.shape[0], n_sub * f) for f in factors}
    ami = {f: float(ami_score(y, labels[f])) for f in factors}
    params = {"algorithm": f"fastcluster {fastcluster.__version__} linkage_vector(ward)"}
    return labels, ami, params


def run_one(n, method, args, tmp) -> dict | None:
    out = os.path.join(tmp, f"{method}-{n}")
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--method", method, "--out", out]
    cmd += ["--dim", str(args.dim), "--supers", str(args.supers), "--subs", str(args.subs)]
    cmd += ["--seed", str(args.seed), "--k", str(args.k), "--factors", *map(str, args.factors)]
    cmd += ["--spread", *map(str, args.spread), "--refine", str(args.refine)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {method} N={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    info = json.loads(Path(out + ".json").read_text())
    info["labels"] = np.load(out + ".npy")
    info["wall"] = time.perf_counter() - t0
    return info


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", default="10000,20000", help="comma-separated N (e.g. 10000,20000,50000,100000)"
    )
    p.add_argument("--methods", default=",".join(ALL), help=f"comma-separated, of {', '.join(ALL)}")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--supers", type=int, default=20)
    p.add_argument("--subs", type=int, default=5)
    p.add_argument(
        "--spread",
        type=float,
        nargs=3,
        default=[1.0, 0.35, 1.0],
        help="std of super centres, sub offsets, point noise (default 1 0.35 1)",
    )
    p.add_argument("--factors", type=int, nargs="+", default=[1])
    p.add_argument("--k", type=int, default=10, help="k-NN graph degree for knn-ward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--refine", type=int, default=0, help="Lloyd steps after our methods (default 0: Ward)"
    )
    p.add_argument("--full-ward-max", type=int, default=20000)
    p.add_argument("--exact-max", type=int, default=20000)
    p.add_argument("--fastcluster-max", type=int, default=20000)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p, p.parse_args(argv)


def main(argv=None) -> int:
    p, args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    bad = [m for m in methods if m not in ALL]
    if bad:
        p.error(f"unknown methods {bad}; use {', '.join(ALL)}")
    if "fastcluster" in methods and importlib.util.find_spec("fastcluster") is None:
        print("# fastcluster not installed (pip install -e '.[bench]'): its baseline is skipped")
        methods.remove("fastcluster")
    print(
        f"# d={args.dim}, {args.supers}x{args.subs} blobs, spread {args.spread}, factors {args.factors}, "
        f"{os.cpu_count()} CPUs, load avg at start {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'N':>7} {'method':<13} {'time_s':>8} {'cpu_s':>8} {'peak_GB':>8} {'AMI_labels':>10} "
        f"{'AMI_vs_full':>11} {'x_faster':>9}  how"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            res = {}
            for m in methods:
                if m == "sklearn-ward" and n > args.full_ward_max:
                    continue
                if m == "exact" and n > args.exact_max:
                    continue
                if m == "fastcluster" and n > args.fastcluster_max:
                    continue
                info = run_one(n, m, args, tmp)
                if info is not None:
                    res[m] = info
            report_size(n, res, args.factors[0])
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")
    return 0


def report_size(n: int, res: dict, f0: int) -> None:
    """One line per method at N = n (AMI at factor f0, against full Ward too), then the
    speed-ups over sklearn's full Ward when it ran."""
    from sklearn.metrics import adjusted_mutual_info_score

    ref_name = "sklearn-ward" if "sklearn-ward" in res else ("exact" if "exact" in res else None)
    base = res.get("sklearn-ward")
    for m, info in res.items():
        vs_full = (
            adjusted_mutual_info_score(res[ref_name]["labels"][0], info["labels"][0])
            if ref_name and m != ref_name
            else float("nan")
        )
        speed = base["time"] / info["time"] if base else float("nan")
        how = info["params"].get("algorithm", "")
        for key in (
            "backend",
            "device",
            "rounds",
            "micro_clusters",
            "k",
            "graph_components",
            "refine_steps",
        ):
            if key in info["params"]:
                how += f" {key}={info['params'][key]}"
        ami0 = info["ami"][str(f0)] if str(f0) in info["ami"] else info["ami"][f0]
        print(
            f"{n:>7} {m:<13} {info['time']:>8.2f} {info['cpu']:>8.2f} {info['rss_gb']:>8.2f} {ami0:>10.4f} "
            f"{vs_full:>11.4f} {speed:>9.1f}  {how}",
            flush=True,
        )
    if not base:
        return
    for m in ("exact", "exact-rnn", "fastcluster", "two-stage", "knn-ward"):
        if m in res:
            ami_m = res[m]["ami"][str(f0)]
            ami_b = base["ami"][str(f0)]
            print(
                f"# N={n}: {m} {base['time'] / res[m]['time']:.1f}x faster than sklearn full "
                f"Ward (CPU time {base['cpu'] / res[m]['cpu']:.1f}x less); AMI vs labels "
                f"{ami_m:.6f} vs {ami_b:.6f} (diff {ami_m - ami_b:+.2e})"
            )


if __name__ == "__main__":
    sys.exit(main())
