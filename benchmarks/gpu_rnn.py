"""exact-rnn (exact Ward by reciprocal-nearest-neighbour rounds) on one GPU.

For a GPU machine that has torch, numpy and scipy but not mlflow/optuna/duckdb/faiss
(the checkout is mapped onto the ``clusterprobe`` namespace by the shim in
``checkout.py``; only ``clusterprobe.runners.engine`` is imported). Data as
``benchmarks/whole.py`` (hierarchical Gaussian blobs, L2-normalised, float32).
Prints one line per N (time, peak GPU memory, rounds, work, the merged fraction
per round; ``rnn_scaling.py``'s columns, with the peak GPU memory added) and, at
``--check-n``, the same points on the host CPU: identical merges and heights
within 1e-9 relative expected. Writes everything to ``--out`` as JSON.

    python benchmarks/gpu_rnn.py --out gpu_rnn.json                 # 100k, 1M, check at 100k
    python benchmarks/gpu_rnn.py --sizes 100000 --out gpu_rnn.json  # the short version
    python benchmarks/gpu_rnn.py --small --out /tmp/gpu_rnn.json    # CPU smoke test (< 1 min)

Not yet run on a GPU. Estimated for one H100/H200: ~2 N^2 (d + 2) fp32
multiply-adds at 1M x 512 (~1e15), so 1-3 minutes with the passes over each block;
the CPU check at 100k ~1 minute on 16 cores; the data ~10 s per million points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import install_shim  # noqa: E402

install_shim()  # the repo without a pip install
import numpy as np  # noqa: E402
import rnn_scaling  # noqa: E402
import torch  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def compare(z_dev: np.ndarray, z_cpu: np.ndarray, n: int) -> dict:
    """How far the device's tree is from the CPU's: rows whose merge differs, the
    largest relative height difference, and the partitions at a few cuts (AMI)."""
    from clusterprobe.runners.engine.metrics import ami
    from clusterprobe.runners.engine.ward import cut_tree

    differ = int((z_dev[:, :2] != z_cpu[:, :2]).any(axis=1).sum())
    rel = np.abs(z_dev[:, 2] - z_cpu[:, 2]) / np.maximum(np.abs(z_cpu[:, 2]), 1e-300)
    cuts = {c: float(ami(cut_tree(z_cpu, n, c), cut_tree(z_dev, n, c))) for c in (10, 100, 1000)}
    return {"rows_differ": differ, "max_rel_height": float(rel.max()), "ami_at_cuts": cuts}


def run_size(n: int, args, device: str, report: dict) -> None:
    x, _ = rnn_scaling.blobs(n, args.dim, args.seed)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    info = rnn_scaling.measure(x, device)
    z = info.pop("linkage")
    rnn_scaling.report(info)
    if device.startswith("cuda"):
        info["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        log(f"  peak GPU memory {info['peak_gpu_gb']:.2f} GB on {info['device']}")
    if n == args.check_n:
        cpu = rnn_scaling.measure(x, "cpu")
        info["cpu_time_s"] = cpu["time_s"]
        info["versus_cpu"] = compare(z, cpu.pop("linkage"), n)
        log(
            f"  CPU ({torch.get_num_threads()} threads): {cpu['time_s']:.1f} s; {info['versus_cpu']}"
        )
    report["sizes"].append(info)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="gpu_rnn.json")
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated N")
    p.add_argument("--check-n", type=int, default=100_000, help="N also run on the CPU")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--small", action="store_true", help="2,000 and 5,000 points on the CPU")
    args = p.parse_args(argv)
    if args.small:
        args.sizes, args.check_n = "2000,5000", 2000
        if args.device == "auto":
            args.device = "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from clusterprobe.runners.engine.rnn_ward import resolve_device

    device = resolve_device(args.device)
    report: dict = {"args": vars(args), "torch": torch.__version__, "device": device, "sizes": []}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(device)
    log(f"device {device} {report.get('gpu', '')}, torch {torch.__version__}, d={args.dim}")
    log(rnn_scaling.HEADER)
    for n in (int(s) for s in args.sizes.split(",")):
        run_size(n, args, device, report)
        Path(args.out).write_text(json.dumps(report, indent=1))  # keep what finished
    heavy = sorted(m for m in ("mlflow", "optuna", "duckdb", "faiss") if m in sys.modules)
    report["heavy_modules_imported"] = heavy
    Path(args.out).write_text(json.dumps(report, indent=1))
    log(f"wrote {args.out}; heavy modules imported: {heavy or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
