"""How often does fp32 (the default precision) flip a Ward merge that fp64 makes?

The per-superclass protocol builds Ward's tree from the Gram matrix of the
L2-normalised features. fp32 rounds features and Grams at ~1e-7, so two merges whose
Ward costs tie within that rounding can come out in the other order. This script
embeds one model's eval set twice with the engine (``embed_eval``, precision fp32 and
fp64), builds every (superclass, layer) tree from both, and counts:

- trees whose merge sequence differs anywhere (the first differing merge is a flip),
  and those among them that form other clusters (not only a reordering);
- cuts (tree x factor) whose partition differs, and the AMI they change;
- the largest change of a layer's superclass-mean AMI (what `run` records).

The model: a checkpoint (``--weights model.safetensors --arch resnet18``, e.g. a
train run's ``checkpoint/model.safetensors``, whose head width must equal the
superclass count) or a random-init resnet18; the data: the built-in synthetic set
(default sizes: 8 superclasses x 4 subclasses, 50 eval images per subclass).

    python benchmarks/precision_ties.py --weights mlruns/artifacts/.../checkpoint/model.safetensors
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from clusterprobe.runners import models
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.runners.engine.cluster import cluster_protocol, gram_distances
from clusterprobe.runners.engine.embed import embed_eval
from clusterprobe.runners.engine.metrics import ari
from clusterprobe.runners.engine.ward import ward

FACTORS = (1, 2, 3, 4, 5)


def first_flip(a: np.ndarray, b: np.ndarray) -> int | None:
    """Index of the first merge joining other clusters in tree b than in tree a, or None."""
    pa, pb = np.sort(a[:, :2], axis=1), np.sort(b[:, :2], axis=1)
    differ = np.flatnonzero((pa != pb).any(axis=1))
    return int(differ[0]) if differ.size else None


def clusters_formed(merges: np.ndarray, n: int) -> set[frozenset]:
    """The leaf sets of every merge: two trees with the same sets differ only in the order
    of independent merges (a cut can still fall between two swapped ones)."""
    members = [frozenset([i]) for i in range(n)]
    for a, b in merges[:, :2].astype(int):
        members.append(members[a] | members[b])
    return set(members[n:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a safetensors state dict")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--eval-per-subclass", type=int, default=None)
    args = parser.parse_args()

    config = RunConfig(arch=args.arch, eval_per_subclass=args.eval_per_subclass, seed=0)
    data = load_dataset(config)
    model = models.create_model(config, data.num_superclasses, data.image_size)
    if args.weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.weights))
    model.eval()
    taps = models.layer_taps(model, config)
    grams, protocol = {}, {}
    for precision in ("fp32", "fp64"):
        emb = embed_eval(
            model, taps, data.eval, data.eval_labels, device="cpu", precision=precision, quiet=True
        )
        grams[precision] = emb.grams
        sub = {s: data.eval_labels.subclass[idx] for s, idx in emb.eval_index.items()}
        protocol[precision] = cluster_protocol(emb.grams, sub, FACTORS)

    trees = flipped = other = 0
    flips_at = []  # merge index of each first flip, as a fraction of the tree's merges
    for s, g32 in grams["fp32"].items():
        n = g32.shape[1]
        for li in range(g32.shape[0]):
            a = ward(gram_distances(g32[li]), n)
            b = ward(gram_distances(grams["fp64"][s][li]), n)
            trees += 1
            at = first_flip(a, b)
            if at is not None:
                flipped += 1
                flips_at.append(at / (n - 1))
                other += clusters_formed(a, n) != clusters_formed(b, n)
    p32, p64 = protocol["fp32"], protocol["fp64"]
    cuts = changed = 0
    for key, labels32 in p32.assignments.items():
        for fi in range(len(FACTORS)):
            cuts += 1
            changed += ari(labels32[fi], p64.assignments[key][fi]) < 1.0
    report = {
        "model": args.weights or f"random-init {args.arch}",
        "eval_images": int(len(data.eval_labels.subclass)),
        "superclasses": len(grams["fp32"]),
        "layers": len(taps),
        "trees": trees,
        "trees_with_a_flipped_merge": flipped,
        "trees_with_other_clusters": other,  # the rest: only independent merges reordered
        "first_flip_at_fraction_of_merges": [round(f, 3) for f in sorted(flips_at)],
        "cuts": cuts,
        "cuts_with_another_partition": int(changed),
        "max_abs_ami_change_per_superclass_cut": float(np.abs(p32.ami - p64.ami).max()),
        "max_abs_mean_ami_change_per_layer_factor": float(
            np.abs(p32.mean_ami() - p64.mean_ami()).max()
        ),
        "max_abs_gram_difference": float(
            max(np.abs(grams["fp32"][s] - grams["fp64"][s]).max() for s in grams["fp32"])
        ),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
