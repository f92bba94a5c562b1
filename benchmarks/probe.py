"""The probe stage: the batched torch probe (ours) vs the sklearn path it replaced.

Two feature sets, each timed through both paths in one process, on the same arrays:

- the default ``clusterprobe run``'s probe: its dataset (synthetic, 8 x 4 subclasses),
  resnet18 trained for ``--epochs`` (the run trains 10; features after a short training
  are enough to time the probes), the pooled features of every block for the probe's
  3,200 training images and the 1,600 eval images, as ``runners/measure.py`` builds
  them. The stage is timed as ``measure.py`` times it: the forward pass over the probe's
  training images (the same for both paths, timed once) plus the linear and k-NN probes;
- a 10,000 x 2,048 set (one layer, 32 Gaussian classes; ``--big``), linear probe only:
  isotropic noise around well separated classes, and features mixed to a 1/j spectrum of
  eigenvalues (as a network layer's) around weak classes.

The baseline is the previous ``engine.probe``: per layer and per C, sklearn's
``LogisticRegression`` (lbfgs, ``max_iter=200``, warm-started along the C grid, one
thread), numpy k-NN. ``--converged`` also fits sklearn to convergence at our chosen C
(``max_iter=10000``), prints both accuracies per layer and the layers whose converged
choice of C differs from ours (converged: ``tol=1e-6``; sklearn's default 1e-4 stops short
on wide anisotropic features).

``--device cuda`` trains, embeds and fits ours on the GPU (the sklearn baseline stays on
the CPU, as it ran); the script runs from the checkout without a pip install and without
mlflow, as the lent GPU machine has it. ``--out FILE`` writes the figures as JSON.

    .venv/bin/python benchmarks/probe.py --epochs 1 --converged
    .venv/bin/python benchmarks/probe.py --no-default --big
    python benchmarks/probe.py --device cuda --epochs 1 --big --out probe_gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import install_shim  # noqa: E402  this folder: the repo without a pip install

install_shim()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from clusterprobe.runners import models  # noqa: E402
from clusterprobe.runners.config import RunConfig  # noqa: E402
from clusterprobe.runners.engine import probe  # noqa: E402
from clusterprobe.runners.engine.embed import pooled_features  # noqa: E402
from clusterprobe.runners.measure import probe_indices  # noqa: E402
from clusterprobe.runners.pipeline import measure_batch, prepare  # noqa: E402
from clusterprobe.runners.train import train  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from timing import sync  # noqa: E402

CONVERGED_TOL = 1e-6  # the converged reference's tolerance

# --- the baseline: the sklearn path as it was -----------------------------------------------


def _sk_fit(x, y, c, seed, init=None, max_iter=200):
    # The reference (max_iter above the baseline's 200) is converged for real: sklearn's
    # default tol=1e-4 stops 0.04 short on wide anisotropic features.
    tol = 1e-4 if max_iter <= 200 else CONVERGED_TOL
    clf = LogisticRegression(
        C=c, max_iter=max_iter, tol=tol, random_state=seed, warm_start=init is not None
    )
    if init is not None:
        clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def _sk_split(train_y, seed):
    counts = np.unique(train_y, return_counts=True)[1]
    room = int(np.ceil(probe.HELD_OUT * len(train_y))) >= len(counts)
    stratify = train_y if counts.min() >= 2 and room else None
    return train_test_split(
        np.arange(len(train_y)), test_size=probe.HELD_OUT, random_state=seed, stratify=stratify
    )


def sklearn_probe(train_x, train_y, test_x, test_y, seed=0, max_iter=200):
    """(test accuracy, chosen C, validation accuracy per C) of one layer."""
    train_x = np.asarray(train_x, dtype=np.float64).reshape(len(train_x), -1)
    test_x = np.asarray(test_x, dtype=np.float64).reshape(len(test_x), -1)
    fit_idx, val_idx = _sk_split(train_y, seed)
    scaler = StandardScaler().fit(train_x[fit_idx])
    fx, vx = scaler.transform(train_x[fit_idx]), scaler.transform(train_x[val_idx])
    best_c, best_acc, prev, val = probe.C_GRID[0], -1.0, None, []
    for c in probe.C_GRID:
        # the baseline warm-starts along the grid; the converged reference starts cold
        prev = _sk_fit(fx, train_y[fit_idx], c, seed, prev if max_iter == 200 else None, max_iter)
        acc = prev.score(vx, train_y[val_idx])
        val.append(acc)
        if acc > best_acc:
            best_c, best_acc = c, acc
    scaler = StandardScaler().fit(train_x)
    clf = _sk_fit(scaler.transform(train_x), train_y, best_c, seed, None, max_iter)
    return float(clf.score(scaler.transform(test_x), test_y)), best_c, val


def sklearn_at(train_x, train_y, test_x, test_y, c, seed=0):
    """Test accuracy of sklearn fitted to convergence at ``c`` (the reference)."""
    scaler = StandardScaler().fit(np.asarray(train_x, dtype=np.float64))
    clf = _sk_fit(scaler.transform(np.asarray(train_x, np.float64)), train_y, c, seed, None, 10000)
    return float(clf.score(scaler.transform(np.asarray(test_x, np.float64)), test_y))


def numpy_knn(train_x, train_y, test_x, test_y, k=probe.K_NEIGHBOURS):
    from clusterprobe.runners.engine.score import unit_rows

    classes, codes = np.unique(train_y, return_inverse=True)
    a = unit_rows(np.asarray(train_x), np.float64)
    b = unit_rows(np.asarray(test_x), np.float64)
    k = max(1, min(int(k), len(train_y)))
    correct = 0
    for start in range(0, len(test_y), 1024):
        sim = b[start : start + 1024] @ a.T
        nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        votes = np.zeros((sim.shape[0], len(classes)), dtype=np.int64)
        np.add.at(votes, (np.arange(sim.shape[0])[:, None], codes[nearest]), 1)
        correct += int((classes[np.argmax(votes, axis=1)] == test_y[start : start + 1024]).sum())
    return correct / len(test_y)


# --- the feature sets ---------------------------------------------------------------------


def default_run_features(epochs: int, device: torch.device):
    """(forward seconds, train features, train y, eval features, eval y, layer names)."""
    config, data = prepare(RunConfig(epochs=max(epochs, 1), device=device.type))
    torch.manual_seed(config.seed)
    model = models.create_model(config, data.num_superclasses, data.image_size).to(device)
    if epochs:
        train(model, data, config, device, quiet=True)
    model.eval()
    taps = models.layer_taps(model, config)
    index = probe_indices(data.train_labels, config.probe_per_subclass, config.seed)
    batch = measure_batch(config.batch_size, device)  # as a run measures its checkpoints
    common = dict(device=device, precision=config.precision, batch_size=batch)
    pooled_features(model, taps, data.train_plain, index[:8], **common)  # lazy inits
    sync(device)
    t0 = time.perf_counter()
    train_x = pooled_features(model, taps, data.train_plain, index, **common)
    sync(device)
    forward = time.perf_counter() - t0
    eval_rows = np.arange(len(data.eval_labels.subclass))
    test_x = pooled_features(model, taps, data.eval, eval_rows, **common)
    names = [t.name for t in taps]
    return (
        forward,
        train_x,
        data.train_labels.subclass[index],
        test_x,
        data.eval_labels.subclass,
        names,
    )


def big_features(n=10_000, d=2_048, classes=32, seed=0, signal=1.0, decay=0.0):
    """One layer: Gaussian classes in a 64-dimensional subspace of d (centres scaled by
    ``signal``), unit noise around them; ``decay`` > 0 then mixes the features so that
    their covariance's eigenvalues fall as ``j ** -decay`` (a network layer's features are
    that anisotropic; isotropic ones are an easy problem for any L-BFGS)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(64, d)) / 8
    centres = signal * rng.normal(size=(classes, 64))
    shape = None
    if decay:
        rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
        shape = (np.arange(1, d + 1) ** (-decay / 2))[:, None] * rotation

    def draw(m):
        y = rng.integers(0, classes, m)
        x = centres[y] @ mix + rng.normal(size=(m, d))
        return (x if shape is None else x @ shape).astype(np.float32), y

    (tx, ty), (ex, ey) = draw(n), draw(n // 4)
    return [tx], ty, [ex], ey


# --- the comparison -------------------------------------------------------------------------


def compare(
    name,
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    forward=0.0,
    knn=True,
    converged=False,
    device=None,
):
    """Prints the comparison; returns its figures (seconds, ratio, accuracies) as a dict."""
    device = torch.device(device or "cpu")
    t0 = time.perf_counter()
    with threadpool_limits(limits=1):  # as the baseline ran: one thread
        base = [sklearn_probe(a, train_y, b, test_y) for a, b in zip(train_x, test_x, strict=True)]
        base_knn = (
            [numpy_knn(a, train_y, b, test_y) for a, b in zip(train_x, test_x, strict=True)]
            if knn
            else []
        )
    t_base = time.perf_counter() - t0
    if device.type == "cuda":  # CUDA context, kernels and cuBLAS handles, outside the timing
        probe.fit_probes([a[:64] for a in train_x], train_y[:64], test_x, test_y, device=device)
    sync(device)
    t0 = time.perf_counter()
    ours = probe.fit_probes(train_x, train_y, test_x, test_y, seed=0, device=device)
    ours_knn = probe.knn_layers(train_x, train_y, test_x, test_y, device=device) if knn else []
    sync(device)
    t_ours = time.perf_counter() - t0
    stage_base, stage_ours = forward + t_base, forward + t_ours
    print(
        f"\n{name}: {len(train_y)} train x {[np.asarray(a).shape[1] for a in train_x]} features"
        f", ours on {device}"
    )
    print(f"  forward pass over the probe images: {forward:.2f} s (both)")
    print(
        f"  sklearn path: {t_base:.2f} s   batched torch: {t_ours:.2f} s   ({ours.iterations} it)"
    )
    print(
        f"  probe stage: sklearn {stage_base:.2f} s, ours {stage_ours:.2f} s: "
        f"{stage_base / stage_ours:.1f}x faster"
    )
    print(
        "  layer  ours(C)         sklearn max_iter=200 (C)"
        + ("   converged at our C" if converged else "")
    )
    differ, refs = [], []
    for i, ((acc, c, _), a2, c2) in enumerate(zip(base, ours.accuracy, ours.chosen_c, strict=True)):
        line = f"  {i:5d}  {a2:.4f} ({c2:g})  {acc:.4f} ({c:g})"
        if converged:
            ref = sklearn_at(train_x[i], train_y, test_x[i], test_y, c2)
            refs.append(ref)
            conv_c = sklearn_probe(train_x[i], train_y, test_x[i], test_y, max_iter=10000)[1]
            line += f"   {ref:.4f}  |diff| {abs(ref - a2):.4f}"
            if conv_c != c2:
                differ.append(f"{i} (ours {c2:g}, converged sklearn {conv_c:g})")
        print(line)
    gap = None
    if knn:
        gap = max(abs(a - b) for a, b in zip(base_knn, ours_knn, strict=True))
        print(f"  k-NN accuracy, largest |ours - numpy path| over layers: {gap:.4f}")
    if converged:
        print(f"  layers whose chosen C differs from converged sklearn's: {differ or 'none'}")
    return {
        "name": name,
        "device": str(device),
        "forward_s": forward,
        "sklearn_s": t_base,
        "ours_s": t_ours,
        "stage_ratio": stage_base / stage_ours,
        "iterations": ours.iterations,
        "accuracy": ours.accuracy,
        "chosen_c": ours.chosen_c,
        "sklearn_accuracy": [b[0] for b in base],
        "converged_accuracy": refs or None,
        "c_differs": differ if converged else None,
        "knn_gap": gap,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="training epochs before the probe (1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for ours")
    p.add_argument("--big", action="store_true", help="also the 10,000 x 2,048 set (minutes)")
    p.add_argument("--no-default", action="store_true", help="skip the default run's features")
    p.add_argument("--converged", action="store_true", help="compare with converged sklearn")
    p.add_argument("--device", default="cpu", help="where ours runs: cpu (default), cuda")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads for the batched probe")
    if device.type == "cuda":
        print(f"ours on {torch.cuda.get_device_name(device)}")
    found = []
    common = dict(converged=args.converged, device=device)
    if not args.no_default:
        forward, tx, ty, ex, ey, _ = default_run_features(args.epochs, device)
        found.append(compare("default run", tx, ty, ex, ey, forward=forward, **common))
    if args.big:
        found.append(compare("10,000 x 2,048, isotropic", *big_features(), knn=False, **common))
        found.append(
            compare(
                "10,000 x 2,048, eigenvalues ~ 1/j, weak classes",
                *big_features(signal=0.07, decay=1.0),
                knn=False,
                **common,
            )
        )
    if args.out:
        report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "sets": found}
        if device.type == "cuda":
            report["gpu"] = torch.cuda.get_device_name(device)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
