-- transfer_by_pretraining_labels: finding 5 - pre-training on subclass (fine) labels helps
-- transfer clustering only when the downstream domain overlaps the pre-training domain.
-- Transfer eval runs (evaluation set other than the training dataset's own), the last
-- layer each run measured (the pooled last stage), per pre-training dataset x evaluation
-- set x arch x pre-training labels x factor: mean, std and n over runs, and the
-- difference to superclass-label pre-training at the same (NULL where absent);
-- probe_acc and knn_acc: the mean over those runs of the same layer's transfer linear-probe
-- and k-NN accuracy (seeded split of the set; NULL for runs recorded without probes).
-- Runs: FINISHED final-checkpoint transfer eval runs.
-- Reads: layer_scores, final_transfer_evals.
-- Columns: pretrain_dataset, eval_set, arch, factor, pretrain_labels, mean, std, n,
--   probe_acc, knn_acc, minus_superclass
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
), acc AS (  -- the same layer's transfer probe accuracies (factor NULL)
  SELECT run_id,
         arg_max(value, layer_index) FILTER (WHERE metric = 'probe_acc') AS probe_acc,
         arg_max(value, layer_index) FILTER (WHERE metric = 'knn_acc') AS knn_acc
  FROM layer_scores WHERE run_id IN (SELECT run_id FROM last) GROUP BY run_id
), g AS (
  SELECT dataset AS pretrain_dataset, eval_set, arch, factor, labels AS pretrain_labels,
         avg(value) AS mean, stddev_samp(value) AS std, count(*) AS n,
         avg(probe_acc) AS probe_acc, avg(knn_acc) AS knn_acc
  FROM last LEFT JOIN acc USING (run_id) GROUP BY ALL
)
SELECT *, mean - max(mean) FILTER (WHERE pretrain_labels = 'superclass')
               OVER (PARTITION BY pretrain_dataset, eval_set, arch, factor) AS minus_superclass
FROM g
ORDER BY pretrain_dataset, eval_set, arch, factor, pretrain_labels;
