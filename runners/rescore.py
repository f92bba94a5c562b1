"""Re-cluster a stored eval run without the model: a new eval run from its artifacts.

Default: the paper's per-superclass protocol on the run's stored Gram matrices, and
the layer x layer CKA from the same Grams (``cka.parquet``; runs recorded before CKA
get it this way without a forward pass). With ``method``: whole-dataset clustering of each layer's stored pooled embeddings
(``engine.whole``). Either way the result is a NEW eval run nested under the same
train run (tag ``clusterprobe.source_run``), with the same metric names. Every
artifact is read and checked before the new run starts, so a corrupt or missing
file is one UsageError line and stores nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from clusterprobe.runners import evalrun
from clusterprobe.runners.choices import WHOLE_METHODS
from clusterprobe.runners.evalrun import stored
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError


@dataclass
class RescoreResult:
    run_id: str  # the new eval run
    parent_run_id: str  # the train run both are nested under
    scores: evalrun.LayerScores
    summary: dict[str, float]


def rescore(
    tracker,
    run_id: str,
    *,
    factors: tuple[int, ...] | None = None,
    method: str | None = None,
    cka: str | None = None,
    quiet: bool = True,
) -> RescoreResult:
    """Re-cluster eval run ``run_id`` (per superclass, or whole with ``method``) into a new
    eval run nested under the same train run. Per superclass, CKA between its layers is
    recorded too, with estimator ``cka`` (default: the source run's, else linear)."""
    source = stored.open_eval_run(tracker, run_id)
    params = dict(source.data.params)
    parent = source.data.tags.get(cv.TAG_PARENT)
    if not parent:
        raise UsageError(f"RUN_ID {run_id!r} is not nested under a train run")
    if method is None and params.get(cv.PARAM_PROTOCOL) == "whole":
        raise UsageError(
            f"RUN_ID {run_id!r} was clustered as a whole dataset (no superclasses); "
            f"re-score it with a whole-dataset method ({', '.join(WHOLE_METHODS)})"
        )
    if method is not None and cka is not None:
        raise UsageError(
            f"--cka {cka}: CKA comes from the stored Grams of a per-superclass re-score; "
            "drop --cka or --method"
        )
    factors = tuple(sorted(set(factors or _source_factors(params)) | {1}))
    estimator = cka or params.get(cv.PARAM_CKA) or "linear"
    # Read and check everything before a run exists: a bad file stores nothing.
    similarity = None
    if method is None:
        inputs = stored.load_distances(tracker, run_id)
        similarity = _layer_cka(inputs, estimator)
    else:
        inputs = stored.load_pooled(tracker, run_id)
    dataset = stored.dataset_record(tracker, run_id)
    if not quiet:
        how = "per superclass" if method is None else f"whole dataset, {method}"
        print(
            f"clusterprobe: re-scoring {run_id} ({how}, factors {','.join(map(str, factors))})",
            file=sys.stderr,
        )
    if method is None:
        scores, how = _per_superclass(inputs, factors)
    else:
        scores, how = _whole(inputs, factors, method, seed=int(params.get("seed", 0) or 0))
    spec = evalrun.EvalSpec(
        parent_run_id=parent,
        design=evalrun.design_params(params),
        checkpoint_epoch=params.get(cv.PARAM_CHECKPOINT_EPOCH, ""),
        eval_set=params.get(cv.PARAM_EVAL_SET, ""),
        protocol="per_superclass" if method is None else "whole",
        run_name=f"rescore {source.info.run_name or run_id}",
        tags=_rescore_tags(source, run_id),
        extra={
            "factors": ",".join(map(str, factors)),
            **({cv.PARAM_CKA: estimator} if similarity is not None else {}),
        },
        dataset=dataset,
    )
    with evalrun.start_eval_run(tracker, spec) as ctx:
        summary = evalrun.record_scores(ctx, scores, how)
        if similarity is not None:
            evalrun.record_cka(ctx, similarity)
    return RescoreResult(ctx.run_id, parent, scores, summary)


def _layer_cka(inputs: stored.StoredDistances, estimator: str):
    """CKA between the stored layers; an estimator the stored images cannot carry is bad
    input (one line, nothing stored)."""
    from clusterprobe.runners.engine.cka import cka_by_superclass

    try:
        return cka_by_superclass(inputs.grams, estimator=estimator)
    except ValueError as err:
        raise UsageError(f"--cka {estimator}: {err}") from None


def _source_factors(params: dict) -> tuple[int, ...]:
    from clusterprobe.runners.config import parse_factors

    return parse_factors(params.get("eval_factors") or params.get("factors") or "1-5")


def _rescore_tags(source, run_id: str) -> dict[str, str]:
    tags = {cv.TAG_SOURCE_RUN: run_id}
    if cv.TAG_DEVICE in source.data.tags:
        tags[cv.TAG_DEVICE] = source.data.tags[cv.TAG_DEVICE]
    return tags


def _per_superclass(inputs: stored.StoredDistances, factors):
    """The paper's protocol on the stored Grams (and the pixel baseline, when stored)."""
    from clusterprobe.runners.engine.cluster import cluster_protocol

    result = cluster_protocol(inputs.grams, inputs.subclass, factors)
    pixel = None
    if inputs.pixel_grams:
        pixel = float(np.mean(cluster_protocol(inputs.pixel_grams, inputs.subclass, (1,)).ami))
    scores = evalrun.LayerScores(
        layer_names=inputs.layer_names,
        superclasses=list(result.superclasses),
        factors=factors,
        ami=np.asarray(result.ami, dtype=float),
        purity=np.asarray(result.purity, dtype=float),
        pixel_ami_f1=pixel,
    )
    return scores, {f"cluster.{k}": str(v) for k, v in (result.params or {}).items()}


def _whole(inputs: stored.StoredPooled, factors, method: str, seed: int):
    """Whole-dataset clustering of every layer's pooled embeddings against the subclasses."""
    from clusterprobe.runners.engine.whole import score_layers

    ami, purity, params = score_layers(
        inputs.pooled, inputs.subclass, factors, method=method, seed=seed
    )
    scores = evalrun.LayerScores(
        layer_names=inputs.layer_names,
        superclasses=[None],  # one whole-dataset clustering: superclass NULL in the table
        factors=factors,
        ami=ami[:, None, :],
        purity=purity[:, None, :],
    )
    return scores, {f"whole.{k}": v for k, v in params.items()}
