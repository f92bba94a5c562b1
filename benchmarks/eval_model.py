"""What measuring a model costs over running it: `clusterprobe eval`'s work vs its forward pass.

ResNet-50 (timm, random init) at 224 px on a BREEDS LIVING-17-sized set: 17
superclasses x 4 subclasses x 50 eval images (17 x 200, its validation images; random
images here), plus the linear/k-NN probes' training images (100 per subclass, eval's
default: 6,800). Times, in one process, on the same tensors and settings:

- the floor: a plain forward pass (``model(x)``, no hooks) over every image the
  measurement feeds the model: eval plus probe-training images;
- the measurement, through the engine API as ``clusterprobe eval`` runs it
  (``runners/measure.py``): the embed of the eval set (16 bottleneck taps flattened,
  per-superclass Grams, raw pixels too), Ward + AMI/purity inside every superclass at
  factors 1..5, the probe images' pooled features, the linear and k-NN probes.

It prints both, each part, and the overhead: measurement / floor - 1 (the aim on a CPU:
at most 1x). Nothing is recorded: no mlflow, optuna or duckdb needed, no pip install
(the checkout is mapped onto the ``clusterprobe`` namespace), so it runs on a machine
with only torch, timm, numpy, scipy and scikit-learn (without scikit-learn the probe
fit is skipped and said so).

    python benchmarks/eval_model.py --small                         # CPU smoke test (< 1 min)
    python benchmarks/eval_model.py --out eval_model_cpu.json       # the full set, CPU fp32
    python benchmarks/eval_model.py --device cuda --precision bf16 --out eval_model_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

from checkout import install_shim  # this folder: the repo without a pip install

install_shim()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from clusterprobe.runners.allocator import keep_large_blocks  # noqa: E402
from clusterprobe.runners.engine.cluster import cluster_protocol  # noqa: E402
from clusterprobe.runners.engine.embed import embed_eval, pooled_features  # noqa: E402
from timing import sync  # noqa: E402

FACTORS = (1, 2, 3, 4, 5)
SMALL = dict(size=64, superclasses=4, subclasses=4, per_subclass=10, probe_per_subclass=10)


class _Labels:
    """What embed_eval reads of runners.data.base.Labels."""

    def __init__(self, superclass, subclass):
        self.superclass, self.subclass = superclass, subclass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50", help="any timm model (default resnet50)")
    p.add_argument("--size", type=int, default=224, help="image side in px (default 224)")
    p.add_argument("--superclasses", type=int, default=17)
    p.add_argument("--subclasses", type=int, default=4, help="per superclass")
    p.add_argument("--per-subclass", type=int, default=50, help="eval images per subclass")
    p.add_argument("--probe-per-subclass", type=int, default=100, help="probe training images")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 CPU, 256 GPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--small", action="store_true", help=f"smoke-test size: {SMALL}")
    p.add_argument(
        "--plain-allocator",
        action="store_true",
        help="glibc's defaults instead of keeping large freed blocks (the CLI keeps them)",
    )
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.small:
        for key, value in SMALL.items():
            setattr(args, key, value)
    if args.batch_size is None:
        args.batch_size = 256 if args.device.startswith("cuda") else 64
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


def build(args, device):
    """The model (random init, eval mode, channels_last on a GPU) and its taps as
    clusterprobe finds them (family by class: ResNet-50's 16 bottlenecks)."""
    import timm
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.models import layer_taps

    torch.manual_seed(0)
    model = timm.create_model(args.arch, num_classes=args.superclasses).eval().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, layer_taps(model, RunConfig(arch=args.arch))


def make_images(n: int, size: int, device, seed: int) -> torch.Tensor:
    """Random images [n, 3, size, size], normalised-looking (zero mean, unit std)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.empty((n, 3, size, size), dtype=torch.float32, device=device)
    for start in range(0, n, 512):  # in chunks: no second full-size temporary
        stop = min(n, start + 512)
        out[start:stop] = torch.randn((stop - start, 3, size, size), generator=g).to(device)
    return out


def forward_only(model, images: list[torch.Tensor], args, device) -> float:
    """Seconds of a plain forward pass over every image, batch by batch, as the embed
    feeds them (same batch size and precision, outputs discarded)."""
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), autocast if args.precision == "bf16" else _nothing():
        for x in images:
            for start in range(0, len(x), args.batch_size):
                model(x[start : start + args.batch_size].to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - t0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measurement(model, taps, data: dict, args, device) -> tuple[dict, dict]:
    """The engine work of one `clusterprobe eval` (runners/measure.py), timed by part."""
    seconds: dict[str, float] = {}
    common = dict(device=device, precision=args.precision, batch_size=args.batch_size)

    sync(device)
    t0 = time.perf_counter()
    emb = embed_eval(model, taps, data["eval"], data["labels"], quiet=True, **common)
    sync(device)
    seconds["embed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sub = {s: data["labels"].subclass[idx] for s, idx in emb.eval_index.items()}
    result = cluster_protocol(emb.grams, sub, FACTORS)
    cluster_protocol(emb.pixel_grams, sub, (1,))
    seconds["cluster"] = time.perf_counter() - t0

    sync(device)
    t0 = time.perf_counter()
    probe_pooled = pooled_features(model, taps, data["probe"], **common)
    sync(device)
    seconds["probe_embed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fitted = _probes(probe_pooled, data["probe_y"], emb.pooled, data["labels"].subclass, device)
    seconds["probe_fit"] = time.perf_counter() - t0
    summary = {
        "ami_f1_by_layer": [round(float(v), 4) for v in np.asarray(result.mean_ami())[:, 0]],
        "probe": fitted,
        "embed": {k: str(v) for k, v in (emb.params or {}).items()},  # passes, memory budget
    }
    return seconds, summary


def _probes(train, train_y, test, test_y, device) -> str:
    # On the run's device, as runners/measure.py fits them
    try:
        from clusterprobe.runners.engine.probe import knn_layers, probe_layers
    except ImportError as err:  # a GPU box without scikit-learn
        return f"skipped ({err})"
    probe_layers(train, train_y, test, test_y, seed=0, device=device)
    knn_layers(train, train_y, test, test_y, device=device)
    return "linear + k-NN"


def make_data(args, device) -> dict:
    n_sub = args.superclasses * args.subclasses
    eval_sub = np.repeat(np.arange(n_sub), args.per_subclass)
    probe_y = np.repeat(np.arange(n_sub), args.probe_per_subclass)
    return {
        "eval": make_images(len(eval_sub), args.size, device, seed=1),
        "labels": _Labels(eval_sub // args.subclasses, eval_sub),
        "probe": make_images(len(probe_y), args.size, device, seed=2),
        "probe_y": probe_y,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    kept = False if args.plain_allocator else keep_large_blocks()  # as the CLI does
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, taps = build(args, device)
    data = make_data(args, device)
    n_eval, n_probe = len(data["eval"]), len(data["probe"])
    log(
        f"{args.arch} {args.size} px, {len(taps)} taps; {args.superclasses} x "
        f"{args.subclasses * args.per_subclass} eval + {n_probe} probe images; "
        f"{device} {args.precision}, batch {args.batch_size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, large freed blocks kept: {kept}"
    )
    forward_only(model, [data["eval"][: args.batch_size]], args, device)  # warm-up
    floor = forward_only(model, [data["eval"], data["probe"]], args, device)
    log(
        f"forward only ({n_eval + n_probe} images): {floor:.2f} s, {(n_eval + n_probe) / floor:,.0f} img/s"
    )
    seconds, summary = measurement(model, taps, data, args, device)
    total = sum(seconds.values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
    log(f"measurement: {total:.2f} s ({parts})")
    log(
        f"overhead over the forward pass: {total / floor - 1:.2f}x (measurement / floor {total / floor:.2f})"
    )
    log(f"probes: {summary['probe']}; embed: {summary['embed']}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {"user": usage.ru_utime, "system": usage.ru_stime, "minor_faults": usage.ru_minflt}
    log(
        f"process CPU: user {cpu['user']:.0f} s, system {cpu['system']:.0f} s, "
        f"{cpu['minor_faults']:,} minor page faults"
    )
    report = {
        "args": vars(args),
        "machine": platform.platform(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "images": {"eval": n_eval, "probe": n_probe},
        "taps": len(taps),
        "seconds": {"forward_only": floor, "measurement": total, **seconds},
        "overhead": total / floor - 1,
        "large_blocks_kept": kept,
        "cpu": cpu,
        "summary": summary,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
