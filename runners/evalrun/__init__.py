"""The eval run: clusterprobe's central record, written and read here only.

An eval run (tag ``clusterprobe.kind = eval``) holds one measurement of one model
on one evaluation set, nested under the train run the model comes from and
repeating its design params, plus ``checkpoint_epoch``, ``eval_set``, ``protocol``
and how the numbers were computed (``cluster.*``, ``whole.*``, ``embed.*``).
Metrics: ``ami_f{k}``, ``purity_f{k}``, ``probe_acc``, ``knn_acc`` at step = layer
index, and the summaries. Artifacts: ``layer_metrics.parquet``, ``layers.json``,
``dataset.json``, pooled embeddings, per-superclass Grams, cluster assignments and
ARI tables, the layer x layer CKA table, the layer-profile plot, the run's report (names in
``tracker.conventions``).

Writers (``pipeline``, ``rescore``, ``transfer``, and every later producer) build an
:class:`EvalSpec`, open the run with :func:`start_eval_run` and record through
``record``; readers (``rescore``, ``export``, the seed-stability search) go through
``stored``. Modules: ``scores`` (the per-layer numbers every run records),
``record`` (writing), ``stored`` (reading back), ``tables`` (the artifact tables'
layouts), ``stability`` (ARI tables, runs that differ only in the seed).
"""

from clusterprobe.runners.evalrun.record import (
    EvalSpec,
    design_params,
    log_distances,
    log_embeddings,
    log_layer_profile,
    log_report,
    record_cka,
    record_dead_layers,
    record_measurement,
    record_scores,
    record_seconds,
    start_eval_run,
)
from clusterprobe.runners.evalrun.scores import LayerScores, format_layers, relative_depth

__all__ = [
    "EvalSpec",
    "LayerScores",
    "design_params",
    "format_layers",
    "log_distances",
    "log_embeddings",
    "log_layer_profile",
    "log_report",
    "record_cka",
    "record_dead_layers",
    "record_measurement",
    "record_scores",
    "record_seconds",
    "relative_depth",
    "start_eval_run",
]
