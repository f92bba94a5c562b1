"""What the training choices of issue 14 cost per epoch, against the default training.

Trains the same model on the built-in data for ``--epochs`` epochs once per setting
and prints seconds per epoch and the ratio to the baseline (default augmentation, no
training state saved):

- ``--save-every 1``: the training state (model, optimiser, RNG states) written after
  every epoch with ``torch.save`` to a local file (what ``run`` then hands to the
  store), and the size of that file;
- ``--augment paper`` (random-resized crop + flip per image, tensors),
  ``standard`` (timm's transform per image, through PIL) and ``none``.

    python benchmarks/training_choices.py --threads 1
    python benchmarks/training_choices.py --threads 1 --image-size 64 --epochs 2

Engine and training API only (no MLflow), so the same command runs anywhere.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from clusterprobe.runners import resume
from clusterprobe.runners.config import PRESETS, RunConfig
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.runners.models import create_model
from clusterprobe.runners.train import train

SETTINGS = {
    "default (baseline)": {},
    "--save-every 1": {"save_every": 1},
    "--augment paper": {"augment": "paper"},
    "--augment standard": {"augment": "standard"},
    "--augment none": {"augment": "none"},
}


def one(base: RunConfig, changes: dict, folder: str) -> tuple[float, int]:
    config = base.replace(**changes)
    data = load_dataset(config)
    model = create_model(config, data.num_superclasses, data.image_size)
    path = os.path.join(folder, "state.pt")
    if os.path.exists(path):
        os.remove(path)

    def on_save(state):
        resume.save(state, path)

    t0 = time.perf_counter()
    train(model, data, config, "cpu", quiet=True, on_save=on_save)
    seconds = (time.perf_counter() - t0) / config.epochs
    return seconds, (os.path.getsize(path) if os.path.exists(path) else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = RunConfig(
        **PRESETS["quick"],
        device="cpu",
    ).replace(arch=args.arch, epochs=args.epochs, image_size=args.image_size)
    print(
        f"{args.arch}, synthetic {base.train_per_subclass} train images per subclass "
        f"(8 x 4), {args.image_size} px, {args.epochs} epoch(s), "
        f"{torch.get_num_threads()} thread(s)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, changes in SETTINGS.items():
            rows.append((name, *one(base, changes, folder)))
    baseline = rows[0][1]
    print(f"{'setting':<22} {'s/epoch':>8} {'ratio':>6}  state file")
    for name, seconds, size in rows:
        state = f"{size / 2**20:.1f} MiB" if size else "-"
        print(f"{name:<22} {seconds:>8.2f} {seconds / baseline:>6.2f}  {state}")


if __name__ == "__main__":
    main()
