-- best_layers: which layer clusters the subclasses best, and how well (the peak of the
-- layer profile). Each eval run's best layer (ties: the shallower one), then per design
-- group x factor the mean, std and n of its index, relative depth and value. Runs:
-- FINISHED eval runs of the final checkpoint on the training dataset's own evaluation set.
-- Reads: layer_scores, final_evals.
-- Columns: dataset, shuffled, arch, taps, labels, metric, factor, best_layer_mean,
--   best_layer_std, best_depth_mean, best_depth_std, best_value_mean, best_value_std, n
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param labels VARCHAR : trained on superclass or subclass labels (default: both)
-- param metric VARCHAR = ami : ami, purity, probe_acc, knn_acc
-- param factor INTEGER : clusters per subclass (default: all)
WITH best AS (  -- arg_max on (value, -layer_index): the best value, then the shallower
  SELECT s.run_id, e.dataset, e.shuffled, e.arch, e.taps, e.labels, s.metric, s.factor,
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
)
SELECT dataset, shuffled, arch, taps, labels, metric, factor,
       avg(b.layer_index) AS best_layer_mean, stddev_samp(b.layer_index) AS best_layer_std,
       avg(b.relative_depth) AS best_depth_mean, stddev_samp(b.relative_depth) AS best_depth_std,
       avg(b.value) AS best_value_mean, stddev_samp(b.value) AS best_value_std, count(*) AS n
FROM best
GROUP BY ALL
ORDER BY dataset, shuffled, arch, taps, labels, metric, factor NULLS FIRST;
