-- norm_peak_shift: finding 4 - normalisation (VGG-16: none / BatchNorm / LayerNorm) moves
-- the layer where clusterability peaks without changing the best value much. Each run's
-- peak layer (ties: the shallower one); per design x factor the mean, std and n of the
-- peak's index, relative depth and value, a 95% t-interval of the peak value (mean +-
-- t(0.975, n-1) std / sqrt(n); a design's runs differ only in their seed), and the shift
-- of the mean peak depth and value against the design without normalisation that makes
-- the same other choices (same arch_base; NULL where there is none). norm: the run's
-- `norm` param (none, bn, ln), else read from the timm name (vgg16_bn -> bn, vgg16 ->
-- none); other families: 'default'. design_key: same design params; design: the params
-- that tell the store's designs apart. Runs: FINISHED final-checkpoint in-domain eval runs.
-- Reads: layer_scores, final_evals, design_key_without.
-- Columns: design_key, design, dataset, arch_base, norm, factor, peak_layer_mean,
--   peak_layer_std, peak_depth_mean, peak_depth_std, peak_value_mean, peak_value_std, n,
--   peak_value_ci_lo, peak_value_ci_hi, depth_shift_vs_none, value_change_vs_none
-- param dataset VARCHAR : training dataset (default: all)
-- param family VARCHAR : architecture family, e.g. vgg (default: all)
-- param shuffled BOOLEAN : natural (false) or shuffled (true) hierarchy (default: both)
-- param metric VARCHAR = ami : ami or purity
-- param factor INTEGER = 1 : clusters per subclass (`--param factor=`: all)
WITH peak AS (  -- arg_max on (value, -layer_index): the best value, then the shallower
  SELECT s.run_id, e.design_key, e.design, p.design_key AS partner, e.dataset,
         regexp_replace(e.arch, '_(bn|ln|gn)$', '') AS arch_base,
         coalesce(e.norm, 'default') AS norm, s.factor,
         arg_max({'layer_index': s.layer_index, 'relative_depth': s.relative_depth,
                  'value': s.value},
                 {'value': s.value, 'shallower': -s.layer_index}) AS b
  FROM layer_scores s JOIN final_evals e USING (run_id)
  JOIN design_key_without(['arch', 'norm']) p USING (run_id)
  WHERE (getvariable('dataset') IS NULL OR e.dataset = getvariable('dataset'))
    AND (getvariable('family') IS NULL OR e.arch_family = getvariable('family'))
    AND (getvariable('shuffled') IS NULL OR e.shuffled = getvariable('shuffled'))
    AND s.metric = coalesce(getvariable('metric'), 'ami')
    AND (getvariable('factor') IS NULL OR s.factor = getvariable('factor'))
  GROUP BY ALL
), g AS (
  SELECT design_key, design, partner, dataset, arch_base, norm, factor,
         avg(b.layer_index) AS peak_layer_mean, stddev_samp(b.layer_index) AS peak_layer_std,
         avg(b.relative_depth) AS peak_depth_mean,
         stddev_samp(b.relative_depth) AS peak_depth_std,
         avg(b.value) AS peak_value_mean, stddev_samp(b.value) AS peak_value_std,
         count(*) AS n, ci95_half(stddev_samp(b.value), count(*)) AS half
  FROM peak GROUP BY ALL
)
SELECT * EXCLUDE (partner, half),
       peak_value_mean - half AS peak_value_ci_lo, peak_value_mean + half AS peak_value_ci_hi,
       peak_depth_mean - max(peak_depth_mean) FILTER (WHERE norm = 'none')
         OVER (PARTITION BY partner, arch_base, factor) AS depth_shift_vs_none,
       peak_value_mean - max(peak_value_mean) FILTER (WHERE norm = 'none')
         OVER (PARTITION BY partner, arch_base, factor) AS value_change_vs_none
FROM g
ORDER BY dataset, arch_base, partner, factor, norm;
