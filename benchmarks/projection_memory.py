"""Peak memory of the projected probe input on ResNet-50-sized layers, against pooled features.

Streams ``--images`` random 224 px images through a random-init timm ``resnet50`` (16
bottleneck taps; 5.5M flattened values per image in all) in batches, once reducing each
tap to pooled features and once projecting each tap's flattened batch to ``--dim``
features (``engine.projection``), each in its own process so that each peak RSS is its
own. Prints both peaks, the matrices' size, and what the flattened features of those
images would take if held whole.

    python benchmarks/projection_memory.py --threads 1
    python benchmarks/projection_memory.py --threads 1 --images 256 --dim 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(mode: str, images: int, batch: int, dim: int, size: int) -> dict:
    import torch
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.engine.embed import pooled_features
    from clusterprobe.runners.engine.projection import Projector
    from clusterprobe.runners.models import create_model, layer_taps

    config = RunConfig(arch="resnet50")
    model = create_model(config, 1000, size).eval()
    taps = layer_taps(model, config)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(images, 3, size, size, generator=gen), torch.zeros(images, dtype=torch.long)
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    projector = Projector(dim, seed=0) if mode == "projected" else None
    t0 = time.perf_counter()
    out = pooled_features(model, taps, data, device="cpu", batch_size=batch, reduce=projector)
    seconds = time.perf_counter() - t0
    flat_values = 0
    with torch.no_grad():  # the flattened width of every tap, from one image
        widths: dict[int, int] = {}
        handles = [
            t.module.register_forward_hook(
                lambda m, i, o, k=t.index: widths.update({k: o[0].numel()})
            )
            for t in taps
        ]
        model(data[0][0][None])
        for h in handles:
            h.remove()
        flat_values = sum(widths.values())
    return {
        "mode": mode,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_pass_mb": before / 2**20,
        "seconds": round(seconds, 1),
        "features_kept_mb": sum(o.nbytes for o in out) / 2**20,
        "matrices_mb": (projector.nbytes() / 2**20) if projector else 0.0,
        "flattened_whole_mb": images * flat_values * 4 / 2**20,
        "widest_tap": max(widths.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mode", choices=("pooled", "projected"), default=None, help="(internal)")
    args = parser.parse_args()
    if args.mode:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = one(args.mode, args.images, args.batch_size, args.dim, args.image_size)
        print(json.dumps(res))
        return 0
    rows = []
    for mode in ("pooled", "projected"):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(
            f"{r['mode']:9s} peak RSS {r['peak_rss_mb']:.0f} MB (model and images loaded: "
            f"{r['rss_before_pass_mb']:.0f} MB), {r['seconds']} s, features kept "
            f"{r['features_kept_mb']:.1f} MB, matrices {r['matrices_mb']:.1f} MB"
        )
    pooled, projected = rows
    print(
        f"resnet50 {args.image_size} px, {args.images} images, batch {args.batch_size}, dim "
        f"{args.dim}: the flattened features held whole would take "
        f"{projected['flattened_whole_mb']:.0f} MB (widest tap {projected['widest_tap']:,} "
        f"values); projected peak - pooled peak = "
        f"{projected['peak_rss_mb'] - pooled['peak_rss_mb']:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
