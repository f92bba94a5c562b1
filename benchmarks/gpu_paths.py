"""CUDA code paths of the runners, checked against the CPU on the same inputs.

For a GPU machine that has torch, timm, numpy, scipy and scikit-learn but not
mlflow/optuna/duckdb/faiss (the repo is mapped onto the ``clusterprobe``
namespace by the shim in ``checkout.py``). Checks, printing one line
each and a JSON summary (``--out``):

- training on CUDA (bf16 autocast, channels_last) on the built-in synthetic data:
  loss falls, accuracy rises, img/s;
- embed_eval on CUDA (fp32 and bf16) against the CPU's fp32 Grams, and the
  per-superclass AMI each gives;
- exact k-NN through torch on CUDA against the CPU path, and torch k-means on CUDA;
- the decoded-image cache's batch augmentation on CUDA against the CPU's uint8 kernel
  (same crop boxes), and the img/s of each.

    python benchmarks/gpu_paths.py --out gpu_paths.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import install_shim  # noqa: E402

install_shim()  # the repo without a pip install
import numpy as np  # noqa: E402
import torch  # noqa: E402
from clusterprobe.runners.config import RunConfig  # noqa: E402
from clusterprobe.runners.data.synthetic import load  # noqa: E402
from clusterprobe.runners.engine.cluster import cluster_protocol  # noqa: E402
from clusterprobe.runners.engine.embed import embed_eval  # noqa: E402
from clusterprobe.runners.models import create_model, layer_taps  # noqa: E402
from clusterprobe.runners.train import train  # noqa: E402
from timing import sync  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def check_train(device, report, config: RunConfig) -> torch.nn.Module:
    data = load(config)
    model = create_model(config, data.num_superclasses)
    t0 = time.perf_counter()
    history = train(model, data, config, device, quiet=True)
    sync(device)
    dt = time.perf_counter() - t0
    imgs = len(data.train) * config.epochs
    report["train"] = dict(
        seconds=dt,
        img_per_s=imgs / dt,
        loss=[h["train_loss"] for h in history],
        acc=[h["train_acc"] for h in history],
    )
    log(
        f"train (cuda, bf16): {config.epochs} epochs of {len(data.train)} images in {dt:.1f} s "
        f"({imgs / dt:.0f} img/s); loss {history[0]['train_loss']:.3f} -> "
        f"{history[-1]['train_loss']:.3f}, acc {history[0]['train_acc']:.3f} -> "
        f"{history[-1]['train_acc']:.3f}"
    )
    return model, config, data


def check_embed(model, config, data, device, report) -> None:
    taps_for = lambda m: layer_taps(m, config)  # noqa: E731
    out = {}
    embs = {}
    for name, dev, precision in (
        ("cpu_fp32", "cpu", "fp32"),
        ("cuda_fp32", device, "fp32"),
        ("cuda_bf16", device, "bf16"),
    ):
        model.to(dev)
        t0 = time.perf_counter()
        emb = embed_eval(
            model,
            taps_for(model),
            data.eval,
            data.eval_labels,
            device=dev,
            precision=precision,
            quiet=True,
        )
        out[f"{name}_s"] = time.perf_counter() - t0
        embs[name] = emb
    ref = embs["cpu_fp32"]
    sub = {s: data.eval_labels.subclass[idx] for s, idx in ref.eval_index.items()}
    ami_ref = cluster_protocol(ref.grams, sub).mean_ami()
    for name in ("cuda_fp32", "cuda_bf16"):
        emb = embs[name]
        diff = max(float(np.abs(emb.grams[s] - ref.grams[s]).max()) for s in ref.grams)
        ami = cluster_protocol(emb.grams, sub).mean_ami()
        out[f"{name}_gram_max_abs_diff"] = diff
        out[f"{name}_ami_max_abs_diff"] = float(np.abs(ami - ami_ref).max())
        log(
            f"embed {name}: Gram max |diff| vs cpu fp32 {diff:.2e}; "
            f"mean AMI max |diff| {out[f'{name}_ami_max_abs_diff']:.4f}"
        )
    out["best_ami_f1_cpu"] = float(ami_ref[:, 0].max())
    report["embed"] = out


def check_neighbors(device, report) -> None:
    from clusterprobe.runners.engine import neighbors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 128)).astype(np.float32)
    _, idx_gpu = neighbors.knn(x, 10, backend="torch")
    xt = torch.from_numpy(x)
    d2 = (xt * xt).sum(1, keepdim=True) - 2 * xt @ xt.T + (xt * xt).sum(1)
    d2.fill_diagonal_(float("inf"))
    idx_ref = d2.topk(10, largest=False).indices.numpy()
    agree = float(np.mean(np.sort(idx_gpu, 1) == np.sort(idx_ref, 1)))
    km = neighbors.kmeans(x, 200, backend="torch", seed=0)
    report["neighbors"] = dict(
        knn_index_agreement=agree, kmeans_backend=km.backend, kmeans_inertia=float(km.inertia)
    )
    log(
        f"knn torch-cuda vs cpu brute force: {agree:.4f} of neighbour ids equal; "
        f"kmeans backend {km.backend}"
    )


def check_batch_augment(device, report, n: int = 256) -> None:
    """The decoded-image cache's training path on ``device``: the uint8 squares moved there
    and augmented as a batch (float pixels off the CPU) against the CPU's uint8 kernel on
    the same crop boxes, and the img/s of both."""
    from clusterprobe.runners.data import batch_augment as ba
    from clusterprobe.runners.data.transforms import PaperAugment

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    base = 127 + 100 * np.sin(0.05 * xx[..., None] + 0.03 * yy[..., None] * np.arange(1, 4))
    squares = np.clip(base + rng.normal(0, 12, (n, 256, 256, 3)), 0, 255).astype(np.uint8)
    pixels = torch.from_numpy(squares)
    boxes = ba.sample_boxes(n, 256, 256, (0.05, 1.0), generator=torch.Generator().manual_seed(0))
    cpu = ba.resized_crops(pixels, boxes, 224).float()
    there = ba.resized_crops(pixels.to(device).float(), boxes, 224).cpu()
    diff = (there - cpu).abs()
    augment = PaperAugment(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def rate(on) -> float:
        g = torch.Generator().manual_seed(0)
        augment.batch(pixels[:64].to(on), g)  # warm up
        sync(on)
        t0 = time.perf_counter()
        for start in range(0, n, 64):
            augment.batch(pixels[start : start + 64].to(on), g)
        sync(on)
        return n / (time.perf_counter() - t0)

    report["batch_augment"] = dict(
        max_grey_level_diff=float(diff.max()),
        mean_grey_level_diff=float(diff.mean()),
        img_per_s_device=rate(device),
        img_per_s_cpu=rate(torch.device("cpu")),
        cpu_threads=torch.get_num_threads(),
    )
    r = report["batch_augment"]
    log(
        f"batch augmentation at 224 px on {device.type} vs the CPU's uint8 kernel: max "
        f"{r['max_grey_level_diff']:.2f} grey levels apart; {r['img_per_s_device']:.0f} img/s "
        f"there (uint8 moved + augmented), {r['img_per_s_cpu']:.0f} img/s on the CPU "
        f"({r['cpu_threads']} threads)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny run on whatever device exists")
    args = p.parse_args()
    config = RunConfig(epochs=6, seed=0)
    if args.smoke:
        config = RunConfig(
            epochs=1,
            classes=2,
            subclasses=2,
            train_per_subclass=8,
            eval_per_subclass=6,
            image_size=16,
        )
    elif not torch.cuda.is_available():
        log("no CUDA device: nothing to check (use --smoke on a CPU)")
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    report: dict = {"device": name, "torch": torch.__version__}
    log(f"device: {name}, torch {torch.__version__}")
    model, config, data = check_train(device, report, config)
    check_embed(model, config, data, device, report)
    check_neighbors(device, report)
    check_batch_augment(device, report, n=64 if args.smoke else 1024)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
