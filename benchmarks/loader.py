"""Loader throughput on a fake ImageNet tree: images/s per worker count.

Builds ``train/<wnid>/*.JPEG`` with ImageNet-sized JPEGs (500 x 375) in a temp
folder, then times full passes of the BREEDS train pipeline (decode,
RandomResizedCrop 224 + flip, normalise) through ``make_loader`` (ours: persistent
workers, prefetch) against torchvision's ``ImageFolder`` + a default DataLoader
(the baseline) with the same transform and worker count. Epoch 2 shows the
steady state (the baseline re-forks its workers every epoch). At 224 px both do
the same work; at <= 64 px ours lets libjpeg decode at a reduced scale.

    .venv/bin/python benchmarks/loader.py --images 384 --workers 0,1,2 --sizes 224,64
    .venv/bin/python benchmarks/loader.py --cache-only --sizes 224   # the decoded-image cache
    python benchmarks/loader.py --cache-only --sizes 224 --device cuda  # + augmented on a GPU

``--cache``/``--cache-only`` add the decoded-image cache (``runners/data/cache.py``): its
first pass (decode + resize once into a uint8 file), then epochs read from the memory
map with the same train recipe (random-resized crop + flip, normalise): per image
through the loader, and per batch as ``train`` reads it (``batch_augment``), against the
first-epoch decode path (ours, 0 workers) on the same tree; and the uint8 read alone,
what the CPU does when a GPU augments. ``--threads`` sets torch's threads (1 by default:
the decode path's one decoding thread). Like the CLI, the process keeps large freed
blocks for reuse (``runners/allocator.py``) for every path timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import install_shim  # noqa: E402  this folder: the repo without a pip install

install_shim()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from clusterprobe.runners.allocator import keep_large_blocks  # noqa: E402
from clusterprobe.runners.data import transforms  # noqa: E402
from clusterprobe.runners.data.images import ImageFiles, gather  # noqa: E402
from clusterprobe.runners.data.loading import make_loader  # noqa: E402
from clusterprobe.runners.data.preprocess import dataset_recipe  # noqa: E402
from PIL import Image  # noqa: E402
from timing import sync  # noqa: E402


def make_tree(root: Path, classes: int, per_class: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    folders = []
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        folders.append(folder)
        for i in range(per_class):
            # Smooth colour fields plus mild noise: JPEG sizes close to real photos (~60-120 kB).
            f = rng.uniform(0.005, 0.05, 3)
            base = 127 + 100 * np.sin(
                f[:, None, None] * (xx + rng.uniform(0, 500)) + yy * f[::-1, None, None]
            )
            img = base.transpose(1, 2, 0) + rng.normal(0, 12, (375, 500, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                folder / f"n{c:08d}_{i}.JPEG", quality=90
            )
    return folders


def one_pass(loader) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch[0])
    return n, time.perf_counter() - t0


def cache_vs_decode(
    paths, sup, sub, size: int, batch_size: int, cache_root: Path, device: torch.device
) -> None:
    """images/s: the first-epoch decode path (ours, 0 workers) vs an epoch from the cache,
    per image (``CachedFiles`` through ``make_loader``) and per batch (``CachedBatches``:
    what ``train`` reads), all through the run's train transform; with a CUDA ``device``
    also the batch as ``train`` reads it there (the squares copied over, augmented on it)."""
    from clusterprobe.runners.data import cache

    tf = transforms.train_transform(size)
    decode_ds = ImageFiles(paths, sup, sub, tf, transforms.decode_size(size, train=True))
    one_pass(make_loader(decode_ds, batch_size=batch_size))  # warm the page cache

    def decode_epoch() -> float:
        n, dt = one_pass(make_loader(decode_ds, batch_size=batch_size, shuffle=True, workers=0))
        return n / dt

    decode_rate = max(decode_epoch() for _ in range(3))  # best of three, as the cache's paths
    stored = dataset_recipe(size, (0,), (1,)).resize_size()  # the eval resize: 256 for 224
    t0 = time.perf_counter()
    pixels, _ = cache.open_or_build(paths, sub, "train", cache.Squares(stored), root=cache_root)
    build_rate = len(paths) / (time.perf_counter() - t0)
    files = cache.CachedFiles(pixels, np.arange(len(paths)), paths, sup, sub, tf)
    n, dt = one_pass(make_loader(files, batch_size=batch_size, shuffle=True, workers=0))
    per_image_rate = n / dt
    batches = files.with_transform(tf)
    generator = torch.Generator().manual_seed(0)

    def epoch(read) -> float:
        order = torch.randperm(len(paths), generator=generator)
        t0 = time.perf_counter()
        for start in range(0, len(order), batch_size):
            read(order[start : start + batch_size])
        sync(device)
        return len(order) / (time.perf_counter() - t0)

    def best(read) -> float:
        epoch(read)  # warm: the map's pages, kernels, a device's lazy inits
        return max(epoch(read) for _ in range(3))

    batch_rate = best(lambda index: batches.batch(index, generator))
    # What a GPU trainer's CPU does: a copy of the uint8 squares for the device to augment.
    read_rate = best(batches.squares)
    # The float32 batch alone: what any loader that hands the model 224 px floats writes.
    some = torch.from_numpy(np.array(pixels[:batch_size])).permute(0, 3, 1, 2)
    some = some[..., :size, :size]
    t0 = time.perf_counter()
    for _ in range(10):
        some.float()
    float_rate = 10 * len(some) / (time.perf_counter() - t0)
    on_device = ""
    if device.type == "cuda":
        rate = best(lambda index: batches.batch(index, generator, device))
        on_device = (
            f"\n  epoch from the cache, per batch augmented on {device} "
            f"({torch.cuda.get_device_name(device)}): {rate:.0f} img/s, {rate / decode_rate:.1f}x"
        )
    print(
        f"\ncache at {size} px ({len(paths)} images, stored at {stored} px, "
        f"{torch.get_num_threads()} thread(s)): first-epoch decode {decode_rate:.0f} img/s; "
        f"cache first pass {build_rate:.0f} img/s\n"
        f"  epoch from the cache, per image: {per_image_rate:.0f} img/s, "
        f"{per_image_rate / decode_rate:.1f}x the decode path\n"
        f"  epoch from the cache, per batch (train's path): {batch_rate:.0f} img/s, "
        f"{batch_rate / decode_rate:.1f}x\n"
        f"  the squares read for a GPU to augment (uint8, no augmentation): {read_rate:.0f} "
        f"img/s, {read_rate / decode_rate:.1f}x\n"
        f"  (uint8 -> float32 of a {size} px batch alone: {float_rate:.0f} img/s, "
        f"{float_rate / decode_rate:.1f}x)" + on_device
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=384, help="images in the tree")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes", default="224,64", help="image sizes (train transform)")
    p.add_argument("--cache", action="store_true", help="also time the decoded-image cache")
    p.add_argument("--cache-only", action="store_true", help="only the cache comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="cuda: also the cache's batch augmented there")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_large_blocks()  # as the CLI does, for every path timed here
    print(f"large freed blocks kept for reuse (runners/allocator.py): {kept}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        folders = make_tree(root, args.classes, args.images // args.classes)
        print(f"fake ImageNet: {args.images} JPEGs 500x375 in {time.perf_counter() - t0:.1f} s")
        sup_of = np.zeros(len(folders), dtype=np.int64)
        paths, sup, sub = gather(folders, sup_of, None, 0)
        if args.cache or args.cache_only:
            for size in (int(x) for x in args.sizes.split(",")):
                cache_vs_decode(
                    paths,
                    sup,
                    sub,
                    size,
                    args.batch_size,
                    root / "cache",
                    torch.device(args.device),
                )
            if args.cache_only:
                return
        for size in (int(x) for x in args.sizes.split(",")):
            tf = transforms.train_transform(size)
            # Ours: the dataset BREEDS builds (JPEG draft decoding where the recipe allows).
            ours_ds = ImageFiles(paths, sup, sub, tf, transforms.decode_size(size, train=True))
            base_ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
            one_pass(make_loader(ours_ds, batch_size=args.batch_size))  # warm the page cache
            print(
                f"\ntrain transform at {size} px: {transforms.describe(size, (0,), (1,))['train']}"
            )
            print(
                f"{'workers':>7}  {'ours ep1':>9} {'ours ep2':>9}  {'base ep1':>9} {'base ep2':>9}"
                f"  {'ratio ep2':>9}   (images/s)"
            )
            for w in (int(x) for x in args.workers.split(",")):
                ours = make_loader(ours_ds, batch_size=args.batch_size, shuffle=True, workers=w)
                base = torch.utils.data.DataLoader(
                    base_ds, batch_size=args.batch_size, shuffle=True, num_workers=w
                )
                rates = []
                for loader in (ours, base):
                    for _ in range(2):
                        n, dt = one_pass(loader)
                        rates.append(n / dt)
                print(
                    f"{w:>7}  {rates[0]:>9.0f} {rates[1]:>9.0f}  {rates[2]:>9.0f} {rates[3]:>9.0f}"
                    f"  {rates[1] / rates[3]:>9.2f}"
                )
                del ours  # ends its persistent workers


if __name__ == "__main__":
    main()
