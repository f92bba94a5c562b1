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
* ``design_params``: the design params of every eval run (long: run_id, key, value,
  derived), by the one rule of `tracker.conventions.is_design_param`; derived marks
  the dataset record (what data went in), which follows from the data choices.
* ``evals``: one row per eval run: design_key (same design params, same key: the
  canned queries group by it, so only seeds are averaged), design (``key=value`` of
  the params that vary between the store's eval runs: what tells groups apart), the
  columns the queries filter and show, is_final (last checkpoint), is_transfer
  (evaluation set != training set), rescored (made by `rescore` from another eval
  run: left out of the canned queries), model_source ('trained': a train run of the
  store, by `run` or `eval --from`; 'weights': a weights file, `eval --weights`;
  'pretrained': timm's weights, `eval --pretrained`; for these two the weights' model
  run is train_run_id) and is_repeat (an earlier FINISHED eval run measured the same
  checkpoint of the same model on the same set: left out of the final views, so the
  findings count each model once).
* ``final_evals``: the rows of ``evals`` that the paper's in-domain findings average
  over: FINISHED eval runs of the final checkpoint on the training dataset's own
  evaluation set, not rescored, not repeats (status, is_final, is_transfer and rescored are
  constant here; kept so the view has the columns of ``evals``).
* ``final_transfer_evals``: the same, on another evaluation set (is_transfer true).
* ``epoch_metrics``: train runs' per-epoch metrics (step = epoch; summaries left out).
* ``layer_metrics``: the runs' ``layer_metrics.parquet`` artifacts (per superclass),
  read lazily from the files at query time.
* ``ari``: the runs' ``ari.parquet`` artifacts (layer x layer, seed and checkpoint ARI;
  kind 'compare': written by compare runs, run_id's layer_a vs other_run_id's layer_b).
* ``cka``: the runs' ``cka.parquet`` artifacts: CKA between layers, per superclass and
  averaged (superclass NULL), with the estimator (linear or debiased); kind 'layer' (two
  layers of one eval run) or 'compare' (as in ``ari``). Comparing the same two runs
  twice gives their rows twice (``run_pairs`` lists both compare runs).
* ``run_pairs``: one row per compare run: the two eval runs (run_a, run_b), the CKA
  estimator, the eval set, and each side's train run, arch, seed and checkpoint epoch.
* ``trials`` and ``trial_params``: Optuna trials with state, values, decoded params and
  the linked MLflow run (user attribute ``mlflow_run_id``), from an RDB storage or a
  journal file.

Macros: ``t975(df)`` and ``ci95_half(std, n)`` (`clusterprobe.queries.intervals`: the
95% t-intervals of the grouped queries) and ``design_key_without(skip)``
(`clusterprobe.queries.design_views`: pairs a design with its counterpart).
"""

from __future__ import annotations

from clusterprobe.tracker import conventions as cv

# Columns of ``evals`` and of its final-evaluation subsets.
EVALS_COLUMNS: tuple[str, ...] = (
    "run_id",
    "train_run_id",
    "design_key",
    "design",
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
    "is_repeat",
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
    "design_params": ("run_id", "key", "value", "derived"),
    "evals": EVALS_COLUMNS,
    "final_evals": EVALS_COLUMNS,
    "final_transfer_evals": EVALS_COLUMNS,
    "epoch_metrics": ("run_id", "epoch", "metric", "value", "timestamp"),
    "layer_metrics": cv.LAYER_METRICS_COLUMNS,
    "ari": ("run_id", "other_run_id", "kind", "layer_a", "layer_b", "factor", "value"),
    "cka": cv.CKA_COLUMNS,
    "run_pairs": (
        "run_id",
        "status",
        "run_a",
        "run_b",
        "cka_estimator",
        "eval_set",
        "train_run_a",
        "train_run_b",
        "arch_a",
        "arch_b",
        "seed_a",
        "seed_b",
        "checkpoint_epoch_a",
        "checkpoint_epoch_b",
    ),
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
