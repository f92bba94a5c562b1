"""Linear and k-NN probes: how decodable the subclass is from each layer.

Linear probe, per layer: standardise the pooled features (train statistics), fit a
multinomial logistic regression for each L2 strength of a small grid on 80 % of each
class's training features, keep the strength with the best accuracy on the other 20 %
(:func:`held_out_rows`), refit on all training features and report the accuracy on the
test features.
The objective is sklearn's ``LogisticRegression(C=c)`` (lbfgs, multinomial, unpenalised
intercept): ``mean cross-entropy + ||W||^2 / (2 C n)`` on standardised features. The
paper's probe does the same on flattened features after a sparse random projection;
pooled features keep it fast here.

Every layer is one problem of a batched torch solve (:func:`fit_logistic`): a full-batch
L-BFGS whose vector operations run over all problems at once, each problem with its own
line search and stopping test. The strengths are solved one after another, strong to
weak, each from a prediction of its solution (the previous one, then the secant through
the last two): on the CPU, where the solve is bound by its matrix products, that path
took 0.65x the time of solving all strengths at once from zero (1.58 s vs 2.43 s on the
default run's features). Features
are whitened first (PCA basis of the standardised features, scaled to unit variance):
the data term's curvature is then close to isotropic and L-BFGS converges in tens of
iterations, not hundreds; the L2 penalty, rewritten in that basis, stays exact (a
diagonal weight ``1 / lambda_j`` per principal direction). Directions without variance
are dropped: the penalty keeps the weights there at zero anyway.

The k-NN probe classifies every test feature by a majority vote of its k nearest
training features under cosine similarity (exact, brute force through matrix
products: the probe sets hold thousands of images, not millions), ties going to the
smallest label: the same rule as ``sklearn.neighbors.KNeighborsClassifier(metric=
"cosine")``. Rows whose k-th and (k+1)-th similarities tie are re-ranked by a stable
sort, so equal similarities keep training order as sklearn's brute force does.

Both run on ``device`` (the run's, so on the GPU when the run is there), in the
features' precision (float32 for the pooled features a run stores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength, strong to weak
K_NEIGHBOURS = 20  # the common choice for k-NN evaluation of learned features
MAX_ITER = 500  # L-BFGS iterations; whitened problems stop at TOL long before
TOL = 1e-3  # converged: max |gradient| of the mean objective below this ...
GAP = 1e-4  # ... and the estimated distance to the minimum below this share of it: test
# accuracy within 0.006 of the minimum's on the default run's features (0.0081 with the
# gradient test alone), within 0.005 on 2,048 anisotropic features (0.019 without)
FTOL = 1e-5  # ... or a relative decrease of the objective below this (scipy's ftol)
HISTORY = 10  # L-BFGS memory (scipy's default)
MAX_HALVINGS = 20
HELD_OUT = 0.2
RANK_RTOL = 1e-6  # principal directions below this share of the largest variance: dropped


@dataclass(frozen=True)
class ProbeFit:
    """Linear-probe results per layer."""

    accuracy: list[float]  # test accuracy of the refit at the chosen strength
    chosen_c: list[float]  # the strength chosen on the held-out 20 % (nan: one class)
    iterations: int  # L-BFGS iterations of the longest path (the strengths in turn + refit)


def held_out_rows(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows), sorted: each class's rows in a seeded random order
    (one ``numpy.random.default_rng(seed)``, classes in label order), the first
    ``test_fraction`` of them (rounded half up, at least one, never all) held out. A class
    with a single row stays on the kept side. Not sklearn's ``train_test_split``: that
    import alone cost 0.65 s of every probe stage."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    kept, held = [], []
    for k in range(len(classes)):
        rows = np.flatnonzero(inverse == k)
        rows = rows[rng.permutation(len(rows))]
        n = 0 if len(rows) < 2 else min(len(rows) - 1, max(1, int(test_fraction * len(rows) + 0.5)))
        held.append(rows[:n])
        kept.append(rows[n:])
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(kept or [empty])), np.sort(np.concatenate(held or [empty]))


def stratified_split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a seeded stratified split (:func:`held_out_rows`): every
    class on both sides, ``test_fraction`` of each class's rows tested."""
    labels = np.asarray(labels)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction {test_fraction}: give a fraction between 0 and 1")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"{len(classes)} class(es): a probe needs at least 2")
    if counts.min() < 2:
        raise ValueError(
            f"class {classes[np.argmin(counts)]} has {counts.min()} image(s); a stratified "
            "split needs at least 2 per class"
        )
    return held_out_rows(labels, test_fraction, seed)


# --- whitening ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Whitener:
    """z = (x - mean) / scale @ basis: standardised, rotated to principal axes, unit variance."""

    mean: torch.Tensor  # [d]
    scale: torch.Tensor  # [d] (1 where a feature is constant, as StandardScaler)
    basis: torch.Tensor  # [d, r]: eigenvectors / sqrt(eigenvalue)
    variance: torch.Tensor  # [r]: eigenvalues of the standardised features' covariance

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.scale) @ self.basis


def _whitener(x: torch.Tensor, like: _Whitener | None = None) -> _Whitener:
    """``x``'s whitener; with ``like`` (another row set's, every direction kept) its
    standardisation and ``like``'s principal basis: any basis ``E / sqrt(lambda)`` with
    orthonormal E keeps the penalty exact and diagonal, and a near one keeps the
    curvature near isotropic, without a second eigendecomposition."""
    mean = x.mean(0)
    std = x.std(0, correction=0)
    scale = torch.where(std > 0, std, torch.ones_like(std))
    if like is not None and like.basis.shape[1] == x.shape[1]:
        return _Whitener(mean, scale, like.basis, like.variance)
    xs = (x - mean) / scale
    # The covariance in the features' precision (one matrix product), its eigenvectors in
    # float64: the penalty weights 1 / lambda need the small eigenvalues right. With fewer
    # rows than features the n x n Gram has the same nonzero eigenvalues, and is smaller.
    n, d = xs.shape
    gram = (xs @ xs.T if n < d else xs.T @ xs).double() / n
    lam, vec = torch.linalg.eigh(gram)
    keep = lam > RANK_RTOL * max(float(lam[-1]), 0.0) if len(lam) else lam > 0
    lam, vec = lam[keep], vec[:, keep]
    if n < d:  # row-space eigenvectors -> feature-space ones: X^T v / sqrt(n lambda)
        vec = (xs.T.double() @ vec) / (n * lam).sqrt()
    basis = (vec / lam.sqrt()).to(x.dtype)
    return _Whitener(mean, scale, basis, lam.to(x.dtype))


# --- the batched solve ---------------------------------------------------------------------


def fit_logistic(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    penalty: torch.Tensor,
    *,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    ftol: float = FTOL,
    gap: float = GAP,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Multinomial logistic regressions, many at once, by a batched full-batch L-BFGS.

    ``z`` [L, n, D]: L feature sets on the same n rows (zero-padded to D columns); ``y`` [n]
    class codes 0..num_classes-1; ``penalty`` [L, c, D]: problem (l, j) minimises
    ``mean_i CE(z_l[i] @ W + b, y_i) + sum_d penalty[l, j, d] * ||W[d]||^2 / 2`` (intercept
    unpenalised); ``init``: starting weights, shaped as the result (else zeros).
    Returns (weights [L, D + 1, c, K], last row the intercepts; iterations
    of the slowest problem). Each problem has its own curvature pairs, Armijo backtracking
    and gradient test; a converged problem stops moving.
    """
    if not (torch.isfinite(penalty).all() and (penalty >= 0).all()):
        raise ValueError("penalty: give finite weights >= 0")
    nl, n, d = z.shape
    c, k = penalty.shape[1], num_classes
    ones = torch.ones(nl, n, 1, dtype=z.dtype, device=z.device)
    za = torch.cat([z, ones], dim=2)  # the intercept as a constant feature
    pen = torch.cat([penalty, penalty.new_zeros(nl, c, 1)], dim=2)  # [L, c, D + 1]
    # Diagonal preconditioner: curvature of one coordinate at the uniform start is about
    # var(z) / K = 1 / K (whitened), plus its penalty; optimise theta = W / scale.
    scale = (1.0 / (1.0 / k + pen)).sqrt().transpose(1, 2).unsqueeze(-1)  # [L, D+1, c, 1]
    pen4 = pen.transpose(1, 2).unsqueeze(-1)  # [L, D+1, c, 1]

    def objective(theta, za, scale, pen4):
        return _objective(theta, za, y, scale, pen4, k)

    theta = z.new_zeros(nl, d + 1, c, k) if init is None else init / scale
    out = theta * scale  # every problem's result, written as it leaves the batch
    rows, cols = torch.arange(nl, device=z.device), torch.arange(c, device=z.device)
    f, g = objective(theta, za, scale, pen4)
    s_hist, y_hist, rho_hist = [], [], []
    done = torch.zeros_like(f, dtype=torch.bool)  # even a warm start is tested on its decrement
    it = 0
    while it < max_iter and not bool(done.all()):
        it += 1
        # Finished layers (all strengths) and strengths (all layers) leave the batch: the
        # strong penalties converge first and would otherwise cost as much as the rest.
        keep_l, keep_c = ~done.all(1), ~done.all(0)
        if not bool(keep_l.all() and keep_c.all()):
            out[rows[:, None], :, cols[None, :]] = (theta * scale).permute(0, 2, 1, 3)
            kl, kc = keep_l.nonzero().flatten(), keep_c.nonzero().flatten()
            rows, cols = rows[kl], cols[kc]

            def sub(t, kl=kl, kc=kc):
                return t.index_select(0, kl).index_select(2, kc)

            za = za.index_select(0, kl)
            scale, pen4, theta, g = sub(scale), sub(pen4), sub(theta), sub(g)
            f, done = f[kl][:, kc], done[kl][:, kc]
            s_hist, y_hist = [sub(t) for t in s_hist], [sub(t) for t in y_hist]
            rho_hist = [t[kl][:, kc] for t in rho_hist]
        direction = _lbfgs_direction(g, s_hist, y_hist, rho_hist)
        slope = _dot(g, direction)
        bad = ~(slope < 0)  # not a descent direction (lost curvature): restart on -g
        if bool(bad.any()):
            direction = torch.where(bad[:, None, :, None], -g, direction)
            slope = _dot(g, direction)
        if s_hist:  # converged: small gradient, and little left to gain by the model's own
            # estimate (-g.d / 2, the quasi-Newton decrement): on wide, anisotropic features
            # every gradient entry is small long before the objective is near its minimum
            near = (-slope / 2 <= gap * f.abs()) & (g.abs().amax(dim=(1, 3)) <= tol)
            done = done | near
            if bool(done.all()):
                break
        direction = direction * (~done)[:, None, :, None]
        step = torch.ones_like(f)
        if not s_hist:  # first step: unit length, as scipy's L-BFGS-B
            step = 1.0 / g.norm(dim=(1, 3)).clamp_min(1e-12)
        slack = 8 * torch.finfo(z.dtype).eps * f.abs()  # rounding of f itself
        for _ in range(MAX_HALVINGS):  # Armijo backtracking, per problem
            new_theta = theta + step[:, None, :, None] * direction
            new_f, new_g = objective(new_theta, za, scale, pen4)
            ok = (new_f <= f + 1e-4 * step * slope + slack) | done
            if bool(ok.all()):
                break
            step = torch.where(ok, step, 0.5 * step)
        # No acceptable step (the objective is flat to rounding there): that problem stops,
        # as scipy's L-BFGS-B stops on a failed line search.
        stuck = ~ok
        new_theta = torch.where(stuck[:, None, :, None], theta, new_theta)
        new_f, new_g = torch.where(stuck, f, new_f), torch.where(stuck[:, None, :, None], g, new_g)
        small = (f - new_f) <= ftol * torch.maximum(f.abs(), torch.ones_like(f))
        s_new, y_new = new_theta - theta, new_g - g
        sy = _dot(s_new, y_new)
        good = sy > 1e-10 * _dot(y_new, y_new).sqrt() * _dot(s_new, s_new).sqrt()
        theta, f, g = new_theta, new_f, new_g
        if bool(good.any()):  # pairs without positive curvature leave that problem's memory
            s_hist.append(s_new * good[:, None, :, None])
            y_hist.append(y_new * good[:, None, :, None])
            rho_hist.append(torch.where(good, 1.0 / sy.where(good, torch.ones_like(sy)), 0.0))
            if len(s_hist) > HISTORY:
                s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        done = done | stuck | small
    out[rows[:, None], :, cols[None, :]] = (theta * scale).permute(0, 2, 1, 3)
    return out, it


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One inner product per problem: [L, D+1, c, K] x 2 -> [L, c]."""
    return (a * b).sum(dim=(1, 3))


def _objective(theta, za, y, scale, pen4, k: int):
    """Mean cross-entropy + L2 of every problem, and its gradient in theta = W / scale."""
    nl, d1, c = theta.shape[0], theta.shape[1], theta.shape[2]
    n = za.shape[1]
    idx = y.view(1, n, 1, 1).expand(nl, n, c, 1)
    w = theta * scale
    logits = torch.bmm(za, w.reshape(nl, d1, c * k)).view(nl, n, c, k)
    lse = torch.logsumexp(logits, dim=3, keepdim=True)  # [L, n, c, 1]
    f = (lse - logits.gather(3, idx)).mean(dim=(1, 3))
    f = f + 0.5 * (pen4 * w * w).sum(dim=(1, 3))  # [L, c]
    # softmax; log-probabilities floored at -80 (exp > float32's smallest normal): the
    # subnormal results of confident rows made a CPU iteration 10x slower (measured)
    g = (logits - lse).clamp_min_(-80.0).exp_()
    g.scatter_add_(3, idx, torch.full_like(lse, -1.0))
    gw = torch.bmm(za.transpose(1, 2), g.view(nl, n, c * k)).view(nl, d1, c, k)
    return f, (gw / n + pen4 * w) * scale


def _lbfgs_direction(g, s_hist, y_hist, rho_hist) -> torch.Tensor:
    """L-BFGS's two-loop recursion, every problem at once: -H g from the stored pairs."""
    q = g.clone()
    alphas = []
    for s, yv, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        a = rho * _dot(s, q)
        alphas.append(a)
        q -= a[:, None, :, None] * yv
    if s_hist:
        s, yv = s_hist[-1], y_hist[-1]
        gamma = _dot(s, yv) / _dot(yv, yv).clamp_min(torch.finfo(g.dtype).tiny)
        q *= gamma[:, None, :, None]
    for s, yv, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        b = rho * _dot(yv, q)
        q += (a - b)[:, None, :, None] * s
    return -q


def _predict(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Class codes [L, n, c] of features z [L, n, D] under weights [L, D + 1, c, K]."""
    nl, n, d = z.shape
    c, k = w.shape[2], w.shape[3]
    logits = torch.bmm(z, w[:, :d].reshape(nl, d, c * k)) + w[:, d].reshape(nl, 1, c * k)
    return logits.view(nl, n, c, k).argmax(3)  # ties: the first (smallest) class code


def _raw(h: _Whitener, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [r + 1, c, K] on whitened features -> (A [d, c, K], a0 [c, K]) on raw ones."""
    r = h.basis.shape[1]
    a = torch.einsum("dr,rck->dck", h.basis, w[:r]) / h.scale[:, None, None]
    return a, w[r] - torch.einsum("d,dck->ck", h.mean, a)


def _whitened(h: _Whitener, a: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_raw` on the span of ``h``'s directions: [r + 1, c, K]."""
    w = torch.einsum("dr,dck->rck", h.basis, a * h.scale[:, None, None])
    w = w * h.variance[:, None, None]
    return torch.cat([w, (a0 + torch.einsum("d,dck->ck", h.mean, a))[None]])


def _bucket(rank: int) -> int:
    """Layers are solved together with others of the same power-of-two width bucket:
    zero-padding within a bucket costs at most 2x, padding all to the widest 4-8x. Below
    64 columns a solve costs its fixed per-iteration overhead: those share one bucket."""
    return max(1 << max(rank - 1, 0).bit_length(), 64)


def _solve(xs, y, num_classes: int, cs: list[tuple], evals: list, init=None, like=None):
    """Fit every layer at each of its strengths; predict its ``evals`` rows.

    xs: train features per layer; cs: the strengths per layer (same count each); init:
    raw (A, a0) per layer to start from; like: whiteners per layer whose bases to reuse
    (:func:`_whitener`). Returns (predicted codes [n_eval, c] per layer, raw (A, a0) per
    layer, iterations of the slowest problem, the whiteners)."""
    whiteners = [_whitener(x, h) for x, h in zip(xs, like or [None] * len(xs), strict=True)]
    preds, raws, iters = [None] * len(xs), [None] * len(xs), 0
    buckets: dict[int, list[int]] = {}
    for i, h in enumerate(whiteners):
        buckets.setdefault(_bucket(h.basis.shape[1]), []).append(i)
    for rows in buckets.values():
        width = max(whiteners[i].basis.shape[1] for i in rows)

        def stack(feats, rows=rows, width=width):
            return torch.stack(
                [
                    torch.nn.functional.pad(
                        whiteners[i](feats[i]), (0, width - whiteners[i].basis.shape[1])
                    )
                    for i in rows
                ]
            )

        z, ze = stack(xs), stack(evals)
        pen = z.new_ones(len(rows), len(cs[0]), width)  # padding: any positive weight
        for j, i in enumerate(rows):
            r, var = whiteners[i].basis.shape[1], whiteners[i].variance
            pen[j, :, :r] = 1.0 / (
                var[None, :]
                * (torch.tensor(cs[i], dtype=z.dtype, device=z.device) * len(y))[:, None]
            )
        start = None
        if init is not None:
            start = z.new_zeros(len(rows), width + 1, len(cs[0]), num_classes)
            for j, i in enumerate(rows):
                w0 = _whitened(whiteners[i], *init[i])
                r = w0.shape[0] - 1
                start[j, :r], start[j, width] = w0[:r], w0[r]
        # The strengths one after another, strong to weak, each started near its optimum:
        # from the previous solution, then from the secant through the last two (the
        # solution is a smooth curve in log C), which took 0.7x the iterations.
        log_c = torch.tensor([cs[i] for i in rows], dtype=z.dtype, device=z.device).log()
        parts, prev, path = [], start, 0
        for j in range(pen.shape[1]):
            if j >= 2:
                last, before = log_c[:, j - 1] - log_c[:, j - 2], log_c[:, j] - log_c[:, j - 1]
                ratio = torch.where(last != 0, before / last.where(last != 0, 1.0), 0.0)
                prev = parts[-1] + ratio[:, None, None, None] * (parts[-1] - parts[-2])
            w, it = fit_logistic(z, y, num_classes, pen[:, j : j + 1], init=prev)
            parts.append(w)
            prev, path = w, path + it
        w, iters = torch.cat(parts, dim=2), max(iters, path)
        codes = _predict(w, ze)
        for j, i in enumerate(rows):
            r = whiteners[i].basis.shape[1]
            preds[i] = codes[j]
            raws[i] = _raw(whiteners[i], torch.cat([w[j, :r], w[j, width:]]))
    return preds, raws, iters, whiteners


def _as_tensors(pooled, device, dtype):
    return [
        torch.as_tensor(np.asarray(x).reshape(len(x), -1), device=device).to(dtype) for x in pooled
    ]


def _dtype(pooled) -> torch.dtype:
    return (
        torch.float64 if any(np.asarray(x).dtype == np.float64 for x in pooled) else torch.float32
    )


def fit_probes(
    train_pooled: list[np.ndarray],
    train_y,
    test_pooled: list[np.ndarray],
    test_y,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cs: tuple[float, ...] = C_GRID,
) -> ProbeFit:
    """Linear probes of every layer (features [n, ...] per layer, same rows), in two
    batched solves: every layer at every C on the 80 % split (C in turn, strong to weak),
    then every layer's refit at its chosen C, started from the split's solution at that C."""
    if len(train_pooled) != len(test_pooled):
        raise ValueError("train_pooled and test_pooled must list the same layers")
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if not train_pooled:
        return ProbeFit([], [], 0)
    classes, codes = np.unique(train_y, return_inverse=True)
    if len(classes) < 2:
        acc = float(np.mean(test_y == train_y[0]))
        return ProbeFit([acc] * len(train_pooled), [float("nan")] * len(train_pooled), 0)
    device = torch.device(device)
    dtype = _dtype(list(train_pooled) + list(test_pooled))
    train_x = _as_tensors(train_pooled, device, dtype)
    test_x = _as_tensors(test_pooled, device, dtype)
    y = torch.as_tensor(codes, device=device)
    fit_idx, val_idx = held_out_rows(codes, HELD_OUT, seed)
    fi, vi = torch.as_tensor(fit_idx, device=device), torch.as_tensor(val_idx, device=device)
    preds, raws, it1, split = _solve(
        [x[fi] for x in train_x], y[fi], len(classes), [cs] * len(train_x), [x[vi] for x in train_x]
    )
    # ties: the first, the strongest regularisation
    best = [int((p == y[vi][:, None]).sum(0).argmax()) for p in preds]
    chosen = [cs[b] for b in best]
    init = [(a[:, b : b + 1], a0[b : b + 1]) for (a, a0), b in zip(raws, best, strict=True)]
    # the refit on every training row rotates by the split's principal axes (where it kept
    # every direction): one eigendecomposition per layer, not two (the costly part of the
    # projected probe's 1,024-wide layers)
    preds, _, it2, _ = _solve(train_x, y, len(classes), [(c,) for c in chosen], test_x, init, split)
    acc = [
        float(np.mean(classes[p[:, 0].cpu().numpy()] == test_y)) if len(test_y) else float("nan")
        for p in preds
    ]
    return ProbeFit(acc, [float(c) for c in chosen], max(it1, it2))


def probe_accuracy(
    train_x: np.ndarray, train_y, test_x: np.ndarray, test_y, *, seed: int = 0
) -> tuple[float, float]:
    """(test accuracy, chosen C) of one layer's probe."""
    fit = fit_probes([train_x], train_y, [test_x], test_y, seed=seed)
    return fit.accuracy[0], fit.chosen_c[0]


def probe_layers(
    train_pooled: list[np.ndarray],
    train_y,
    test_pooled: list[np.ndarray],
    test_y,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Linear-probe test accuracy per layer (features [n, C_l] per layer, same rows)."""
    return fit_probes(train_pooled, train_y, test_pooled, test_y, seed=seed, device=device).accuracy


# --- k-NN -----------------------------------------------------------------------------------


def _unit(x: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)


def _knn_votes(a: torch.Tensor, b: torch.Tensor, codes: torch.Tensor, k: int, nc: int):
    """Predicted class codes of test rows ``b`` by their k nearest train rows ``a``."""
    out = []
    for start in range(0, len(b), 1024):  # bounded memory: 1,024 x n_train at a time
        sim = b[start : start + 1024] @ a.T
        top = torch.topk(sim, min(k + 1, sim.shape[1]), dim=1)
        nearest = top.indices[:, :k]
        if k < sim.shape[1]:  # a tie across the k-th place: re-rank those rows stably
            tied = torch.nonzero(top.values[:, k - 1] == top.values[:, k]).flatten()
            if len(tied):
                order = torch.sort(sim[tied], dim=1, descending=True, stable=True).indices
                nearest = nearest.index_copy(0, tied, order[:, :k])
        votes = torch.zeros(len(sim), nc, dtype=torch.int64, device=sim.device)
        votes.scatter_add_(1, codes[nearest], torch.ones_like(nearest))
        out.append(votes.argmax(1))  # ties: the first maximum, the smallest label
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = K_NEIGHBOURS, device="cpu") -> float:
    """Accuracy of a k-NN vote (cosine similarity, k capped at the training size)."""
    return knn_layers([train_x], train_y, [test_x], test_y, k=k, device=device)[0]


def knn_layers(
    train_pooled, train_y, test_pooled, test_y, *, k: int = K_NEIGHBOURS, device="cpu"
) -> list[float]:
    """k-NN accuracy per layer (features [n, C_l] per layer, same rows)."""
    if len(train_pooled) != len(test_pooled):
        raise ValueError("train_pooled and test_pooled must list the same layers")
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if not len(test_y):
        return [float("nan")] * len(train_pooled)
    classes, codes = np.unique(train_y, return_inverse=True)
    device = torch.device(device)
    dtype = _dtype(list(train_pooled) + list(test_pooled))
    codes_t = torch.as_tensor(codes, device=device)
    k = max(1, min(int(k), len(train_y)))
    out = []
    for a, b in zip(
        _as_tensors(train_pooled, device, dtype),
        _as_tensors(test_pooled, device, dtype),
        strict=True,
    ):
        pred = classes[_knn_votes(_unit(a), _unit(b), codes_t, k, len(classes)).cpu().numpy()]
        out.append(float(np.mean(pred == test_y)))
    return out
