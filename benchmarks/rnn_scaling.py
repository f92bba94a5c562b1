"""exact-rnn's scaling: time, memory, rounds and the fraction merged per round, by N.

Data as ``benchmarks/whole.py`` (hierarchical Gaussian blobs, d = 512 by default,
L2-normalised). Each N runs ``rnn_ward`` in its own subprocess, so the peak
memory (``ru_maxrss``: interpreter, torch, data and all) is its own. Prints one
line per N (wall and CPU seconds, peak GB, rounds, work in units of N^2 rows x
rows, exact float64 costs per search, how many rounds took 50/90/99% of the
merges) and the merged fraction of every round, then fits ``time = a N^p`` and
prints the N where the fit reaches ``--limit-s`` seconds: ``auto``'s threshold
(``whole.RNN_MAX_POINTS``) at 600 s, the largest N in 15 minutes at 900 s.

    python benchmarks/rnn_scaling.py --sizes 1000,5000,20000        # minutes at most
    python benchmarks/rnn_scaling.py --sizes 20000,50000,100000     # the fit auto's threshold needs
    python benchmarks/rnn_scaling.py --sizes 20000,50000 --limit-s 900 --run-at-limit  # run the N the fit gives
    python benchmarks/rnn_scaling.py --sizes 2000 --device cpu --json out.json

Imports only the engine (and this folder's ``whole.blobs``), so
``benchmarks/gpu_rnn.py`` reuses it on a GPU machine without mlflow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def blobs(n, d, seed=0, supers=20, subs=5, spread=(1.0, 0.35, 1.0)):
    sys.path.insert(0, str(HERE))
    from whole import blobs as make

    return make(n, d, supers, subs, seed, spread)


def measure(x, device: str) -> dict:
    """One rnn_ward run: seconds and its round figures (JSON-ready). torch's import
    and first-call set-up (~1-3 s) are paid by a warm-up call before the clock starts."""
    from clusterprobe.runners.engine.rnn_ward import rnn_ward

    rnn_ward(x[:64], device=device)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = rnn_ward(x, device=device)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "n": int(x.shape[0]),
        "d": int(x.shape[1]),
        "device": res.device,
        "filter": res.filter,
        "time_s": wall,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "search_s": res.seconds["search"],
        "rounds": res.rounds,
        "work_n2": res.work(),
        "exact_per_search": res.exact_costs / max(1, int(res.searched.sum())),
        "fallbacks": res.fallbacks,
        "active": res.active.tolist(),
        "merged": res.merged.tolist(),
        "searched": res.searched.tolist(),
        "merged_fraction": [round(float(f), 4) for f in res.merged_fraction()],
        "linkage": res.linkage,  # dropped before JSON
    }


def worker(args) -> None:
    x, _ = blobs(args.n, args.dim, args.seed)
    info = measure(x, args.device)
    info.pop("linkage")
    info["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    Path(args.out).write_text(json.dumps(info))


def run_one(n: int, args, tmp: str, timeout: float | None = None) -> dict | None:
    out = os.path.join(tmp, f"rnn-{n}.json")
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--out", out]
    cmd += ["--dim", str(args.dim), "--seed", str(args.seed), "--device", args.device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"# N={n}: not finished in {timeout:.0f} s")
        return None
    if proc.returncode != 0:
        print(f"# N={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(Path(out).read_text())


def rounds_to(info: dict, share: float) -> int:
    """Rounds needed for ``share`` of all merges."""
    done = np.cumsum(info["merged"]) / max(1, info["n"] - 1)
    return int(np.searchsorted(done, share - 1e-12) + 1)


HEADER = (
    f"{'N':>8} {'time_s':>8} {'cpu_s':>8} {'peak_GB':>8} {'rounds':>6} {'work_N2':>7} "
    f"{'exact/srch':>10} {'r50%':>5} {'r90%':>5} {'r99%':>5}  merged fraction per round"
)


def report(info: dict) -> None:
    frac = info["merged_fraction"]
    head = " ".join(f"{f:.2f}" for f in frac[:12])
    rss = info.get("rss_gb", float("nan"))
    print(
        f"{info['n']:>8} {info['time_s']:>8.2f} {info['cpu_s']:>8.2f} {rss:>8.2f} "
        f"{info['rounds']:>6} {info['work_n2']:>7.2f} {info['exact_per_search']:>10.2f} "
        f"{rounds_to(info, 0.5):>5} {rounds_to(info, 0.9):>5} {rounds_to(info, 0.99):>5}  "
        f"{head}{' ...' if len(frac) > 12 else ''}",
        flush=True,
    )


def fit(results: list[dict], limit_s: float) -> tuple[float, float, int] | None:
    """(a, p, N at limit_s) of time = a N^p by least squares in log-log; None for < 2 sizes."""
    pts = [(r["n"], r["time_s"]) for r in results if r]
    if len(pts) < 2:
        return None
    ln = np.log([p[0] for p in pts])
    lt = np.log([p[1] for p in pts])
    p, log_a = np.polyfit(ln, lt, 1)
    n_at = math.exp((math.log(limit_s) - log_a) / p)
    return math.exp(log_a), float(p), int(round(n_at, -3))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="1000,5000,20000", help="comma-separated N")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--limit-s", type=float, default=600.0, help="the time the fit solves for")
    p.add_argument(
        "--run-at-limit", action="store_true", help="then run the N the fit gives (timeout 1.5x)"
    )
    p.add_argument("--json", help="write every size's figures (all rounds) here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"# exact-rnn, d={args.dim}, device {args.device}, {os.cpu_count()} CPUs, "
        f"load avg at start {os.getloadavg()[0]:.1f}"
    )
    print(HEADER)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            info = run_one(n, args, tmp)
            if info:
                report(info)
                results.append(info)
        got = fit(results, args.limit_s)
        if got:
            a, p, n_at = got
            print(
                f"# fit: time = {a:.3g} * N^{p:.2f} s; reaches {args.limit_s:.0f} s at N ~ {n_at}"
            )
            if args.run_at_limit:
                info = run_one(n_at, args, tmp, timeout=1.5 * args.limit_s)
                if info:
                    report(info)
                    results.append(info)
                    verdict = "within" if info["time_s"] <= args.limit_s else "past"
                    print(f"# N={n_at}: {info['time_s']:.0f} s, {verdict} {args.limit_s:.0f} s")
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
