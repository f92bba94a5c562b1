"""Write an eval run: open it (the only code that starts one), then its scores and artifacts.

Every producer of eval runs (``pipeline``: a model trained here; ``rescore``: stored
Grams or embeddings re-clustered; ``transfer``: a stored model on another set)
describes the run with an :class:`EvalSpec`, opens it with :func:`start_eval_run`
and writes through the ``record_*`` / ``log_*`` functions below, so every eval run
has the same params, metric names and artifact layout (tracker.conventions).

Opening the run also records what it measured, as MLflow sees it: its dataset (the
``dataset.json`` artifact and an MLflow dataset input, context ``eval``) and, where it
measures a train run's final checkpoint, that run's logged model (a model input);
the summary metrics are then linked to the model, so its page lists them per dataset.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from clusterprobe.runners.data.record import dataset_info
from clusterprobe.runners.evalrun import tables
from clusterprobe.runners.evalrun.scores import LayerScores
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.killpoint import kill_point

PROTOCOLS = ("per_superclass", "whole")  # the paper's in-domain protocol | one whole set

# Params that say how a source eval run was measured, not what model it measured:
# dropped when a stored eval run or model is measured again (rescore, transfer). Not
# the design rule of the queries (conventions.is_design_param): the new run keeps what
# describes its model and its inputs (seed, embed.* of the Grams it re-clusters).
REMEASURE_DROPS = (
    "factors",
    "eval_factors",
    cv.PARAM_PROTOCOL,
    "probe_train_images",
    cv.PARAM_CHECKPOINT_EPOCH,
    cv.PARAM_EVAL_SET,
    cv.PARAM_TEST_ACC_LABELS,
    cv.PARAM_CKA,
)
REMEASURE_DROP_PREFIXES = ("cluster.", "whole.")


def design_params(params: Mapping[str, str]) -> dict[str, str]:
    """A stored run's params less how it was measured: the model's design, to repeat."""
    return {
        k: v
        for k, v in params.items()
        if k not in REMEASURE_DROPS and not k.startswith(REMEASURE_DROP_PREFIXES)
    }


@dataclass(frozen=True)
class EvalSpec:
    """Which model an eval run measures, on which set and how; its place in the run tree."""

    parent_run_id: str  # the train run (or model run) the measured model comes from
    # The model's design params, repeated on the eval run; cv.PARAM_MODEL_SOURCE among
    # them where the model is not one trained here (it defaults to "trained").
    design: Mapping[str, str]
    checkpoint_epoch: str  # which checkpoint of the train run ('' if unknown)
    eval_set: str  # "<dataset>:eval", or a transfer set's name
    protocol: str  # one of PROTOCOLS
    run_name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)  # more params (transfer.*, factors)
    # The eval set's dataset record (data.record.dataset_record, or a transfer set's):
    # dataset.json and the MLflow dataset input. None where unknown (an old stored run).
    dataset: Mapping | None = None

    def params(self) -> dict[str, str]:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        out = {cv.PARAM_MODEL_SOURCE: "trained", **self.design}
        if out[cv.PARAM_MODEL_SOURCE] not in cv.MODEL_SOURCES:
            raise ValueError(
                f"model source {out[cv.PARAM_MODEL_SOURCE]!r}: choose one of "
                f"{', '.join(cv.MODEL_SOURCES)}"
            )
        if self.checkpoint_epoch != "":
            out[cv.PARAM_CHECKPOINT_EPOCH] = str(self.checkpoint_epoch)
        out[cv.PARAM_EVAL_SET] = self.eval_set
        out[cv.PARAM_PROTOCOL] = self.protocol
        out.update({k: str(v) for k, v in self.extra.items()})
        return out


def start_eval_run(tracker, spec: EvalSpec):
    """Create the RUNNING eval run ``spec`` describes, nested under its train run, with its
    dataset and the logged model it measures (module docstring); returns the tracker's run
    context (use it as ``with``: a crash ends the run FAILED)."""
    from clusterprobe.tracker.logged_models import use_model

    ctx = tracker.start_run(
        "eval",
        params=spec.params(),
        parent_run_id=spec.parent_run_id,
        tags=dict(spec.tags),
        run_name=spec.run_name,
    )
    try:
        if spec.dataset is not None:
            record_dataset(ctx, spec.dataset)
        model_id = measured_model(tracker, spec)
        if model_id is not None:
            use_model(ctx, model_id)
    except BaseException as exc:
        ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return ctx


def measured_model(tracker, spec: EvalSpec) -> str | None:
    """The logged model an eval run measures: its train run's, where it measures that
    run's final checkpoint (an intermediate one is another model); else None."""
    parent = tracker.get_run(spec.parent_run_id)
    model_id = parent.data.tags.get(cv.TAG_MODEL_ID)
    final = parent.data.params.get("epochs")
    if model_id and final and str(spec.checkpoint_epoch) == final:
        return model_id
    return None


# --- what every eval run records ----------------------------------------------------------


def record_scores(ctx, scores: LayerScores, how: Mapping[str, str]) -> dict[str, float]:
    """Log the per-layer scores into the open eval run ``ctx``: how they were computed
    (``how``: prefixed params such as ``cluster.*`` or ``whole.*``), the factors, the
    per-layer series (step = layer index, so the MLflow UI draws the profile), the
    summary metrics, layer_metrics.parquet and layers.json. Returns the summary."""
    ctx.log_params({**how, "eval_factors": ",".join(map(str, scores.factors))})
    ctx.log_metric_table(scores.series())
    summary = scores.summary()
    ctx.log_metrics(summary, linked=True)
    ctx.log_parquet(tables.layer_metrics_table(ctx.run_id, scores), cv.ART_LAYER_METRICS)
    ctx.log_json(tables.layers_json(scores.layer_names), cv.ART_LAYERS)
    return summary


def record_measurement(
    ctx, meas, *, labels, save, title: str, probe_train_images: int | None
) -> dict[str, float]:
    """Log a checkpoint measured on its training set's eval split (``measure.Measurement``)
    into the open eval run ``ctx``: how it was embedded and clustered, dead layers, the
    scores, the model's own accuracy where measured (``test_acc``), timings,
    ``cka.parquet``, and the heavy artifacts ``save`` names (embeddings, distances,
    plots). ``labels``: the eval split's labels. Returns the summary."""
    emb = meas.embedding
    params = {f"embed.{k}": str(v) for k, v in (emb.params or {}).items()}
    if probe_train_images is not None:
        params["probe_train_images"] = str(probe_train_images)
    if meas.test_acc is not None:
        params[cv.PARAM_TEST_ACC_LABELS] = meas.test_acc_labels
    ctx.log_params(params)
    record_dead_layers(ctx, meas.scores.layer_names, emb.dead, meas.protocol.dead)
    how = {f"cluster.{k}": str(v) for k, v in meas.cluster_params.items()}
    summary = record_scores(ctx, meas.scores, how)
    if meas.test_acc is not None:
        summary[cv.TEST_ACC_METRIC] = meas.test_acc
        ctx.log_metrics({cv.TEST_ACC_METRIC: meas.test_acc}, linked=True)
    record_seconds(ctx, meas.seconds)
    if meas.cka is not None:
        record_cka(ctx, meas.cka)
    kill_point("artifacts")
    if "embeddings" in save:
        log_embeddings(ctx, emb.pooled, labels.superclass, labels.subclass)
    if "distances" in save:
        log_distances(ctx, emb.grams, emb.pixel_grams, emb.eval_index, labels.subclass)
    if "plots" in save:
        log_layer_profile(ctx, meas.scores, title)
    return summary


def record_cka(ctx, cka) -> None:
    """``cka.parquet``: CKA between the run's layers (an ``engine.cka.CkaMatrices``)."""
    ctx.log_parquet(tables.cka_frame(ctx.run_id, ctx.run_id, "layer", cka), cv.ART_CKA)


def record_dataset(ctx, record: Mapping) -> None:
    """``dataset.json`` (which classes and how many images went in) and the same record as
    the run's MLflow dataset input (context ``eval``)."""
    from clusterprobe.tracker.datasets import log_dataset

    ctx.log_json(dict(record), cv.ART_DATASET_RECORD)
    log_dataset(ctx, dataset_info(record), "eval")


def record_seconds(ctx, seconds: Mapping[str, float]) -> None:
    ctx.log_metrics({f"seconds_{k}": float(v) for k, v in seconds.items()})


def record_dead_layers(ctx, layer_names, *sources: Mapping) -> None:
    """Layers whose activations are all zero for some images (``{layer: superclasses}``
    from each source): warned about, and recorded as a param and a tag."""
    dead: dict[int, set[int]] = {}
    for source in sources:
        for layer, sups in (source or {}).items():
            dead.setdefault(int(layer), set()).update(int(s) for s in sups)
    dead = {k: v for k, v in dead.items() if v}
    if not dead:
        return
    names = ", ".join(f"{i} ({layer_names[i]})" for i in sorted(dead))
    warnings.warn(
        f"dead layers (all-zero activations for some images): {names}",
        RuntimeWarning,
        stacklevel=3,
    )
    ctx.log_params({cv.PARAM_DEAD_LAYERS: ",".join(map(str, sorted(dead)))})
    tag = {str(k): sorted(v) for k, v in sorted(dead.items())}
    ctx.set_tags({cv.TAG_DEAD_LAYERS: json.dumps(tag, sort_keys=True)})


def log_embeddings(ctx, pooled, superclass, subclass) -> None:
    """Pooled embeddings per layer and their labels (read back by ``stored.load_pooled``)."""
    for i, x in enumerate(pooled):
        ctx.log_numpy(
            np.ascontiguousarray(x, dtype=np.float32),
            f"{cv.ART_EMBED_DIR}/{cv.EMBED_POOLED.format(layer=i)}",
        )
    ctx.log_parquet(
        tables.labels_frame(superclass, subclass), f"{cv.ART_EMBED_DIR}/{cv.EMBED_LABELS}"
    )


def log_distances(ctx, grams: Mapping, pixel_grams: Mapping, eval_index: Mapping, subclass):
    """Per-superclass Gram matrices (float32; float64 ones, from an fp64 measurement, stay
    float64 so a re-score sees the same numbers) and their row index (read back by
    ``stored.load_distances``)."""
    for s in sorted(grams):
        path = f"{cv.ART_DIST_DIR}/{cv.DIST_GRAM.format(superclass=s)}"
        ctx.log_numpy(_stored_dtype(grams[s]), path)
        if s in pixel_grams:
            path = f"{cv.ART_DIST_DIR}/{cv.DIST_PIXEL.format(superclass=s)}"
            ctx.log_numpy(_stored_dtype(pixel_grams[s]), path)
    index = tables.distance_index_frame(eval_index, subclass)
    ctx.log_parquet(index, f"{cv.ART_DIST_DIR}/{cv.DIST_INDEX}")


def _stored_dtype(gram) -> np.ndarray:
    gram = np.asarray(gram)
    return gram if gram.dtype == np.float64 else gram.astype(np.float32, copy=False)


def log_layer_profile(ctx, scores: LayerScores, title: str) -> None:
    """``layer_profile.png``: AMI over depth beside probe and k-NN accuracy."""
    import matplotlib.pyplot as plt
    from clusterprobe.runners.plots import layer_profile

    fig = layer_profile(
        scores.layer_names,
        scores.mean_ami(),
        scores.factors,
        scores.probe_acc,
        knn_acc=scores.knn_acc,
        pixel_ami=scores.pixel_ami_f1,
        title=title,
    )
    ctx.log_figure(fig, cv.ART_PLOT)
    plt.close(fig)


def log_report(ctx) -> None:
    """``report.html``: the run's one-page report (``runners.report.run_report``), built
    from what the run has stored so far, so it shows what ``clusterprobe report`` shows.
    A page that cannot be drawn is a warning: the measurement it shows is already stored,
    and ``clusterprobe report`` can draw it later."""
    from clusterprobe.runners.report.run_report import eval_run_report

    try:
        html = eval_run_report(ctx.tracker, ctx.run_id)
    except Exception as err:
        warnings.warn(
            f"eval run {ctx.run_id}: no {cv.ART_REPORT} ({type(err).__name__}: {err})",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    ctx.log_text(html, cv.ART_REPORT)
