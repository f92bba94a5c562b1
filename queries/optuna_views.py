"""Views over the Optuna snapshot: ``trials`` and ``trial_params``.

Trials come with their state, objective values (infinities restored), the study's
directions, decoded params and the linked MLflow run (user attribute
``mlflow_run_id``).
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.sql_text import execute, quote
from clusterprobe.tracker.conventions import ATTR_RUN_ID


def define_optuna_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    # Optuna stores a categorical choice as its index into the distribution's choices.
    execute(
        con,
        setup,
        """CREATE VIEW trial_params AS
SELECT s.study_name AS study, p.trial_id, t.number, p.param_name AS param,
       CASE WHEN json_extract_string(p.distribution_json, '$.name') = 'CategoricalDistribution'
            THEN json_extract_string(p.distribution_json,
                   '$.attributes.choices[' || CAST(p.param_value AS BIGINT) || ']')
            WHEN json_extract_string(p.distribution_json, '$.name') IN ('IntDistribution', 'IntUniformDistribution', 'IntLogUniformDistribution')
            THEN CAST(CAST(p.param_value AS BIGINT) AS VARCHAR)
            ELSE CAST(p.param_value AS VARCHAR) END AS value,
       CASE WHEN json_extract_string(p.distribution_json, '$.name') = 'CategoricalDistribution'
            THEN TRY_CAST(json_extract_string(p.distribution_json,
                   '$.attributes.choices[' || CAST(p.param_value AS BIGINT) || ']') AS DOUBLE)
            ELSE p.param_value END AS value_num
FROM snap.optuna_trial_params p
JOIN snap.optuna_trials t USING (trial_id) JOIN snap.optuna_studies s USING (study_id)""",
    )
    execute(
        con,
        setup,
        f"""CREATE VIEW trials AS
WITH v AS (
  SELECT trial_id,
         list(CASE value_type WHEN 'INF_POS' THEN 'inf'::DOUBLE
                              WHEN 'INF_NEG' THEN '-inf'::DOUBLE ELSE value END
              ORDER BY objective) AS vals
  FROM snap.optuna_trial_values GROUP BY trial_id
), d AS (
  SELECT study_id, list(direction ORDER BY objective) AS directions
  FROM snap.optuna_study_directions GROUP BY study_id
), p AS (
  SELECT trial_id, map(list(param ORDER BY param), list(value ORDER BY param)) AS params
  FROM trial_params GROUP BY trial_id
), a AS (
  SELECT trial_id, json_extract_string(value_json, '$') AS run_id
  FROM snap.optuna_trial_user_attributes WHERE key = {quote(ATTR_RUN_ID)}
)
SELECT s.study_name AS study, t.study_id, t.trial_id, CAST(t.number AS INTEGER) AS number,
       t.state, v.vals[1] AS value, v.vals AS "values", d.directions,
       coalesce(p.params, map()::MAP(VARCHAR, VARCHAR)) AS params, a.run_id,
       t.datetime_start, t.datetime_complete,
       epoch(t.datetime_complete) - epoch(t.datetime_start) AS duration_s
FROM snap.optuna_trials t JOIN snap.optuna_studies s USING (study_id)
LEFT JOIN v USING (trial_id) LEFT JOIN d USING (study_id)
LEFT JOIN p USING (trial_id) LEFT JOIN a USING (trial_id)""",
    )
