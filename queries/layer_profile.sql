-- layer_profile: how subclass clusterability changes with depth (the paper's per-layer
-- AMI/purity curves; finding 1 and every layer plot). One row per design x layer x metric
-- x factor with mean, std, n and a 95% t-interval (mean +- t(0.975, n-1) std / sqrt(n))
-- over the design's runs, which differ only in their seed (design_key: runs with the
-- same design params; design: the params that tell the store's designs apart). Runs:
-- FINISHED eval runs of the final checkpoint on the training dataset's own evaluation
-- set; with run_id set, that one run (any checkpoint or set: n = 1, std and interval NULL).
-- Reads: layer_scores, final_evals, evals.
-- Columns: design_key, design, dataset, shuffled, arch, taps, labels, layer_index,
--   relative_depth, metric, factor, mean, std, n, ci_lo, ci_hi
-- param run_id VARCHAR : one eval run (default: all runs)
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param labels VARCHAR : trained on superclass or subclass labels (default: both)
-- param metric VARCHAR : ami, purity, probe_acc, knn_acc (default: all)
-- param factor INTEGER : clusters per subclass (default: all; metrics without a factor stay)
WITH runs_in AS (  -- the eval runs to profile
  SELECT run_id, design_key, design, dataset, shuffled, arch, taps, labels
  FROM (SELECT * FROM final_evals WHERE getvariable('run_id') IS NULL
        UNION ALL  -- run_id set: that one FINISHED run, whichever checkpoint or set
        SELECT * FROM evals WHERE status = 'FINISHED' AND run_id = getvariable('run_id')) e
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
    AND (getvariable('shuffled') IS NULL OR e.shuffled = getvariable('shuffled'))
    AND (getvariable('labels') IS NULL OR e.labels = getvariable('labels'))
), agg AS (  -- grouped on the key alone; the design's columns are joined back after
  SELECT r.design_key, s.layer_index, avg(s.relative_depth) AS relative_depth, s.metric,
         s.factor, avg(s.value) AS mean, stddev_samp(s.value) AS std, count(*) AS n,
         ci95_half(stddev_samp(s.value), count(*)) AS half
  FROM layer_scores s JOIN runs_in r USING (run_id)
  WHERE (getvariable('metric') IS NULL OR s.metric = getvariable('metric'))
    AND (getvariable('factor') IS NULL OR s.factor IS NULL OR s.factor = getvariable('factor'))
  GROUP BY ALL
)
SELECT g.design_key, g.design, g.dataset, g.shuffled, g.arch, g.taps, g.labels,
       a.layer_index, a.relative_depth, a.metric, a.factor, a.mean, a.std, a.n,
       a.mean - a.half AS ci_lo, a.mean + a.half AS ci_hi
FROM agg a
JOIN (SELECT DISTINCT design_key, design, dataset, shuffled, arch, taps, labels
      FROM runs_in) g USING (design_key)
ORDER BY g.dataset, g.shuffled, g.arch, g.taps, g.labels, g.design, a.metric,
         a.factor NULLS FIRST, a.layer_index;
