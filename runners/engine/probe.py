"""Linear and k-NN probes: how decodable the subclass is from each layer.

Per layer: standardise the pooled features (train statistics), fit a
multinomial logistic regression (L-BFGS) for each L2 strength of a small grid on
a stratified 80 % of the training features, keep the strength with the best
accuracy on the other 20 %, refit on all training features and report the
accuracy on the test features. The paper's probe does the same on flattened
features after a sparse random projection; pooled features keep it fast here.

The k-NN probe classifies every test feature by a majority vote of its k nearest
training features under cosine similarity (exact, brute force: the probe sets
hold thousands of images, not millions), ties going to the smallest label: the
same rule as ``sklearn.neighbors.KNeighborsClassifier(metric="cosine")``.
"""

from __future__ import annotations

import warnings

import numpy as np
from clusterprobe.runners.engine.score import unit_rows
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength, strong to weak
K_NEIGHBOURS = 20  # the common choice for k-NN evaluation of learned features
MAX_ITER = 200
HELD_OUT = 0.2


def stratified_split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a seeded stratified split (sklearn's ``train_test_split``,
    ``random_state=seed``): every class on both sides, ``test_fraction`` of the rows tested."""
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
    try:
        train, test = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as err:  # too few rows on one side for every class
        raise ValueError(f"stratified split of {len(labels)} images: {err}") from None
    return train, test


def _fit(x, y, c: float, seed: int, init=None) -> LogisticRegression:
    clf = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed, warm_start=init is not None)
    if init is not None:  # continue from the stronger-regularised solution: fewer iterations
        clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def probe_accuracy(
    train_x: np.ndarray, train_y, test_x: np.ndarray, test_y, *, seed: int = 0
) -> tuple[float, float]:
    """(test accuracy, chosen C) of one layer's probe."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    train_x = np.asarray(train_x, dtype=np.float64).reshape(len(train_x), -1)
    test_x = np.asarray(test_x, dtype=np.float64).reshape(len(test_x), -1)
    if len(np.unique(train_y)) < 2:
        return float(np.mean(test_y == train_y[0])), float("nan")
    counts = np.unique(train_y, return_counts=True)[1]
    # A stratified hold-out needs two images per class and room for one of each class.
    room = int(np.ceil(HELD_OUT * len(train_y))) >= len(counts)
    stratify = train_y if counts.min() >= 2 and room else None
    fit_idx, val_idx = train_test_split(
        np.arange(len(train_y)), test_size=HELD_OUT, random_state=seed, stratify=stratify
    )
    scaler = StandardScaler().fit(train_x[fit_idx])
    fx, vx = scaler.transform(train_x[fit_idx]), scaler.transform(train_x[val_idx])
    best_c, best_acc, prev = C_GRID[0], -1.0, None
    for c in C_GRID:
        prev = _fit(fx, train_y[fit_idx], c, seed, prev)
        acc = prev.score(vx, train_y[val_idx])
        if acc > best_acc:  # ties keep the stronger regularisation
            best_c, best_acc = c, acc
    scaler = StandardScaler().fit(train_x)
    clf = _fit(scaler.transform(train_x), train_y, best_c, seed)
    return float(clf.score(scaler.transform(test_x), test_y)), best_c


def probe_layers(
    train_pooled: list[np.ndarray],
    train_y,
    test_pooled: list[np.ndarray],
    test_y,
    *,
    seed: int = 0,
) -> list[float]:
    """Linear-probe test accuracy per layer (features [n, C_l] per layer, same rows)."""
    if len(train_pooled) != len(test_pooled):
        raise ValueError("train_pooled and test_pooled must list the same layers")
    # One thread: these fits are small, and spinning BLAS/OpenMP threads on a busy
    # 2-core machine made them 10x slower than one thread (measured).
    with threadpool_limits(limits=1):
        return [
            probe_accuracy(tr, train_y, te, test_y, seed=seed)[0]
            for tr, te in zip(train_pooled, test_pooled, strict=True)
        ]


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = K_NEIGHBOURS) -> float:
    """Accuracy of a k-NN vote (cosine similarity, k capped at the training size)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes, train_codes = np.unique(train_y, return_inverse=True)
    a = unit_rows(np.asarray(train_x).reshape(len(train_y), -1), np.float64)
    b = unit_rows(np.asarray(test_x).reshape(len(test_y), -1), np.float64)
    k = max(1, min(int(k), len(train_y)))
    correct = 0
    for start in range(0, len(test_y), 1024):  # bounded memory: 1,024 x n_train at a time
        sim = b[start : start + 1024] @ a.T
        # stable sort on -sim: equal similarities keep training order, as sklearn's brute force
        nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        votes = np.zeros((sim.shape[0], len(classes)), dtype=np.int64)
        np.add.at(votes, (np.arange(sim.shape[0])[:, None], train_codes[nearest]), 1)
        pred = classes[np.argmax(votes, axis=1)]  # argmax: ties to the smallest label
        correct += int((pred == test_y[start : start + 1024]).sum())
    return correct / len(test_y) if len(test_y) else float("nan")


def knn_layers(train_pooled, train_y, test_pooled, test_y, *, k: int = K_NEIGHBOURS) -> list[float]:
    """k-NN accuracy per layer (features [n, C_l] per layer, same rows)."""
    if len(train_pooled) != len(test_pooled):
        raise ValueError("train_pooled and test_pooled must list the same layers")
    with threadpool_limits(limits=1):
        return [
            knn_accuracy(tr, train_y, te, test_y, k=k)
            for tr, te in zip(train_pooled, test_pooled, strict=True)
        ]
