"""An eval run's design, in SQL: ``design_params``, the design key, and the params that
tell designs apart.

Which params belong to the design is one rule, `tracker.conventions.is_design_param`;
`design_predicate` writes the same rule as SQL from the same sets, so the key is
computed from the stored params (a store written before the rule gets keys too).
Empty values are left out (`run_params` reads '' as NULL): a param logged as '' and a
param never logged (an older store) are the same choice.

* ``design_params`` (view): run_id, key, value, derived: the design params of every
  eval run; ``derived`` marks the dataset record (what data went in), which follows
  from the data choices.
* ``snap.designs``: run_id, design_key (first 12 hex digits of the MD5 of the sorted
  ``key=value`` lines: the same design gets the same key in every store), design
  (``key=value`` of the params that vary between the store's eval runs, sorted by key,
  ``(unset)`` where a run lacks one): the ``evals`` columns.
* ``design_key_without(skip)`` (table macro): run_id, design_key: a key of the run's
  choices (derived params left out) less the params in the list ``skip``. Runs with
  equal keys differ at most in ``skip``: how a query pairs a design with its
  counterpart (``design_key_without(['shuffled'])``: natural vs shuffled).
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.sql_text import execute, quote
from clusterprobe.tracker import conventions as cv

UNSET = "(unset)"  # how ``design`` shows a varying param that a run lacks


def design_predicate(column: str = "key") -> str:
    """SQL that is true where param ``column`` belongs to the design (is_design_param)."""
    excluded = sorted(cv.NON_DESIGN_PARAMS | cv.EVAL_RUN_PARAMS | cv.MEASUREMENT_PARAMS)
    prefixes = " OR ".join(f"starts_with({column}, {quote(p)})" for p in cv.MEASUREMENT_PREFIXES)
    return f"{column} NOT IN ({', '.join(quote(k) for k in excluded)}) AND NOT ({prefixes})"


def _lines(alias: str, where: str | None = None) -> str:
    """The sorted ``key=value`` lines of design params ``alias`` (a GROUP BY run aggregate)."""
    agg = f"string_agg({alias}.key || '=' || {alias}.value, chr(10) ORDER BY {alias}.key)"
    if where:
        agg += f" FILTER (WHERE {where})"
    return f"coalesce({agg}, '')"


def define_design_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    """``snap.design_params`` / ``design_params``, ``snap.designs`` and the macro
    ``design_key_without`` (after `run_views`, whose ``snap.run_tags`` they read)."""
    derived = ", ".join(quote(k) for k in sorted(cv.DATASET_RECORD_PARAMS))
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.design_params AS
SELECT p.run_id, p.key, p.value, p.key IN ({derived}) AS derived
FROM snap.params p JOIN snap.run_tags t USING (run_id)
WHERE t.kind = 'eval' AND p.value <> '' AND {design_predicate("p.key")}""",
    )
    execute(
        con,
        setup,
        "CREATE VIEW design_params AS SELECT run_id, key, value, derived FROM snap.design_params",
    )
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.designs AS
WITH runs AS (SELECT run_id FROM snap.run_tags WHERE kind = 'eval'),
keyed AS (
  SELECT r.run_id, left(md5({_lines("d")}), 12) AS design_key,
         md5({_lines("d", "NOT d.derived")}) AS choices
  FROM runs r LEFT JOIN snap.design_params d USING (run_id) GROUP BY r.run_id
), varying AS (
  -- choices that differ between eval runs (or that only some runs have) ...
  SELECT key FROM snap.design_params WHERE NOT derived GROUP BY key
  HAVING count(DISTINCT value) > 1 OR count(*) < (SELECT count(*) FROM runs)
  UNION
  -- ... and data that differs between runs of the same choices (other files)
  SELECT d.key FROM snap.design_params d JOIN keyed k USING (run_id) WHERE d.derived
  GROUP BY d.key, k.choices HAVING count(DISTINCT d.value) > 1
), shown AS (
  SELECT k.run_id, v.key, coalesce(d.value, {quote(UNSET)}) AS value
  FROM keyed k CROSS JOIN varying v
  LEFT JOIN snap.design_params d ON d.run_id = k.run_id AND d.key = v.key
)
SELECT k.run_id, k.design_key,
       coalesce(string_agg(s.key || '=' || s.value, ' ' ORDER BY s.key), '') AS design
FROM keyed k LEFT JOIN shown s USING (run_id)
GROUP BY k.run_id, k.design_key""",
    )
    execute(
        con,
        setup,
        f"""CREATE MACRO design_key_without(skip) AS TABLE
SELECT k.run_id,
       left(md5({_lines("d", "NOT d.derived AND NOT list_contains(skip, d.key)")}), 12)
         AS design_key
FROM snap.designs k LEFT JOIN snap.design_params d USING (run_id)
GROUP BY k.run_id""",
    )
