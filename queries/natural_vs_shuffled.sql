-- natural_vs_shuffled: finding 1 - superclasses made of unrelated subclasses ("shuffled")
-- give much better subclass clusterability than a natural hierarchy. One row per design
-- x factor x layer (layer_index NULL: each run's best layer), with mean, std, n and a 95%
-- t-interval (mean +- t(0.975, n-1) std / sqrt(n)) over the design's runs, which differ
-- only in their seed (design_key: same design params; design: the params that tell the
-- store's designs apart), and the difference to the mean of the natural design with
-- the same other choices at the same layer (NULL where there is none). Runs: FINISHED
-- final-checkpoint in-domain eval runs.
-- Reads: layer_scores, final_evals, design_key_without.
-- Columns: design_key, design, dataset, arch, factor, shuffled, layer_index,
--   relative_depth, mean, std, n, ci_lo, ci_hi, minus_natural
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param labels VARCHAR : trained on superclass or subclass labels (default: both)
-- param metric VARCHAR = ami : ami or purity
-- param factor INTEGER = 1 : clusters per subclass (`--param factor=`: all)
WITH s AS (
  SELECT e.run_id, e.design_key, e.design, p.design_key AS partner, e.dataset, e.arch,
         e.shuffled, s.factor, s.layer_index, s.relative_depth, s.value
  FROM layer_scores s JOIN final_evals e USING (run_id)
  JOIN design_key_without(['shuffled']) p USING (run_id)
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
    AND (getvariable('labels') IS NULL OR e.labels = getvariable('labels'))
    AND s.metric = coalesce(getvariable('metric'), 'ami')
    AND (getvariable('factor') IS NULL OR s.factor = getvariable('factor'))
), per_layer AS (
  SELECT design_key, design, partner, dataset, arch, factor, shuffled, layer_index,
         avg(relative_depth) AS relative_depth, avg(value) AS mean,
         stddev_samp(value) AS std, count(*) AS n,
         ci95_half(stddev_samp(value), count(*)) AS half
  FROM s GROUP BY ALL
), best AS (
  SELECT design_key, design, partner, dataset, arch, factor, shuffled,
         NULL::INTEGER AS layer_index, NULL::DOUBLE AS relative_depth, avg(value) AS mean,
         stddev_samp(value) AS std, count(*) AS n,
         ci95_half(stddev_samp(value), count(*)) AS half
  FROM (SELECT run_id, design_key, design, partner, dataset, arch, factor, shuffled,
               max(value) AS value
        FROM s GROUP BY ALL)
  GROUP BY ALL
), g AS (SELECT * FROM per_layer UNION ALL SELECT * FROM best)
SELECT design_key, design, dataset, arch, factor, shuffled, layer_index, relative_depth,
       mean, std, n, mean - half AS ci_lo, mean + half AS ci_hi,
       mean - max(mean) FILTER (WHERE NOT shuffled)
                OVER (PARTITION BY partner, factor, layer_index) AS minus_natural
FROM g
ORDER BY dataset, arch, partner, factor, layer_index NULLS FIRST, shuffled;
