"""What keeping large freed blocks (``runners/allocator.py``) does to a 224 px CPU model.

Times a timm model's training step (forward, cross-entropy, backward, SGD) and its
inference forward pass on fixed random batches, each mode in a fresh process (the
allocator setting is process-wide and cannot be undone): ``plain`` (glibc's defaults:
blocks above 32 MB unmapped on free) against ``keep`` (what the CLI sets), alternating,
best of ``--repeats`` per mode. Prints ms per step, minor page faults per step and peak
RSS of each, and the ratio plain / keep.

    python benchmarks/allocator.py                       # resnet50, 224 px, batch 32
    python benchmarks/allocator.py --arch resnet18 --batch-size 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from checkout import install_shim  # this folder: the repo without a pip install


def worker(args: argparse.Namespace) -> dict:
    install_shim()
    import timm
    import torch
    from clusterprobe.runners.allocator import keep_large_blocks

    kept = keep_large_blocks() if args.worker == "keep" else False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.arch, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch_size,))

    def train_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def forward():
        with torch.no_grad():
            model(x)

    def timed(step) -> tuple[float, float]:
        step()  # warm-up: the heap grows to its working size
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - t0) / args.steps
        return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps

    model.train()
    train_s, train_faults = timed(train_step)
    model.eval()
    fwd_s, fwd_faults = timed(forward)
    return {
        "kept": kept,
        "train_ms": 1e3 * train_s,
        "train_faults": train_faults,
        "forward_ms": 1e3 * fwd_s,
        "forward_faults": fwd_faults,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode and repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--worker", choices=("plain", "keep"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for mode in ("plain", "keep"):
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--worker", mode],
                capture_output=True,
                text=True,
                check=True,
            )
            got = json.loads(out.stdout.splitlines()[-1])
            if mode not in best or got["train_ms"] < best[mode]["train_ms"]:
                best[mode] = got
    print(
        f"{args.arch}, {args.size} px, batch {args.batch_size}, "
        f"{best['keep']['threads']} thread(s), best of {args.repeats} x {args.steps} steps"
    )
    print(
        f"{'mode':>6} {'train ms':>9} {'faults':>9} {'forward ms':>11} {'faults':>9} {'peak RSS':>9}"
    )
    for mode, r in best.items():
        print(
            f"{mode:>6} {r['train_ms']:>9.0f} {r['train_faults']:>9.0f} {r['forward_ms']:>11.0f} "
            f"{r['forward_faults']:>9.0f} {r['peak_rss_mb']:>7.0f} MB"
        )
    plain, keep = best["plain"], best["keep"]
    print(
        f"plain / keep: training step {plain['train_ms'] / keep['train_ms']:.2f}x, "
        f"forward pass {plain['forward_ms'] / keep['forward_ms']:.2f}x "
        f"(keep's setting accepted: {keep['kept']})"
    )


if __name__ == "__main__":
    main()
