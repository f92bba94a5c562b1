-- training_dynamics: clusterability over training - AMI at each evaluated checkpoint
-- (eval runs with param checkpoint_epoch; `run --eval-epochs` adds intermediate ones).
-- One row per design x checkpoint epoch x layer (layer_index NULL: each run's best
-- layer) x factor, with mean, std, n and a 95% t-interval (mean +- t(0.975, n-1) std /
-- sqrt(n)) over the design's runs, which differ only in their seed (design_key: same
-- design params; design: the params that tell the store's designs apart; the
-- checkpoint is not part of the design).
-- Runs: FINISHED in-domain eval runs that name their checkpoint epoch, not re-scored or
-- repeated (a second eval of the same checkpoint on the same set counts once).
-- Reads: layer_scores, evals.
-- Columns: design_key, design, dataset, shuffled, arch, labels, factor, checkpoint_epoch,
--   layer_index, relative_depth, mean, std, n, ci_lo, ci_hi
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param labels VARCHAR : trained on superclass or subclass labels (default: both)
-- param metric VARCHAR = ami : ami, purity, probe_acc, knn_acc
-- param factor INTEGER = 1 : clusters per subclass (`--param factor=`: all)
WITH s AS (
  SELECT e.run_id, e.design_key, e.design, e.dataset, e.shuffled, e.arch, e.labels,
         s.factor, e.checkpoint_epoch, s.layer_index, s.relative_depth, s.value
  FROM layer_scores s JOIN evals e USING (run_id)
  WHERE e.status = 'FINISHED' AND e.checkpoint_epoch IS NOT NULL AND NOT e.is_transfer
    AND NOT e.rescored AND NOT e.is_repeat
    AND (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
    AND (getvariable('shuffled') IS NULL OR e.shuffled = getvariable('shuffled'))
    AND (getvariable('labels') IS NULL OR e.labels = getvariable('labels'))
    AND s.metric = coalesce(getvariable('metric'), 'ami')
    AND (getvariable('factor') IS NULL OR s.factor = getvariable('factor'))
), per_layer AS (
  SELECT design_key, design, dataset, shuffled, arch, labels, factor, checkpoint_epoch,
         layer_index, avg(relative_depth) AS relative_depth, avg(value) AS mean,
         stddev_samp(value) AS std, count(*) AS n,
         ci95_half(stddev_samp(value), count(*)) AS half
  FROM s GROUP BY ALL
), best AS (
  SELECT design_key, design, dataset, shuffled, arch, labels, factor, checkpoint_epoch,
         NULL::INTEGER AS layer_index, NULL::DOUBLE AS relative_depth, avg(value) AS mean,
         stddev_samp(value) AS std, count(*) AS n,
         ci95_half(stddev_samp(value), count(*)) AS half
  FROM (SELECT run_id, design_key, design, dataset, shuffled, arch, labels, factor,
               checkpoint_epoch, max(value) AS value
        FROM s GROUP BY ALL)
  GROUP BY ALL
)
SELECT * EXCLUDE (half), mean - half AS ci_lo, mean + half AS ci_hi
FROM (SELECT * FROM per_layer UNION ALL SELECT * FROM best)
ORDER BY dataset, shuffled, arch, labels, design, factor, layer_index NULLS FIRST,
         checkpoint_epoch;
