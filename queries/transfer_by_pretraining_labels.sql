-- transfer_by_pretraining_labels: finding 5 - pre-training on subclass (fine) labels helps
-- transfer clustering only when the downstream domain overlaps the pre-training domain.
-- Transfer eval runs (evaluation set other than the training dataset's own), the last
-- layer each run measured (the pooled last stage), per pre-training dataset x evaluation
-- set x arch x pre-training labels x factor: mean, std and n over runs, and the
-- difference to superclass-label pre-training at the same (NULL where absent).
-- Runs: FINISHED final-checkpoint transfer eval runs.
-- Reads: layer_scores, final_transfer_evals.
-- Columns: pretrain_dataset, eval_set, arch, factor, pretrain_labels, mean, std, n,
--   minus_superclass
-- param dataset VARCHAR : pre-training dataset (default: all)
-- param eval_set VARCHAR : downstream evaluation set (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param metric VARCHAR = ami : ami or purity
-- param factor INTEGER : clusters per class (default: all)
WITH last AS (  -- each run's deepest measured layer
  SELECT s.run_id, e.dataset, e.eval_set, e.arch, e.labels, s.factor,
         arg_max(s.value, s.layer_index) AS value
  FROM layer_scores s JOIN final_transfer_evals e USING (run_id)
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('eval_set') IS NULL OR e.eval_set = getvariable('eval_set'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
    AND s.metric = coalesce(getvariable('metric'), 'ami')
    AND (getvariable('factor') IS NULL OR s.factor = getvariable('factor'))
  GROUP BY ALL
), g AS (
  SELECT dataset AS pretrain_dataset, eval_set, arch, factor, labels AS pretrain_labels,
         avg(value) AS mean, stddev_samp(value) AS std, count(*) AS n
  FROM last GROUP BY ALL
)
SELECT *, mean - max(mean) FILTER (WHERE pretrain_labels = 'superclass')
               OVER (PARTITION BY pretrain_dataset, eval_set, arch, factor) AS minus_superclass
FROM g
ORDER BY pretrain_dataset, eval_set, arch, factor, pretrain_labels;
