"""What the decode-every-file check costs before a run: ``imagecheck.find_corrupt`` over a
folder of ImageNet-sized JPEGs (500 x 375) against the baseline of one training epoch's
reading of the same files (``ImageFiles`` with the folder's 224 px eval transform, no
workers), in one process on the same files. The ratio is the check's cost in epochs.

    .venv/bin/python benchmarks/imagecheck.py --images 300 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.imagecheck import find_corrupt
from clusterprobe.runners.data.images import ImageFiles
from clusterprobe.runners.data.preprocess import image_transforms
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as run --threads)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
            path = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
        t0 = time.perf_counter()
        bad = find_corrupt(paths)
        ours = time.perf_counter() - t0
        assert not bad
        tf = image_transforms(RunConfig(dataset="folder"), 224)
        labels = np.zeros(len(paths), dtype=np.int64)
        files = ImageFiles(paths, labels, labels, tf.eval, tf.eval_draft)
        t0 = time.perf_counter()
        for i in range(len(files)):
            files[i]
        base = time.perf_counter() - t0
    print(f"{args.images} JPEGs 500x375")
    print(f"find_corrupt (decode every file once):      {ours:7.2f} s")
    print(f"baseline: one epoch of reading (224 px eval): {base:7.2f} s")
    print(f"ratio check / epoch: {ours / base:.2f}")


if __name__ == "__main__":
    main()
