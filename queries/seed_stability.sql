-- seed_stability: how stable the clusterings are (ARI between the cluster assignments of
-- two seeds at the same layer: kind 'seed'; of two layers of one run: kind 'layer', the
-- layer x layer heatmap; of two checkpoints: kind 'checkpoint'). Reads the `ari` view:
-- the runs' ari.parquet artifacts (run_id, other_run_id, kind, layer_a, layer_b, factor,
-- value = ARI averaged over superclasses). Zero rows until runs log them. Per design x
-- kind x layer pair x factor: mean, std, n and a 95% t-interval (mean +- t(0.975, n-1)
-- std / sqrt(n)) over the rows of the design's runs, which differ only in their seed
-- (design_key: same design params; design: the params that tell the store's designs
-- apart). Runs: FINISHED eval runs, not re-scored or repeated (the run that holds the artifact); kind 'layer':
-- final checkpoints.
-- Reads: ari, evals.
-- Columns: design_key, design, dataset, arch, shuffled, kind, layer_a, layer_b, factor,
--   mean, std, n, ci_lo, ci_hi
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param kind VARCHAR = seed : seed, layer or checkpoint
-- param factor INTEGER = 1 : clusters per subclass (`--param factor=`: all)
WITH g AS (
  SELECT e.design_key, e.design, e.dataset, e.arch, e.shuffled, a.kind, a.layer_a,
         a.layer_b, a.factor, avg(a.value) AS mean, stddev_samp(a.value) AS std,
         count(*) AS n, ci95_half(stddev_samp(a.value), count(*)) AS half
  FROM ari a JOIN evals e USING (run_id)
  WHERE e.status = 'FINISHED' AND NOT e.rescored AND NOT e.is_repeat
    AND (a.kind <> 'layer' OR e.is_final)  -- layer x layer of the final checkpoint only
    AND (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
    AND (getvariable('shuffled') IS NULL OR e.shuffled = getvariable('shuffled'))
    AND (getvariable('kind') IS NULL OR a.kind = getvariable('kind'))
    AND (getvariable('factor') IS NULL OR a.factor = getvariable('factor'))
  GROUP BY ALL
)
SELECT * EXCLUDE (half), mean - half AS ci_lo, mean + half AS ci_hi
FROM g
ORDER BY dataset, arch, shuffled, design, kind, factor, layer_a, layer_b;
