"""The views a connection defines (`clusterprobe.queries.connect`) and their columns.

A missing database or table gives empty views with the same columns, so every
query runs on any store and returns zero rows where there is nothing.

Views (stable names; `VIEW_COLUMNS` lists the columns):

* ``runs``: one row per active run (deleted runs and runs of deleted experiments
  are left out): kind, status, parent, times, study/trial links, error line.
* ``params`` (long: run_id, key, value) and ``run_params`` (wide: one column per
  param key, typed where obvious: ints, floats, booleans; '' is NULL).
* ``tags`` (long).
* ``metrics``: every metric of every active run, re-logged values deduplicated
  (per run, key and step the latest timestamp wins; NaN kept as NaN).
* ``layer_scores``: per-layer metrics of eval runs (step = layer index) split into
  metric ('ami', 'purity', 'probe_acc', ...) and factor, with n_layers and
  relative_depth = (layer_index + 1) / n_layers (as the pipeline's layers.json);
  NaN values are left out.
* ``evals``: one row per eval run with the design columns the canned queries group
  by, is_final (last checkpoint), is_transfer (evaluation set != training set),
  rescored (made by `rescore` from another eval run: left out of the canned queries)
  and model_source ('trained': a train run of the store, by `run` or `eval --from`;
  'weights': a weights file, `eval --weights`; 'pretrained': timm's weights, `eval
  --pretrained`; for these two the weights' model run is train_run_id).
* ``final_evals``: the rows of ``evals`` that the paper's in-domain findings average
  over: FINISHED eval runs of the final checkpoint on the training dataset's own
  evaluation set, not rescored (status, is_final, is_transfer and rescored are
  constant here; kept so the view has the columns of ``evals``).
* ``final_transfer_evals``: the same, on another evaluation set (is_transfer true).
* ``epoch_metrics``: train runs' per-epoch metrics (step = epoch; summaries left out).
* ``layer_metrics``: the runs' ``layer_metrics.parquet`` artifacts (per superclass),
  read lazily from the files at query time.
* ``ari``: the runs' ``ari.parquet`` artifacts (layer x layer, seed and checkpoint ARI).
* ``trials`` and ``trial_params``: Optuna trials with state, values, decoded params and
  the linked MLflow run (user attribute ``mlflow_run_id``).
"""

from __future__ import annotations

from clusterprobe.tracker import conventions as cv

# Columns of ``evals`` and of its final-evaluation subsets.
EVALS_COLUMNS: tuple[str, ...] = (
    "run_id",
    "train_run_id",
    "status",
    "dataset",
    "shuffled",
    "arch",
    "arch_family",
    "norm",
    "taps",
    "labels",
    "seed",
    "epochs",
    "checkpoint_epoch",
    "eval_set",
    "protocol",
    "is_final",
    "is_transfer",
    "rescored",
    "model_source",
)

# Columns of every view, in order (the empty views of an empty store have them too).
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": (
        "run_id",
        "experiment_id",
        "experiment",
        "run_name",
        "kind",
        "status",
        "parent_run_id",
        "start_time",
        "end_time",
        "duration_s",
        "study",
        "trial",
        "source_run",
        "error",
        "artifact_uri",
    ),
    "params": ("run_id", "key", "value"),
    "tags": ("run_id", "key", "value"),
    "metrics": ("run_id", "metric", "step", "value", "timestamp"),
    "layer_scores": (
        "run_id",
        "layer_index",
        "n_layers",
        "relative_depth",
        "metric",
        "factor",
        "value",
    ),
    "evals": EVALS_COLUMNS,
    "final_evals": EVALS_COLUMNS,
    "final_transfer_evals": EVALS_COLUMNS,
    "epoch_metrics": ("run_id", "epoch", "metric", "value", "timestamp"),
    "layer_metrics": cv.LAYER_METRICS_COLUMNS,
    "ari": ("run_id", "other_run_id", "kind", "layer_a", "layer_b", "factor", "value"),
    "trials": (
        "study",
        "study_id",
        "trial_id",
        "number",
        "state",
        "value",
        "values",
        "directions",
        "params",
        "run_id",
        "datetime_start",
        "datetime_complete",
        "duration_s",
    ),
    "trial_params": ("study", "trial_id", "number", "param", "value", "value_num"),
}
