"""Views of the runs' scores, shaped for the canned queries: ``layer_scores``,
``evals``, ``final_evals``, ``final_transfer_evals``, ``epoch_metrics`` and
``run_pairs`` (the compare runs, with the design of the two eval runs each compared).

They read the ``snap`` tables that `run_views` and `design_views` build (``run_tags``,
``run_params``, ``designs``): per-layer metrics of eval runs with their relative
depth, one row per eval run with its design key (and the final evaluations the
paper's findings average over), and train runs' per-epoch metrics.
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.sql_text import execute, quote
from clusterprobe.tracker import conventions as cv

# The final evaluations: FINISHED eval runs of a model's last checkpoint, measured
# as the run measured them (not re-scored from another eval run). ``final_evals``
# adds "on the training dataset's own evaluation set", ``final_transfer_evals`` "on
# another set". One definition, so every canned query counts the same runs.
FINAL_EVAL = "status = 'FINISHED' AND is_final AND NOT rescored AND NOT is_repeat"

# Per-layer metrics of eval runs (step = layer index): ami_f<k>, purity_f<k>, and
# accuracies measured per layer. Anything else on an eval run is a run-level summary.
LAYER_METRIC_RE = r"^((ami|purity)_f[0-9]+|probe_acc|knn_acc)$"


def define_score_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    summaries = ", ".join(quote(k) for k in cv.SUMMARY_METRICS)
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.layer_scores AS
WITH keys AS (  -- the few distinct metric names, parsed once (not per row)
  SELECT metric AS key, regexp_extract(metric, '^(.*?)(_f[0-9]+)?$', 1) AS name,
         TRY_CAST(regexp_extract(metric, '_f([0-9]+)$', 1) AS INTEGER) AS factor
  FROM (SELECT DISTINCT metric FROM snap.metrics)
  WHERE regexp_matches(metric, {quote(LAYER_METRIC_RE)})
), s AS (
  SELECT m.run_id, CAST(m.step AS INTEGER) AS layer_index, k.name AS metric, k.factor, m.value
  FROM snap.metrics m JOIN keys k ON m.metric = k.key JOIN snap.run_tags t USING (run_id)
  WHERE t.kind = {quote("eval")}
    AND NOT isnan(m.value)  -- a metric that could not be computed: kept in `metrics` only
), n AS (
  SELECT run_id, CAST(max(layer_index) + 1 AS INTEGER) AS n_layers FROM s GROUP BY run_id
)
SELECT s.run_id, s.layer_index, n.n_layers,
       (s.layer_index + 1) / n.n_layers::DOUBLE AS relative_depth, s.metric, s.factor, s.value
FROM s JOIN n USING (run_id)""",
    )
    execute(
        con,
        setup,
        "CREATE VIEW layer_scores AS SELECT run_id, layer_index, n_layers, relative_depth, "
        "metric, factor, value FROM snap.layer_scores",
    )
    # One row per eval run: its design (key and the params that tell designs apart,
    # from `design_views`), and columns the canned queries filter and show. norm (VGG only, as
    # runners/models.py resolves it): the `norm` param when it names one (none, bn,
    # ln), else from the timm name (vgg16_bn -> bn); NULL for other families.
    # model_source: where the measured model came from, 'trained' (here), 'weights' (a
    # file) or 'pretrained' (timm's weights; for both, train_run_id is then the weights'
    # model run); runs logged before the param existed were all trained here. is_repeat:
    # an earlier eval run (of the same status class) measured the same checkpoint of the
    # same model on the same set the same way (`eval --from` of a run's own final
    # checkpoint, a weights file evaluated twice): the findings count each model once,
    # so the final views leave repeats out.
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.evals AS
SELECT p.run_id, t.parent_run_id AS train_run_id, d.design_key, d.design, r.status, p.dataset,
       coalesce(p.{cv.PARAM_SHUFFLED}, false) AS shuffled, p.arch,
       coalesce(regexp_extract(p.arch, '^(resnet|resnext|vgg|vit|deit|convnext|efficientnet|mobilenet|regnet|swin)', 1),
                p.arch) AS arch_family,
       CASE WHEN p.norm IN ('none', 'bn', 'ln') THEN p.norm
            WHEN p.arch LIKE 'vgg%\\_bn' ESCAPE '\\' THEN 'bn'
            WHEN p.arch LIKE 'vgg%' THEN 'none' END AS norm,
       p.taps, p.labels, p.seed, p.epochs, p.{cv.PARAM_CHECKPOINT_EPOCH},
       p.{cv.PARAM_EVAL_SET},
       coalesce(p.protocol, 'per_superclass') AS protocol,
       (p.{cv.PARAM_CHECKPOINT_EPOCH} IS NULL OR p.epochs IS NULL
        OR p.{cv.PARAM_CHECKPOINT_EPOCH} >= p.epochs) AS is_final,
       coalesce(NOT starts_with(lower(p.{cv.PARAM_EVAL_SET}), lower(p.dataset)), false)
         AS is_transfer,
       t.source_run IS NOT NULL AS rescored,
       coalesce(p.{cv.PARAM_MODEL_SOURCE}, 'trained') AS model_source,
       row_number() OVER (
         -- an eval run with no parent is nobody's repeat
         PARTITION BY coalesce(t.parent_run_id, p.run_id), p.{cv.PARAM_CHECKPOINT_EPOCH},
                      p.{cv.PARAM_EVAL_SET},
                      coalesce(p.protocol, 'per_superclass'), t.source_run IS NULL,
                      r.status = 'FINISHED'
         ORDER BY r.start_time, p.run_id) > 1 AS is_repeat
FROM snap.run_params p JOIN snap.runs r USING (run_id) JOIN snap.run_tags t USING (run_id)
LEFT JOIN snap.designs d USING (run_id)
WHERE t.kind = 'eval'""",
    )
    execute(con, setup, "CREATE VIEW evals AS SELECT * FROM snap.evals")
    execute(
        con,
        setup,
        f"CREATE VIEW final_evals AS SELECT * FROM snap.evals WHERE {FINAL_EVAL} AND NOT is_transfer",
    )
    execute(
        con,
        setup,
        "CREATE VIEW final_transfer_evals AS SELECT * FROM snap.evals "
        f"WHERE {FINAL_EVAL} AND is_transfer",
    )
    execute(
        con,
        setup,
        f"""CREATE VIEW epoch_metrics AS
SELECT m.run_id, CAST(m.step AS INTEGER) AS epoch, m.metric, m.value, m.timestamp
FROM snap.metrics m JOIN snap.run_tags t USING (run_id)
WHERE t.kind = {quote("train")} AND m.metric NOT IN ({summaries})""",
    )
    define_pair_view(con, setup)


def define_pair_view(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    """``run_pairs``: one row per compare run, naming its two eval runs (tags) with their
    design, so the ``cka`` and ``ari`` rows of kind 'compare' can be read by what differs."""
    execute(
        con,
        setup,
        f"""CREATE VIEW run_pairs AS
WITH c AS (
  SELECT run_id, max(value) FILTER (WHERE key = {quote(cv.TAG_COMPARE_A)}) AS run_a,
         max(value) FILTER (WHERE key = {quote(cv.TAG_COMPARE_B)}) AS run_b
  FROM snap.tags GROUP BY run_id
)
SELECT c.run_id, r.status, c.run_a, c.run_b, p.{cv.PARAM_CKA} AS cka_estimator, a.eval_set,
       a.train_run_id AS train_run_a, b.train_run_id AS train_run_b,
       a.arch AS arch_a, b.arch AS arch_b, a.seed AS seed_a, b.seed AS seed_b,
       a.checkpoint_epoch AS checkpoint_epoch_a, b.checkpoint_epoch AS checkpoint_epoch_b
FROM c JOIN snap.runs r USING (run_id) JOIN snap.run_tags t USING (run_id)
LEFT JOIN snap.run_params p USING (run_id)
LEFT JOIN snap.evals a ON a.run_id = c.run_a
LEFT JOIN snap.evals b ON b.run_id = c.run_b
WHERE t.kind = {quote("compare")}""",
    )
