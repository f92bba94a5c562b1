-- study_trials: Optuna trials joined with their MLflow runs - which design choices gave
-- the best clusterability (finding 2: training dataset and architecture matter most).
-- One row per trial: state, objective values, decoded params, the linked run (trial user
-- attribute mlflow_run_id: the trial's train run, or an eval run), and from the linked
-- run's final FINISHED in-domain eval run (or the linked run itself if it is one): the best value
-- over layers of ami at the factor, the layer it is at (ties: shallower), and the best
-- probe accuracy. Zero rows when there is no Optuna database.
-- Reads: trials, runs, evals, layer_scores.
-- Columns: study, number, state, value, values, params, run_id, run_status, eval_run_id,
--   best_ami, best_layer, best_probe_acc, duration_s
-- param study VARCHAR : study name (default: all)
-- param state VARCHAR : COMPLETE, PRUNED, FAIL, RUNNING, WAITING (default: all)
-- param factor INTEGER = 1 : clusters per subclass for best_ami
WITH final_eval AS (
  SELECT coalesce(train_run_id, run_id) AS owner, run_id AS eval_run_id,
         row_number() OVER (PARTITION BY coalesce(train_run_id, run_id)
                            ORDER BY checkpoint_epoch DESC NULLS FIRST, run_id) AS rank
  FROM evals WHERE status = 'FINISHED' AND NOT is_transfer AND NOT rescored AND NOT is_repeat
), ami AS (  -- arg_max on (value, -layer_index): the best value, then the shallower
  SELECT run_id, arg_max({'value': value, 'layer': layer_index},
                         {'value': value, 'shallower': -layer_index}) AS b
  FROM layer_scores
  WHERE metric = 'ami' AND factor = coalesce(getvariable('factor'), 1)
  GROUP BY run_id
), probe AS (
  SELECT run_id, max(value) AS best_probe_acc FROM layer_scores
  WHERE metric = 'probe_acc' GROUP BY run_id
)
SELECT t.study, t.number, t.state, t.value, t."values", t.params, t.run_id,
       r.status AS run_status, f.eval_run_id, a.b.value AS best_ami, a.b.layer AS best_layer, p.best_probe_acc,
       t.duration_s
FROM trials t
LEFT JOIN runs r ON r.run_id = t.run_id
LEFT JOIN final_eval f ON f.owner = t.run_id AND f.rank = 1
LEFT JOIN ami a ON a.run_id = f.eval_run_id
LEFT JOIN probe p ON p.run_id = f.eval_run_id
WHERE (getvariable('study') IS NULL OR t.study = getvariable('study'))
  AND (getvariable('state') IS NULL OR t.state = getvariable('state'))
ORDER BY t.study, t.number;
