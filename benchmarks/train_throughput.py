"""Training throughput: our training step (``runners.train.train``) against a bare timm loop.

Both run the same timm model (same init), the same batches (fixed tensors, so data
loading is left out of both), on the same device, in one process: ours with its loss,
recipe, schedule, per-step statistics and optional EMA; the baseline a plain
forward / cross-entropy / backward / SGD step loop. On CUDA both use bf16 autocast and
channels_last, as ``train`` does. Each is timed ``--repeats`` times after a warm-up,
alternating, and the best time counts. Prints images/s of each and the ratio
(ours / bare; 1.0 = no overhead).

    python benchmarks/train_throughput.py --threads 1                  # CPU, resnet18, 32 px
    python benchmarks/train_throughput.py --threads 1 --ema 0.99 --loss supcon
    python benchmarks/train_throughput.py --device cuda --arch resnet50 --image-size 224 \\
        --batch-size 256 --steps 30                                     # GPU, bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from clusterprobe.runners.allocator import keep_large_blocks
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.ema import for_config as ema_for_config
from clusterprobe.runners.models import create_model, family_of
from clusterprobe.runners.recipes import resolve
from clusterprobe.runners.train import train
from timing import sync


class FixedBatches(torch.utils.data.Dataset):
    """``steps`` batches that are all the same tensors: the training step alone is timed."""

    def __init__(self, images, labels, steps: int):
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps * len(self.images)

    def batch(self, index, generator=None, device=None):
        # the CPU tensors whatever ``device``: train moves them there, as the bare loop does
        n = len(index)
        return self.images[:n], self.labels[:n], self.labels[:n]


def bare_loop(model, images, labels, steps: int, lr: float, device, weight_decay: float) -> float:
    """Seconds for ``steps`` plain timm training steps (SGD, Nesterov, the same decay)."""
    cuda = device.type == "cuda"
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = images.to(device, non_blocking=True)
        y = labels.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def ours(model, config, data, device) -> float:
    """Seconds for one epoch of ``train`` over the fixed batches."""
    ema = ema_for_config(model, config)
    sync(device)
    t0 = time.perf_counter()
    train(model, data, config, device, quiet=True, ema=ema)
    sync(device)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--loss", default="ce")
    parser.add_argument("--optimizer", default=None)
    parser.add_argument("--ema", type=float, default=0.0)
    args = parser.parse_args()
    keep_large_blocks()  # as the CLI does, for both loops
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = RunConfig(
        arch=args.arch,
        batch_size=args.batch_size,
        epochs=1,
        warmup_epochs=0,
        loss=args.loss,
        optimizer=args.optimizer,
        ema=args.ema,
        device=args.device,
        image_size=args.image_size,
    )
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    labels = torch.randint(0, args.classes, (args.batch_size,), generator=gen)
    lr = 0.1

    def fresh():
        return create_model(config, args.classes, args.image_size).to(device)

    # warm-up: allocator, cuDNN/oneDNN algorithm choice, lazy inits
    warm = SimpleNamespace(train=FixedBatches(images, labels, 3))
    ours(fresh(), config, warm, device)
    decay = resolve(config, family_of(fresh())).weight_decay
    bare_loop(fresh(), images, labels, 3, lr, device, decay)
    data = SimpleNamespace(train=FixedBatches(images, labels, args.steps))
    t_ours, t_bare = [], []
    for _ in range(args.repeats):
        t_ours.append(ours(fresh(), config, data, device))
        t_bare.append(bare_loop(fresh(), images, labels, args.steps, lr, device, decay))
    n = args.steps * args.batch_size
    ours_ips, bare_ips = n / min(t_ours), n / min(t_bare)
    print(
        f"{args.arch} {args.image_size}px batch {args.batch_size} on {device} "
        f"(threads {torch.get_num_threads()}, loss {args.loss}, ema {args.ema}): "
        f"ours {ours_ips:.1f} img/s, bare timm loop {bare_ips:.1f} img/s, "
        f"ratio {ours_ips / bare_ips:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
