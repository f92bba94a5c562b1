-- design_effects: which design choices matter most for clusterability (the paper's
-- headline question; finding 2: training dataset and architecture). For each recorded
-- design choice (a design param, less the derived dataset record), matched pairs of
-- runs: two runs whose choices differ in that one alone and that share their seed; the
-- difference of their best-layer value (over layers, at the factor) is level_b minus
-- level_a (levels in numeric order where both are numbers, else in text order;
-- '(unset)' where a run lacks the param). Per choice x level pair: the mean difference,
-- std, n pairs and a 95% t-interval (mean +- t(0.975, n-1) std / sqrt(n)), the two
-- levels' means over the same pairs, and rank 1 for the largest |mean_diff|. Several
-- runs of one design and seed count once, by their mean.
-- Runs: FINISHED final-checkpoint in-domain eval runs.
-- Reads: layer_scores, final_evals, design_params.
-- Columns: rank, choice, level_a, level_b, mean_diff, std, n, ci_lo, ci_hi, mean_a, mean_b
-- param dataset VARCHAR : training dataset (default: all)
-- param metric VARCHAR = ami : ami, purity, probe_acc, knn_acc
-- param factor INTEGER = 1 : clusters per subclass (metrics without a factor ignore it)
WITH best AS (  -- each design x seed: the best-layer value, mean over its runs
  SELECT design_key, seed, avg(value) AS value
  FROM (SELECT s.run_id, e.design_key, e.seed, max(s.value) AS value
        FROM layer_scores s JOIN final_evals e USING (run_id)
        WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
          AND s.metric = coalesce(getvariable('metric'), 'ami')
          AND (s.factor IS NULL OR s.factor = coalesce(getvariable('factor'), 1))
        GROUP BY ALL)
  GROUP BY ALL
), choices AS (  -- each design's choices (from one of its runs: they all share them)
  SELECT r.design_key, d.key, d.value, CAST(hash(d.key || '=' || d.value) AS HUGEINT) AS h
  FROM (SELECT design_key, min(run_id) AS run_id FROM final_evals
        WHERE design_key IN (SELECT design_key FROM best) GROUP BY design_key) r
  JOIN design_params d USING (run_id)
  WHERE NOT d.derived
), levels AS (  -- each design x choice: its level, and a hash of all its other choices
  SELECT t.design_key, k.key AS choice, c.value AS level, t.h - coalesce(c.h, 0) AS rest
  FROM (SELECT design_key, sum(h) AS h FROM choices GROUP BY design_key) t
  CROSS JOIN (SELECT DISTINCT key FROM choices) k
  LEFT JOIN choices c ON c.design_key = t.design_key AND c.key = k.key
), pairs AS (
  SELECT a.choice, coalesce(a.level, '(unset)') AS level_a,
         coalesce(b.level, '(unset)') AS level_b, va.value AS value_a, vb.value AS value_b
  FROM levels a
  JOIN levels b ON b.choice = a.choice AND b.rest = a.rest
  JOIN best va ON va.design_key = a.design_key
  JOIN best vb ON vb.design_key = b.design_key AND vb.seed IS NOT DISTINCT FROM va.seed
  WHERE CASE WHEN TRY_CAST(a.level AS DOUBLE) IS NOT NULL
              AND TRY_CAST(b.level AS DOUBLE) IS NOT NULL
             THEN TRY_CAST(a.level AS DOUBLE) < TRY_CAST(b.level AS DOUBLE)
             ELSE coalesce(a.level, '') < coalesce(b.level, '') END
), g AS (
  SELECT choice, level_a, level_b, avg(value_b - value_a) AS mean_diff,
         stddev_samp(value_b - value_a) AS std, count(*) AS n,
         ci95_half(stddev_samp(value_b - value_a), count(*)) AS half,
         avg(value_a) AS mean_a, avg(value_b) AS mean_b
  FROM pairs GROUP BY ALL
)
SELECT CAST(rank() OVER (ORDER BY abs(mean_diff) DESC) AS INTEGER) AS rank, choice, level_a,
       level_b, mean_diff, std, n, mean_diff - half AS ci_lo, mean_diff + half AS ci_hi,
       mean_a, mean_b
FROM g
ORDER BY rank, choice, level_a, level_b;
