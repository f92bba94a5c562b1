"""Finding 1 of arXiv 2311.07864 on the built-in data: shuffled vs natural superclasses.

Trains the default model on ``synthetic`` and ``synthetic-shuffled`` for each
seed and scores every tapped layer with the paper's protocol (flatten,
L2-normalise, Ward inside each superclass into #subclasses clusters, AMI,
averaged over superclasses; factor 1). Raw pixels are scored as the baseline.
Prints one line per (variant, seed) and the mean and spread of the best
layer's AMI. Independent of the tracker: sklearn directly on the features.

    python benchmarks/finding1.py --seeds 0 1 2 --threads 1
    python benchmarks/finding1.py --seeds 0 --epochs 6 --lr 0.2   # try a recipe
    python benchmarks/finding1.py --seeds 0 1 2 --threads 1 --ema 0.99   # with the EMA

Measured with the defaults of the time (resnet18, 10 epochs, batch 64, lr 0.4 per 256,
raw weights: today's ``--ema 0``), one process per (variant, seed), best-layer AMI at
factor 1: natural 0.078 / 0.063 / 0.066 (mean 0.069, std 0.006; best layer 6 = layer4.0),
shuffled 0.334 / 0.329 / 0.400 (mean 0.354, std 0.032; best layer 7 = layer4.1);
raw pixels 0.004 (natural) and 0.001 (shuffled). With the EMA of the weights (0.99,
today's default; seeds 0 and 1 in one process, 2 in another): natural 0.079 / 0.065 / 0.075 (0.073 +-
0.006), shuffled 0.312 / 0.311 / 0.387 (0.337 +- 0.036), best layer 7 (6 for one seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing

import numpy as np
import torch
from clusterprobe.runners.config import PRESETS, RunConfig
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.runners.ema import for_config as ema_for_config
from clusterprobe.runners.models import create_model, layer_taps
from clusterprobe.runners.train import seed_everything, train
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score


def ward_ami(features: np.ndarray, superclass: np.ndarray, subclass: np.ndarray) -> float:
    """Mean over superclasses of AMI(subclass, Ward into #subclasses clusters)."""
    flat = features.reshape(len(features), -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    flat = flat / np.where(norms > 0, norms, 1.0)
    scores = []
    for s in np.unique(superclass):
        rows = superclass == s
        k = len(np.unique(subclass[rows]))
        pred = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(flat[rows])
        scores.append(adjusted_mutual_info_score(subclass[rows], pred))
    return float(np.mean(scores))


@torch.no_grad()
def layer_features(model, taps, images: torch.Tensor, batch: int = 256) -> list[np.ndarray]:
    store: dict[int, list[torch.Tensor]] = {t.index: [] for t in taps}
    handles = []
    for tap in taps:

        def hook(_m, args, out=None, i=tap.index, cap=tap.capture):
            store[i].append((args[0] if cap == "input" else out).detach().float().clone())

        if tap.capture == "input":
            handles.append(tap.module.register_forward_pre_hook(hook))
        else:
            handles.append(tap.module.register_forward_hook(hook))
    model.eval()
    try:
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(store[t.index]).flatten(1).numpy() for t in taps]


def one(config: RunConfig, quiet: bool) -> dict:
    data = load_dataset(config)
    seed_everything(config.seed)
    model = create_model(config, data.num_superclasses, data.image_size)
    t0 = time.perf_counter()
    ema = ema_for_config(model, config)
    history = train(model, data, config, torch.device("cpu"), quiet=quiet, ema=ema)
    train_s = time.perf_counter() - t0
    if ema is not None:  # scored as a run evaluates: the averaged weights
        model = ema.averaged_model(model).eval()
    taps = layer_taps(model, config)
    images = data.eval.images
    sup, sub = data.eval_labels.superclass, data.eval_labels.subclass
    t0 = time.perf_counter()
    amis = [ward_ami(f, sup, sub) for f in layer_features(model, taps, images)]
    pixel = ward_ami(images.numpy(), sup, sub)
    return {
        "shuffled": config.shuffled,
        "seed": config.seed,
        "train_s": round(train_s, 1),
        "score_s": round(time.perf_counter() - t0, 1),
        "train_acc": round(history[-1]["train_acc"], 3),
        "pixel_ami": round(pixel, 3),
        "ami": [round(a, 3) for a in amis],
        "best_ami": round(max(amis), 3),
        "best_layer": int(np.argmax(amis)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["natural", "shuffled"])
    parser.add_argument("--quick", action="store_true", help="apply the quick preset")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "momentum",
        "arch",
        "stem",
        "train_per_subclass",
        "eval_per_subclass",
        "data_seed",
        "ema",
        "optimizer",
        "recipe",
        "loss",
    ):
        hint = typing.get_type_hints(RunConfig)[name]
        kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = RunConfig(**(PRESETS["quick"] if args.quick else {}))
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    base = base.replace(**overrides)
    shown = {
        k: getattr(base, k) for k in ("epochs", "lr", "batch_size", "weight_decay", *overrides)
    }
    print(f"# config: {json.dumps(shown)}", file=sys.stderr)
    results = []
    for seed in args.seeds:
        for variant in args.variants:
            res = one(base.replace(seed=seed, shuffled=variant == "shuffled"), args.quiet)
            print(json.dumps(res), flush=True)
            results.append(res)
    for variant in args.variants:
        best = [r["best_ami"] for r in results if r["shuffled"] == (variant == "shuffled")]
        print(
            f"{variant:9s} best-layer AMI (factor 1) over seeds {args.seeds}: "
            f"mean {np.mean(best):.3f}  std {np.std(best):.3f}  min {min(best):.3f}  max {max(best):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
