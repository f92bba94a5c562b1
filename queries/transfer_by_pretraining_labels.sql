-- transfer_by_pretraining_labels: finding 5 - pre-training on subclass (fine) labels helps
-- transfer clustering only when the downstream domain overlaps the pre-training domain.
-- Transfer eval runs (evaluation set other than the training dataset's own), the last
-- layer each run measured (the pooled last stage), per pre-training design x evaluation
-- set x factor: mean, std, n and a 95% t-interval (mean +- t(0.975, n-1) std / sqrt(n))
-- over the design's runs, which differ only in their seed (design_key: same design
-- params; design: the params that tell the store's designs apart), and the difference
-- to the superclass-label design with the same other choices on the same set (NULL
-- where there is none); probe_acc and knn_acc: the mean over those runs of the same
-- layer's transfer linear-probe and k-NN accuracy (seeded split of the set; NULL for
-- runs recorded without probes). Runs: FINISHED final-checkpoint transfer eval runs.
-- Reads: layer_scores, final_transfer_evals, design_key_without.
-- Columns: design_key, design, pretrain_dataset, eval_set, arch, factor, pretrain_labels,
--   mean, std, n, ci_lo, ci_hi, probe_acc, knn_acc, minus_superclass
-- param dataset VARCHAR : pre-training dataset (default: all)
-- param eval_set VARCHAR : downstream evaluation set (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param metric VARCHAR = ami : ami or purity
-- param factor INTEGER : clusters per class (default: all)
WITH last AS (  -- each run's deepest measured layer
  SELECT s.run_id, e.design_key, e.design, p.design_key AS partner, e.dataset, e.eval_set,
         e.arch, e.labels, s.factor, arg_max(s.value, s.layer_index) AS value
  FROM layer_scores s JOIN final_transfer_evals e USING (run_id)
  JOIN design_key_without(['labels']) p USING (run_id)
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
  SELECT design_key, design, partner, dataset AS pretrain_dataset, eval_set, arch, factor,
         labels AS pretrain_labels, avg(value) AS mean, stddev_samp(value) AS std,
         count(*) AS n, ci95_half(stddev_samp(value), count(*)) AS half,
         avg(probe_acc) AS probe_acc, avg(knn_acc) AS knn_acc
  FROM last LEFT JOIN acc USING (run_id) GROUP BY ALL
)
SELECT * EXCLUDE (partner, half, probe_acc, knn_acc), mean - half AS ci_lo,
       mean + half AS ci_hi, probe_acc, knn_acc,
       mean - max(mean) FILTER (WHERE pretrain_labels = 'superclass')
                OVER (PARTITION BY partner, eval_set, factor) AS minus_superclass
FROM g
ORDER BY pretrain_dataset, eval_set, arch, partner, factor, pretrain_labels;
