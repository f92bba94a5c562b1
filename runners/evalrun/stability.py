"""ARI stability of a measured checkpoint, recorded on its eval run.

``record_stability`` writes the cluster assignments and the ARI tables: layer x
layer, the final checkpoint against each earlier one, and against up to
``MAX_SEED_RUNS`` earlier eval runs in the store that differ only in the seed
(``find_seed_runs``).
"""

from __future__ import annotations

import time
import warnings

import pandas as pd
from clusterprobe.runners.engine import stability
from clusterprobe.runners.evalrun import stored, tables
from clusterprobe.tracker import conventions as cv

MAX_SEED_RUNS = 5  # seed ARI against at most this many (most recent) matching runs


def record_stability(
    ctx, assignments, factors, eval_index, *, earlier: dict | None = None, seed_runs=()
) -> int:
    """Log assignments.parquet and ari.parquet on the open eval run ``ctx``.

    ``assignments``: ``(layer, superclass) -> [F, n]`` cluster labels at ``factors``,
    rows in ``eval_index[superclass]`` order. ari.parquet holds the layer x layer rows,
    'checkpoint' rows against each of ``earlier`` (eval run id -> (assignments,
    factors), kept in memory by the pipeline) and 'seed' rows against each of
    ``seed_runs`` (the same, from :func:`find_seed_runs`). Returns the number of ARI rows.
    """
    t0 = time.perf_counter()
    frame = tables.assignments_frame(assignments, factors, eval_index)
    ctx.log_parquet(frame, cv.ART_ASSIGNMENTS)
    layers, matrices = stability.layer_ari(assignments, factors)
    parts = [tables.ari_frame(ctx.run_id, ctx.run_id, "layer", layers, layers, matrices)]
    for kind, others in (("checkpoint", earlier or {}), ("seed", dict(seed_runs or {}))):
        for other_id, (other_assign, other_factors) in others.items():
            try:
                la, lb, m = stability.cross_ari(assignments, other_assign, factors, other_factors)
            except (KeyError, ValueError) as err:
                # Another run's stored assignments that do not line up with ours (other
                # layers or superclasses): a warning, never a failed run.
                warnings.warn(
                    f"{kind} ARI: skipped run {other_id}: {type(err).__name__}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            parts.append(tables.ari_frame(ctx.run_id, other_id, kind, la, lb, m))
    table = pd.concat(parts, ignore_index=True)
    ctx.log_parquet(table, cv.ART_ARI)
    ctx.log_metrics({"seconds_ari": time.perf_counter() - t0})
    return len(table)


def design_keys(params: dict[str, str]) -> list[str]:
    """The params two eval runs must share for their clusterings to differ only by the
    seed: the run's design params (`conventions.is_design_param`, the rule the queries'
    design key uses), plus which measurement it is (checkpoint, evaluation set,
    protocol) and the clustering algorithm, since ARI compares two clusterings."""
    keys = {k for k in params if cv.is_design_param(k)}
    keys |= cv.EVAL_RUN_PARAMS | {"cluster.algorithm"}
    return sorted(keys)


def find_seed_runs(tracker, run_id: str, params: dict[str, str], eval_index: dict) -> dict:
    """Earlier FINISHED eval runs of the same design (``design_keys``) with another seed.

    ``params`` are the eval run ``run_id``'s params as logged. Returns run id ->
    (assignments, factors) for at most MAX_SEED_RUNS of them, most recent first, that
    stored assignments of the same eval images (``eval_index``). A run whose artifact
    cannot be read is skipped with a warning: this never fails the run.
    """
    keys = design_keys(params)
    narrow = ("arch", "epochs", "dataset_digest", cv.PARAM_CHECKPOINT_EPOCH)
    try:
        candidates = tracker.search_runs(
            kind="eval",
            status="FINISHED",
            filter_string=" and ".join(
                f"params.{k} = '{params[k]}'" for k in narrow if "'" not in params.get(k, "'")
            ),
            order_by=["attributes.start_time DESC"],
        )
    except Exception as err:  # a store hiccup must not fail a finished measurement
        warnings.warn(
            f"seed ARI skipped: cannot search the store: {err}", RuntimeWarning, stacklevel=2
        )
        return {}
    out: dict = {}
    for run in candidates:
        if len(out) >= MAX_SEED_RUNS:
            break
        other = run.data.params
        if (
            run.info.run_id == run_id
            or cv.TAG_SOURCE_RUN in run.data.tags
            or other.get("seed") == params.get("seed")
            or any(other.get(k) != params.get(k) for k in keys)
        ):
            continue
        loaded = _assignments_or_warn(tracker, run.info.run_id)
        if loaded is None:
            continue
        assignments, factors, index = loaded
        if not stability.same_images(eval_index, index):
            continue  # other eval images (e.g. another eval subset): not comparable
        out[run.info.run_id] = assignments, factors
    return out


def _assignments_or_warn(tracker, run_id: str):
    try:
        return stored.load_assignments(tracker, run_id)
    except FileNotFoundError:
        return None  # a run logged before assignments were recorded: nothing to compare
    except Exception as err:
        warnings.warn(
            f"seed ARI: skipped run {run_id}: cannot read its {cv.ART_ASSIGNMENTS}: {err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
