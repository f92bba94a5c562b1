-- clusterability_vs_probe: finding 6 - clusterability does not track linear-probe
-- accuracy. Pearson and Spearman (average ranks for ties) correlation between the
-- clustering metric and probe_acc:
--   scope 'layers': within each run over its layers, then mean, std, n and a 95%
--     t-interval (mean +- t(0.975, n-1) std / sqrt(n)) over the runs of each design (a
--     design's runs differ only in their seed; design_key: same design params; design:
--     the params that tell the store's designs apart);
--   scope 'runs': over runs per dataset (design and arch NULL), between each run's best
--     clustering value and its best probe accuracy (max over layers); std NULL, n = runs,
--     interval from Fisher's z (tanh(atanh(r) +- 1.96 / sqrt(n - 3)), NULL for n <= 3);
--   scopes 'transfer_layers' and 'transfer_runs': the same on transfer eval runs (the
--     transfer set clustered whole vs the transfer probe's accuracy), per eval_set.
-- Runs with fewer than 3 layers (or runs) holding both metrics, and constant series (no
-- correlation defined), are left out. Runs: FINISHED final-checkpoint eval runs (in-domain:
-- eval_set is the training dataset's own; transfer: another set).
-- Reads: layer_scores, final_evals, final_transfer_evals.
-- Columns: scope, dataset, eval_set, design_key, design, arch, method, mean, std, n, ci_lo,
--   ci_hi
-- param dataset VARCHAR : training dataset (default: all)
-- param arch VARCHAR : timm model name (default: all)
-- param metric VARCHAR = ami : ami or purity
-- param factor INTEGER = 1 : clusters per subclass
WITH pairs AS (
  SELECT s.run_id, e.dataset, e.eval_set, e.design_key, e.design, e.arch, s.layer_index,
         CASE WHEN e.is_transfer THEN 'transfer_' ELSE '' END AS prefix,
         max(s.value) FILTER (WHERE s.metric = coalesce(getvariable('metric'), 'ami')
                              AND s.factor = coalesce(getvariable('factor'), 1)) AS x,
         max(s.value) FILTER (WHERE s.metric = 'probe_acc') AS y
  FROM layer_scores s
  JOIN (SELECT * FROM final_evals UNION ALL SELECT * FROM final_transfer_evals) e USING (run_id)
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('arch') IS NULL OR e.arch = getvariable('arch'))
  GROUP BY ALL
), layer_ranked AS (
  SELECT *,
         rank() OVER (PARTITION BY run_id ORDER BY x)
           + (count(*) OVER (PARTITION BY run_id, x) - 1) / 2.0 AS rx,
         rank() OVER (PARTITION BY run_id ORDER BY y)
           + (count(*) OVER (PARTITION BY run_id, y) - 1) / 2.0 AS ry
  FROM pairs WHERE x IS NOT NULL AND y IS NOT NULL
), per_run AS (
  SELECT run_id, dataset, eval_set, design_key, design, arch, prefix, corr(x, y) AS pearson,
         corr(rx, ry) AS spearman
  FROM layer_ranked GROUP BY ALL HAVING count(*) >= 3
), over_layers AS (
  SELECT prefix || 'layers' AS scope, dataset, eval_set, design_key, design, arch, method,
         avg(r) AS mean, stddev_samp(r) AS std, count(*) AS n,
         avg(r) - ci95_half(stddev_samp(r), count(*)) AS ci_lo,
         avg(r) + ci95_half(stddev_samp(r), count(*)) AS ci_hi
  FROM per_run UNPIVOT (r FOR method IN (pearson, spearman))
  WHERE NOT isnan(r)
  GROUP BY ALL
), run_best AS (
  SELECT run_id, dataset, eval_set, prefix, max(x) AS x, max(y) AS y
  FROM pairs GROUP BY ALL HAVING max(x) IS NOT NULL AND max(y) IS NOT NULL
), run_ranked AS (
  SELECT *,
         rank() OVER (PARTITION BY dataset, eval_set ORDER BY x)
           + (count(*) OVER (PARTITION BY dataset, eval_set, x) - 1) / 2.0 AS rx,
         rank() OVER (PARTITION BY dataset, eval_set ORDER BY y)
           + (count(*) OVER (PARTITION BY dataset, eval_set, y) - 1) / 2.0 AS ry
  FROM run_best
), over_runs AS (
  SELECT prefix || 'runs' AS scope, dataset, eval_set, NULL::VARCHAR AS design_key,
         NULL::VARCHAR AS design, NULL::VARCHAR AS arch, method, r AS mean,
         NULL::DOUBLE AS std, n,
         CASE WHEN n > 3 AND abs(r) < 1 THEN tanh(atanh(r) - 1.959963984540054 / sqrt(n - 3))
         END AS ci_lo,
         CASE WHEN n > 3 AND abs(r) < 1 THEN tanh(atanh(r) + 1.959963984540054 / sqrt(n - 3))
         END AS ci_hi
  FROM (SELECT dataset, eval_set, prefix, corr(x, y) AS pearson, corr(rx, ry) AS spearman,
               count(*) AS n
        FROM run_ranked GROUP BY ALL HAVING count(*) >= 3)
       UNPIVOT (r FOR method IN (pearson, spearman))
  WHERE NOT isnan(r)
)
SELECT * FROM over_layers UNION ALL SELECT * FROM over_runs
ORDER BY scope, dataset, eval_set, arch NULLS FIRST, design NULLS FIRST, method;
