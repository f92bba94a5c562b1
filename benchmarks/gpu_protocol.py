"""The whole per-superclass protocol on one GPU, against its forward-pass floor.

ResNet-50 (timm, random init), 224 px, 13 superclasses x 200 synthetic
structured images (4 subclasses each: coloured gratings), 16 bottleneck
outputs flattened (5.5M values per image), Ward inside each superclass,
factors 1..5, AMI + purity. Prints:

- forward-only throughput (bf16 autocast, channels_last, batch 256): the floor;
- our full protocol (embed + Gram on the GPU, Ward + cuts + AMI on the host),
  bf16 and fp32, and the AMI difference between them;
- a memory-bounded embedding (small budget: grouped and row-blocked passes)
  checked against the unbounded Grams;
- whole-dataset clustering of 1,000,000 x 512 points through
  ``clusterprobe.runners.engine.whole`` / ``neighbors`` (torch on CUDA), if present.

Needs torch, timm, numpy, scipy (scikit-learn optional) and this checkout;
nothing else (no mlflow/optuna/duckdb/faiss, no pip install): the repo's
folders are mapped onto the ``clusterprobe`` namespace by a small shim.

    python benchmarks/gpu_protocol.py --out gpu_protocol.json     # on the GPU machine
    python benchmarks/gpu_protocol.py --small --out /tmp/g.json   # CPU smoke test (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from checkout import install_shim  # this folder: the repo without a pip install

install_shim()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from clusterprobe.runners.engine.cluster import cluster_protocol  # noqa: E402
from clusterprobe.runners.engine.embed import embed_eval  # noqa: E402
from timing import sync  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


class _Labels:
    """Duck-typed stand-in for runners.data.base.Labels (embed_eval reads .superclass)."""

    def __init__(self, superclass, subclass):
        self.superclass = superclass
        self.subclass = subclass


def make_taps(model):
    """Every bottleneck block of a timm ResNet, in forward order."""
    try:
        from clusterprobe.runners.models import Tap
    except Exception:  # noqa: BLE001 - any import problem: fall back to a plain record

        class Tap:  # type: ignore[no-redef]
            def __init__(self, index, name, module, kind, capture="output"):
                self.index, self.name, self.module = index, name, module
                self.kind, self.capture = kind, capture

    taps = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            taps.append(Tap(len(taps), f"{stage}.{i}", block, "block"))
    return taps


def gratings(n_sup, n_sub, per, size, device, seed=0):
    """Structured images made on the device: superclass = orientation + frequency,
    subclass = colour + phase, plus per-image jitter and noise. Returns (images, sup, sub)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    g_dev = torch.Generator(device=device).manual_seed(seed)  # bulk noise made on the device
    coords = torch.linspace(0, 1, size, device=device)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    chunks, sups, subs = [], [], []
    for s in range(n_sup):
        angle = np.pi * s / n_sup
        freq = 3 + 2 * (s % 4)
        base = np.cos(angle) * xx + np.sin(angle) * yy
        for c in range(n_sub):
            colour = (torch.rand(3, generator=g) * 2 - 1).to(device).view(1, 3, 1, 1)
            phase = float(torch.rand(1, generator=g)) * 2 * np.pi
            jitter = (torch.randn(per, generator=g) * 0.4).to(device).view(per, 1, 1, 1)
            wave = torch.sin(2 * np.pi * freq * base[None, None] + phase + jitter)
            noise = torch.randn(per, 3, size, size, generator=g_dev, device=device)
            chunks.append(colour * wave + 0.5 * noise)
            sups += [s] * per
            subs += [s * n_sub + c] * per
    return torch.cat(chunks), np.array(sups), np.array(subs)


def forward_floor(model, images, device, batch, repeats=3):
    """img/s of the bare forward pass (bf16 autocast, channels_last, no hooks)."""
    best = float("inf")
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for i in range(0, images.shape[0], batch):  # warm-up: cudnn picks kernels per shape
            model(images[i : i + batch])
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            for i in range(0, images.shape[0], batch):
                model(images[i : i + batch])
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return images.shape[0] / best, best


def feature_bytes_per_image(model, taps, x) -> int:
    """fp32 bytes of one image's flattened tap outputs plus its pixels."""
    sizes = []
    handles = [
        t.module.register_forward_hook(lambda m, a, o: sizes.append(o[0].numel())) for t in taps
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return 4 * (sum(sizes) + x[0].numel())


def protocol(model, taps, images, labels, device, precision, batch, factors, n_jobs):
    sync(device)
    t0 = time.perf_counter()
    emb = embed_eval(
        model,
        taps,
        images,
        labels,
        device=device,
        precision=precision,
        batch_size=batch,
        quiet=True,
    )
    sync(device)
    t1 = time.perf_counter()
    subs = {s: labels.subclass[emb.eval_index[s]] for s in emb.grams}
    res = cluster_protocol(emb.grams, subs, factors, n_jobs=n_jobs)
    t2 = time.perf_counter()
    return emb, res, t1 - t0, t2 - t1


def whole_section(args, device, report):
    n, d = args.whole_n, 512
    n_sub = 50
    log(f"whole: {n} x {d} points, {n_sub} blobs in 10 groups, factors 1..5")
    g = torch.Generator(device=device).manual_seed(1)
    groups = torch.randn(10, d, generator=g, device=device) * 4
    centres = groups.repeat_interleave(5, 0) + torch.randn(n_sub, d, generator=g, device=device) * 2
    y = torch.randint(0, n_sub, (n,), generator=g, device=device)
    x = centres[y] + torch.randn(n, d, generator=g, device=device)
    x = (x / x.norm(dim=1, keepdim=True)).cpu()  # score_whole takes host arrays
    y = y.cpu().numpy()
    out: dict = {}
    try:
        from clusterprobe.runners.engine import neighbors
    except Exception as err:  # noqa: BLE001
        log(f"whole: runners.neighbors not importable ({type(err).__name__}: {err}); skipped")
        neighbors = None
    if neighbors is not None and not args.skip_knn:
        for precision in ("tf32", "fp32") if device.type == "cuda" else ("fp32",):
            try:
                sync(device)
                t0 = time.perf_counter()
                dist, idx = neighbors.knn(x.numpy(), 10, backend="torch", precision=precision)
                sync(device)
                dt = time.perf_counter() - t0
                out[f"knn_k10_{precision}_s"] = dt
                log(f"whole: exact k-NN graph (k=10, torch, {precision}): {dt:.2f} s")
            except Exception as err:  # noqa: BLE001
                log(f"whole: k-NN ({precision}) failed: {type(err).__name__}: {err}")
    if neighbors is not None:
        try:
            sync(device)
            t0 = time.perf_counter()
            km = neighbors.kmeans(x.numpy(), min(2000, n // 10), backend="torch", niter=20)
            sync(device)
            dt = time.perf_counter() - t0
            out["kmeans_2000_s"] = dt
            log(
                f"whole: torch k-means to {min(2000, n // 10)} centroids ({km.backend}): {dt:.2f} s"
            )
        except Exception as err:  # noqa: BLE001
            log(f"whole: k-means failed: {type(err).__name__}: {err}")
    try:
        from clusterprobe.runners.engine.whole import score_whole

        t0 = time.perf_counter()
        res = score_whole(x.numpy(), y, (1, 2, 3, 4, 5), method=args.whole_method)
        dt = time.perf_counter() - t0
        out.update(
            score_whole_s=dt,
            ami={str(k): v for k, v in res.ami.items()},
            params={str(k): str(v) for k, v in res.params.items()},
            timings=getattr(res, "timings", {}),
        )
        log(
            f"whole: score_whole(method={args.whole_method!r}) {dt:.2f} s; "
            f"algorithm {res.params.get('algorithm')}, AMI f1 {res.ami[1]:.4f}, f5 {res.ami[5]:.4f}; "
            f"stages {getattr(res, 'timings', {})}"
        )
    except Exception as err:  # noqa: BLE001
        log(f"whole: score_whole failed or missing: {type(err).__name__}: {err}")
    report["whole"] = out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_protocol.json", help="JSON file for the measurements")
    p.add_argument("--small", action="store_true", help="tiny CPU-sized run (smoke test)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--superclasses", type=int, default=13)
    p.add_argument("--subclasses", type=int, default=4)
    p.add_argument("--per-superclass", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--jobs", type=int, default=None, help="host workers for Ward + AMI")
    p.add_argument("--whole-n", type=int, default=1_000_000)
    p.add_argument("--whole-method", default="two-stage")
    p.add_argument("--skip-whole", action="store_true")
    p.add_argument("--skip-knn", action="store_true", help="skip the exact 1M k-NN graph timing")
    p.add_argument("--check-imports", action="store_true", help="import the engine and exit")
    args = p.parse_args(argv)
    if args.small:
        args.superclasses, args.per_superclass, args.size = 3, 16, 32
        args.batch, args.whole_n = 32, 4_000
        if args.device == "auto":
            args.device = "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check_imports:
        import clusterprobe.runners.engine.embed as e

        log(json.dumps({"embed": e.__file__, "modules": sorted(sys.modules)}))
        return 0
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    report: dict = {"args": vars(args), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    log(f"device {device} {report.get('gpu', '')}, torch {torch.__version__}")

    model, taps = build_model(args, device)
    per_sub = args.per_superclass // args.subclasses
    images, sup, sub = gratings(args.superclasses, args.subclasses, per_sub, args.size, device)
    images = images.contiguous(memory_format=torch.channels_last)
    n = images.shape[0]
    log(
        f"{args.arch}: {len(taps)} taps; {args.superclasses} superclasses x {args.subclasses} "
        f"subclasses, {n} images at {args.size} px"
    )
    ips, secs = forward_floor(model, images, device, args.batch, repeats=1 if args.small else 3)
    report["forward"] = dict(img_per_s=ips, seconds=secs)
    log(
        f"forward only (bf16, channels_last, batch {args.batch}): {ips:,.0f} img/s, {secs:.3f} s for {n} images: the floor"
    )
    results = precision_section(args, model, taps, images, sup, sub, device, secs, report)
    bounded_section(args, model, taps, images, sup, sub, device, results["fp32"][0], report)
    if device.type == "cuda":
        report["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        log(f"peak GPU memory allocated: {report['max_memory_allocated_gb']:.1f} GB")

    if not args.skip_whole:
        del images, results
        if device.type == "cuda":
            torch.cuda.empty_cache()
        whole_section(args, device, report)

    heavy = sorted(m for m in ("mlflow", "optuna", "duckdb", "faiss") if m in sys.modules)
    report["heavy_modules_imported"] = heavy
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    log(f"wrote {args.out}; heavy modules imported: {heavy or 'none'}")
    return 0


def build_model(args, device):
    """The timm model (random init, channels_last, eval) on ``device`` and its block taps."""
    import timm

    torch.manual_seed(0)
    # zero_init_last=False: timm zero-initialises each block's last BN, which makes every
    # block of a stage repeat the first one at init; real features differ per block
    model = timm.create_model(
        args.arch, pretrained=False, num_classes=args.superclasses, zero_init_last=False
    )
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    return model, make_taps(model)


def precision_section(args, model, taps, images, sup, sub, device, floor_s, report) -> dict:
    """The full protocol in bf16 and fp32 (after a warm-up each), and their AMI difference."""
    factors = (1, 2, 3, 4, 5)
    labels = _Labels(sup, sub)
    results = {}
    for precision in ("bf16", "fp32"):
        warm = 2 * args.per_superclass  # the first two superclasses: the same batch shapes
        warm_labels = _Labels(sup[:warm], sub[:warm])
        run = (device, precision, args.batch, factors, args.jobs)
        protocol(model, taps, images[:warm], warm_labels, *run)  # warm-up
        emb, res, t_embed, t_host = protocol(model, taps, images, labels, *run)
        results[precision] = (emb, res)
        total = t_embed + t_host
        report[precision] = dict(
            seconds_total=total,
            seconds_embed=t_embed,
            seconds_host=t_host,
            floor_multiple=total / floor_s,
            mean_ami_f1_by_layer=res.mean_ami()[:, 0].round(4).tolist(),
            params=res.params,
            embed_params=emb.params,
        )
        log(
            f"protocol {precision}: {total:.3f} s = embed+Gram {t_embed:.3f} s + Ward/cuts/AMI "
            f"{t_host:.3f} s ({res.params['n_jobs']} host workers); {total / floor_s:.1f}x the forward floor"
        )
    d = np.abs(results["bf16"][1].ami - results["fp32"][1].ami)
    dm = np.abs(results["bf16"][1].mean_ami() - results["fp32"][1].mean_ami())
    report["bf16_vs_fp32"] = dict(
        max_abs=float(d.max()), mean_abs=float(d.mean()), max_mean=float(dm.max())
    )
    log(
        f"bf16 vs fp32 AMI: per (layer, superclass, factor) max {d.max():.4f} mean {d.mean():.4f}; superclass means max {dm.max():.4f}"
    )
    log(
        "mean AMI f1 by layer (fp32): "
        + " ".join(f"{v:.3f}" for v in results["fp32"][1].mean_ami()[:, 0])
    )
    return results


def bounded_section(args, model, taps, images, sup, sub, device, emb_fp32, report) -> None:
    """Memory-bounded path: a budget of 1/8 of one superclass's features forces grouped
    passes and row blocks (block 1 alone is wider); Grams must match the unbounded ones."""
    rows = np.flatnonzero(sup == 0)
    budget = int(len(rows) * feature_bytes_per_image(model, taps, images[:1]) / 8)
    t0 = time.perf_counter()
    emb_b = embed_eval(
        model,
        taps,
        images[torch.as_tensor(rows, device=device)],
        _Labels(sup[rows], sub[rows]),
        device=device,
        precision="fp32",
        batch_size=args.batch,
        quiet=True,
        memory_budget=budget,
    )
    sync(device)
    tb = time.perf_counter() - t0
    err = float(np.abs(emb_b.grams[0] - emb_fp32.grams[0]).max())
    report["bounded"] = dict(
        budget_bytes=budget, seconds=tb, max_gram_diff=err, passes=emb_b.params["forward_passes"]
    )
    log(
        f"memory-bounded embed of superclass 0 (budget {budget / 1e9:.2f} GB, {emb_b.params['forward_passes']} passes): {tb:.2f} s, max |G - G_unbounded| {err:.2e}"
    )


if __name__ == "__main__":
    sys.exit(main())
