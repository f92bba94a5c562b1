-- architectures_by_depth: finding 3 - ViTs cluster subclasses worse than ResNets; ResNet,
-- VGG and ViT profiles lined up on relative depth ((layer_index + 1) / n_layers). Each
-- run's layers are binned by relative depth (bin k holds depths in [k/bins, (k+1)/bins),
-- the last bin includes 1), averaged within the run, then mean, std, n and a 95%
-- t-interval (mean +- t(0.975, n-1) std / sqrt(n)) over the runs of each design x factor
-- x bin (a design's runs differ only in their seed; design_key: same design params;
-- design: the params that tell the store's designs apart). Runs: FINISHED
-- final-checkpoint in-domain eval runs.
-- Reads: layer_scores, final_evals.
-- Columns: design_key, design, arch_family, arch, dataset, shuffled, factor, depth_bin,
--   depth_lo, depth_hi, mean, std, n, ci_lo, ci_hi
-- param dataset VARCHAR : training dataset (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param labels VARCHAR : trained on superclass or subclass labels (default: both)
-- param metric VARCHAR = ami : ami, purity, probe_acc, knn_acc
-- param factor INTEGER = 1 : clusters per subclass (`--param factor=`: all)
-- param bins INTEGER = 10 : number of relative-depth bins
WITH per_run AS (
  SELECT e.run_id, e.design_key, e.design, e.arch_family, e.arch, e.dataset, e.shuffled,
         s.factor,
         CAST(least(floor(s.relative_depth * coalesce(getvariable('bins'), 10)),
                    coalesce(getvariable('bins'), 10) - 1) AS INTEGER) AS depth_bin,
         avg(s.value) AS value
  FROM layer_scores s JOIN final_evals e USING (run_id)
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('shuffled') IS NULL OR e.shuffled = getvariable('shuffled'))
    AND (getvariable('labels') IS NULL OR e.labels = getvariable('labels'))
    AND s.metric = coalesce(getvariable('metric'), 'ami')
    AND (getvariable('factor') IS NULL OR s.factor = getvariable('factor'))
  GROUP BY ALL
), g AS (
  SELECT design_key, design, arch_family, arch, dataset, shuffled, factor, depth_bin,
         depth_bin / coalesce(getvariable('bins'), 10)::DOUBLE AS depth_lo,
         (depth_bin + 1) / coalesce(getvariable('bins'), 10)::DOUBLE AS depth_hi,
         avg(value) AS mean, stddev_samp(value) AS std, count(*) AS n,
         ci95_half(stddev_samp(value), count(*)) AS half
  FROM per_run
  GROUP BY ALL
)
SELECT * EXCLUDE (half), mean - half AS ci_lo, mean + half AS ci_hi
FROM g
ORDER BY arch_family, arch, dataset, shuffled, design, factor, depth_bin;
