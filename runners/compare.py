"""Compare two eval runs: CKA and ARI between every layer of one and every layer of the other.

Two runs of the same eval images (two seeds, architectures or checkpoints) are compared
from what they stored, without a forward pass: CKA from their per-superclass Grams
(``distances/``; rows must be the same images in the same order) and ARI from their
cluster assignments. :func:`compare_scores` is the computation (pure);
:func:`compare_runs` reads and checks both runs, then records a run of kind
``compare`` whose ``cka.parquet`` and ``ari.parquet`` have the eval runs' column
layout (kind 'compare', run_id = RUN_A, other_run_id = RUN_B), so the ``cka`` and
``ari`` views hold both; the ``run_pairs`` view lists the compare runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
from clusterprobe.runners.evalrun import stored, tables
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

# Params that say which images an eval run measured; two runs must agree on those both have.
IMAGE_PARAMS = (cv.PARAM_EVAL_SET, "dataset_digest", "data_seed")


@dataclass
class StoredRun:
    """What a comparison reads of one eval run."""

    run_id: str
    params: dict[str, str]
    distances: stored.StoredDistances
    assignments: dict  # (layer, superclass) -> int [F, n]
    factors: tuple[int, ...]
    assignment_index: dict  # superclass -> eval_index of the assignments' rows


@dataclass
class Comparison:
    """CKA and ARI of every layer of run A against every layer of run B."""

    cka: object  # engine.cka.CkaMatrices [La, Lb]
    ari_layers: tuple[list[int], list[int]]  # layers of A and of B with assignments
    ari: dict[int, np.ndarray]  # factor -> [La, Lb], mean over superclasses


@dataclass
class CompareResult:
    run_id: str  # the compare run
    run_a: StoredRun
    run_b: StoredRun
    comparison: Comparison


def load_run(tracker, run_id: str) -> StoredRun:
    """An eval run's Grams and assignments, checked (UsageError: one line, nothing stored)."""
    run = stored.open_eval_run(tracker, run_id)
    distances = stored.load_distances(tracker, run_id)
    if set(distances.eval_index) != set(distances.grams):
        raise UsageError(
            f"run {run_id}: its distances index does not name the eval images (no eval_index)"
        )
    assignments, factors, index = stored.require_assignments(tracker, run_id)
    return StoredRun(run_id, dict(run.data.params), distances, assignments, factors, index)


def check_same_images(a: StoredRun, b: StoredRun) -> None:
    """UsageError unless A and B measured the same eval images, superclass by superclass,
    in the same order (what CKA between their Grams and ARI between their clusterings
    need)."""
    for key in IMAGE_PARAMS:
        va, vb = a.params.get(key), b.params.get(key)
        if va is not None and vb is not None and va != vb:
            raise UsageError(
                f"runs {a.run_id} and {b.run_id} measured different eval images ({key} "
                f"{va!r} vs {vb!r}); compare needs two eval runs of the same eval set"
            )
    for run in (a, b):
        if not _same_index(run.distances.eval_index, run.assignment_index):
            raise UsageError(
                f"run {run.run_id}: its Grams and its cluster assignments list different images"
            )
    sups_a, sups_b = sorted(a.distances.eval_index), sorted(b.distances.eval_index)
    if sups_a != sups_b:
        raise UsageError(
            f"runs {a.run_id} and {b.run_id} measured different superclasses ({sups_a} vs "
            f"{sups_b}); compare needs the same eval images"
        )
    for s in sups_a:
        if not np.array_equal(a.distances.eval_index[s], b.distances.eval_index[s]):
            raise UsageError(
                f"runs {a.run_id} and {b.run_id} measured different eval images in superclass "
                f"{s}; compare needs the same images in the same order"
            )
    if not set(a.factors) & set(b.factors):
        raise UsageError(
            f"runs {a.run_id} and {b.run_id} share no clustering factor ({list(a.factors)} vs "
            f"{list(b.factors)}); ARI needs one"
        )


def _same_index(x: dict, y: dict) -> bool:
    return set(x) == set(y) and all(np.array_equal(x[s], y[s]) for s in x)


def compare_scores(a: StoredRun, b: StoredRun, estimator: str = "linear") -> Comparison:
    """CKA (``estimator``) and ARI of every layer of A against every layer of B; the runs
    must have passed :func:`check_same_images`."""
    from clusterprobe.runners.engine.cka import cka_by_superclass
    from clusterprobe.runners.engine.stability import cross_ari

    cka = cka_by_superclass(a.distances.grams, b.distances.grams, estimator=estimator)
    la, lb, ari = cross_ari(a.assignments, b.assignments, a.factors, b.factors)
    return Comparison(cka, (la, lb), ari)


def compare_runs(
    tracker, run_a: str, run_b: str, *, estimator: str = "linear", quiet: bool = True
) -> CompareResult:
    """Compare eval runs ``run_a`` and ``run_b`` and record a ``compare`` run. Both are read
    and checked, and the numbers computed, before the run exists: bad input stores nothing."""
    from clusterprobe.runners.engine.cka import check_images

    a, b = load_run(tracker, run_a), load_run(tracker, run_b)
    check_same_images(a, b)
    try:
        check_images(estimator, {s: len(i) for s, i in a.distances.eval_index.items()})
    except ValueError as err:
        raise UsageError(f"--cka {estimator}: {err}") from None
    _say(quiet, f"comparing {run_a} with {run_b} ({estimator} CKA, ARI)")
    t0 = time.perf_counter()
    comparison = compare_scores(a, b, estimator)
    seconds = time.perf_counter() - t0
    with tracker.start_run(
        "compare",
        params={
            cv.PARAM_CKA: estimator,
            "factors": ",".join(map(str, sorted(comparison.ari))),
        },
        tags={cv.TAG_COMPARE_A: run_a, cv.TAG_COMPARE_B: run_b},
        run_name=f"compare {run_a[:8]} {run_b[:8]}",
    ) as ctx:
        cka_rows = tables.cka_frame(run_a, run_b, "compare", comparison.cka)
        ctx.log_parquet(cka_rows, cv.ART_CKA)
        la, lb = comparison.ari_layers
        ari_rows = tables.ari_frame(run_a, run_b, "compare", la, lb, comparison.ari)
        ctx.log_parquet(ari_rows, cv.ART_ARI)
        ctx.log_metrics({"seconds_compare": seconds})
    return CompareResult(ctx.run_id, a, b, comparison)


def format_comparison(result: CompareResult) -> str:
    """One line per layer of A: CKA and ARI (factor 1, else the smallest) with the same layer
    of B (when both have as many layers), and B's most similar layer by CKA."""
    names_a = result.run_a.distances.layer_names
    names_b = result.run_b.distances.layer_names
    cka = result.comparison.cka.mean
    factor = min(result.comparison.ari)
    ari = result.comparison.ari[factor]
    la, lb = result.comparison.ari_layers
    same = len(names_a) == len(names_b)
    width = max(len("name"), *(len(n) for n in names_a))
    lines = [
        f"{'layer':>5}  {'name':<{width}}  {'CKA same':>8}  {f'ARI f{factor}':>7}  "
        f"most similar layer of B (CKA)"
    ]
    for i, name in enumerate(names_a):
        j = int(np.nanargmax(cka[i])) if np.isfinite(cka[i]).any() else None
        ari_same = ari[la.index(i), lb.index(i)] if same and i in la and i in lb else np.nan
        best = "-" if j is None else f"{j} {names_b[j]} ({cka[i, j]:.3f})"
        lines.append(
            f"{i:>5}  {name:<{width}}  {_num(cka[i, i] if same else np.nan):>8}  "
            f"{_num(ari_same):>7}  {best}"
        )
    return "\n".join(lines)


def _num(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[compare] {message}", file=sys.stderr, flush=True)
