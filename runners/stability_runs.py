"""ARI stability of a measured checkpoint, logged on its eval run.

``record_stability`` writes the cluster assignments and the ARI tables: layer x
layer, the final checkpoint against each earlier one, and against up to
``MAX_SEED_RUNS`` earlier runs in the store that differ only in the seed
(``find_seed_runs``).
"""

from __future__ import annotations

import time
import warnings

import pandas as pd
from clusterprobe.runners.measure import Measurement
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.conventions import PARAM_PROTOCOL
from clusterprobe.tracker.errors import UsageError

# RunConfig fields that do not change what a final checkpoint's clustering measures
# (besides the seed, which is what a seed comparison varies): where and how fast it
# ran, what else was saved, which intermediate checkpoints were also measured.
NON_DESIGN_PARAMS = frozenset(
    {"seed", "device", "workers", "save", "eval_epochs", "data_dir", "breeds_info", "download"}
)
MAX_SEED_RUNS = 5  # seed ARI against at most this many (most recent) matching runs


# --- stability: ARI between cluster assignments ----------------------------------------


def record_stability(ctx, meas: Measurement, *, earlier: dict | None = None, seed_runs=()) -> int:
    """Log assignments.parquet and ari.parquet on the open eval run ``ctx``.

    ari.parquet holds the layer x layer rows, 'checkpoint' rows against each of
    ``earlier`` (eval run id -> (assignments, factors), kept in memory by ``run``)
    and 'seed' rows against each of ``seed_runs`` (run id -> (assignments, factors),
    see :func:`find_seed_runs`). Returns the number of ARI rows.
    """
    from clusterprobe.runners.engine import stability

    t0 = time.perf_counter()
    assignments = meas.protocol.assignments
    eval_index = meas.embedding.eval_index
    ctx.log_parquet(
        stability.assignments_frame(assignments, meas.factors, eval_index), cv.ART_ASSIGNMENTS
    )
    tables = [stability.layer_ari_rows(ctx.run_id, assignments, meas.factors)]
    for kind, others in (("checkpoint", earlier or {}), ("seed", dict(seed_runs or {}))):
        for other_id, (other_assign, other_factors) in others.items():
            try:
                tables.append(
                    stability.cross_ari_rows(
                        ctx.run_id,
                        other_id,
                        kind,
                        assignments,
                        other_assign,
                        meas.factors,
                        other_factors,
                    )
                )
            except (KeyError, ValueError, UsageError) as err:
                # Another run's stored assignments that do not line up with ours (other
                # layers or superclasses): a warning, never a failed run.
                warnings.warn(
                    f"{kind} ARI: skipped run {other_id}: {type(err).__name__}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
    table = pd.concat(tables, ignore_index=True)
    ctx.log_parquet(table, cv.ART_ARI)
    ctx.log_metrics({"seconds_ari": time.perf_counter() - t0})
    return len(table)


def design_keys(params: dict[str, str]) -> list[str]:
    """The params two eval runs must share for their clusterings to differ only by the
    seed: the run's params (RunConfig fields and what data went in) less
    NON_DESIGN_PARAMS, plus which checkpoint, evaluation set and protocol."""
    keys = set(params) - NON_DESIGN_PARAMS
    keys |= {cv.PARAM_CHECKPOINT_EPOCH, cv.PARAM_EVAL_SET, PARAM_PROTOCOL, "cluster.algorithm"}
    return sorted(keys)


def find_seed_runs(tracker, run_id: str, params: dict[str, str], eval_index: dict) -> dict:
    """Earlier FINISHED eval runs of the same design (``design_keys``) with another seed.

    ``params`` are the eval run ``run_id``'s params as logged. Returns run id ->
    (assignments, factors) for at most MAX_SEED_RUNS of them, most recent first, that
    stored assignments of the same eval images (``eval_index``). A run whose artifact
    cannot be read is skipped with a warning: this never fails the run.
    """
    from clusterprobe.runners.engine import stability

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
        loaded = _load_assignments(tracker, run.info.run_id)
        if loaded is None:
            continue
        assignments, factors, index = loaded
        if not stability.same_images(eval_index, index):
            continue  # other eval images (e.g. another eval subset): not comparable
        out[run.info.run_id] = assignments, factors
    return out


def _load_assignments(tracker, run_id: str):
    from clusterprobe.runners.engine import stability

    try:
        path = tracker.artifact_path(run_id, cv.ART_ASSIGNMENTS)
        assignments, factors, index = stability.assignments_from_frame(pd.read_parquet(path))
    except FileNotFoundError:
        return None  # a run logged before assignments were recorded: nothing to compare
    except Exception as err:
        warnings.warn(
            f"seed ARI: skipped run {run_id}: cannot read its {cv.ART_ASSIGNMENTS}: {err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return assignments, factors, index
