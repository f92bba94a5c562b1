-- best_layers: which layer clusters the subclasses best, and how well (the peak of the
-- layer profile). Each eval run's best layer (ties: the shallower one), then per design x
-- factor the mean, std and n of its index, relative depth and value, and a 95%
-- t-interval of the best value (mean +- t(0.975, n-1) std / sqrt(n)) over the design's
-- runs, which differ only in their seed (design_key: same design params; design: the
-- params that tell the store's designs apart). Runs: FINISHED eval runs of the final
-- checkpoint on the training dataset's own evaluation set.
-- Reads: layer_scores, final_evals.
-- Columns: design_key, design, dataset, shuffled, arch, taps, labels, metric, factor,
--   best_layer_mean, best_layer_std, best_depth_mean, best_depth_std, best_value_mean,
--   best_value_std, n, best_value_ci_lo, best_value_ci_hi
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param labels VARCHAR : trained on superclass or subclass labels (default: both)
-- param metric VARCHAR = ami : ami, purity, probe_acc, knn_acc
-- param factor INTEGER : clusters per subclass (default: all)
WITH best AS (  -- arg_max on (value, -layer_index): the best value, then the shallower
  SELECT s.run_id, e.design_key, e.design, e.dataset, e.shuffled, e.arch, e.taps, e.labels,
         s.metric, s.factor,
         arg_max({'layer_index': s.layer_index, 'relative_depth': s.relative_depth,
                  'value': s.value},
                 {'value': s.value, 'shallower': -s.layer_index}) AS b
  FROM layer_scores s JOIN final_evals e USING (run_id)
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
    AND (getvariable('shuffled') IS NULL OR e.shuffled = getvariable('shuffled'))
    AND (getvariable('labels') IS NULL OR e.labels = getvariable('labels'))
    AND (getvariable('metric') IS NULL OR s.metric = getvariable('metric'))
    AND (getvariable('factor') IS NULL OR s.factor = getvariable('factor'))
  GROUP BY ALL
), g AS (
  SELECT design_key, design, dataset, shuffled, arch, taps, labels, metric, factor,
         avg(b.layer_index) AS best_layer_mean, stddev_samp(b.layer_index) AS best_layer_std,
         avg(b.relative_depth) AS best_depth_mean,
         stddev_samp(b.relative_depth) AS best_depth_std,
         avg(b.value) AS best_value_mean, stddev_samp(b.value) AS best_value_std,
         count(*) AS n, ci95_half(stddev_samp(b.value), count(*)) AS half
  FROM best
  GROUP BY ALL
)
SELECT * EXCLUDE (half), best_value_mean - half AS best_value_ci_lo,
       best_value_mean + half AS best_value_ci_hi
FROM g
ORDER BY dataset, shuffled, arch, taps, labels, design, metric, factor NULLS FIRST;
