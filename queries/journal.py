"""An Optuna journal file (``--storage x.journal``) replayed in SQL into the tables the
RDB storages give (``snap.optuna_<table>``, the columns of `snapshot._OPTUNA_TABLES`).

Optuna's ``JournalFileBackend`` appends one JSON object per operation and line; its
reader rebuilds the storage by applying them in order (``JournalStorageReplayResult``
in ``optuna/storages/journal/_storage.py``). The same rules here, without importing
optuna, and as plain SQL, so ``clusterprobe sql --setup`` replays the file in any
DuckDB shell:

* a line without its final newline is being written: left out; so is the text after
  the last newline. ``Infinity`` / ``NaN`` (Python's json writes them) become strings
  before the line is parsed as JSON;
* a study is created unless a live study has its name (ids count the studies created);
  a deleted study and its trials are left out;
* a trial is created if its study exists at that line (ids count created trials, the
  number counts its study's); an operation on a trial counts from its creation up to
  the operation that finishes it (COMPLETE, PRUNED, FAIL), later ones are ignored;
* state, values and the complete time come from the last operation that counts (else
  the creation: ``add_trial``, ``enqueue_trial``), params and user attributes from the
  creation and then each setting that counts, the last one winning; an enqueued
  trial starts at the first RUNNING operation (optuna rejects a second worker's, which
  therefore changes neither the start nor, followed by the finishing one, the state).

Not replayed: the check that a param's distribution matches the one earlier trials
used (a conflicting setting fails in the worker that made it, and its trial with it).
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.sql_text import execute, quote

# Optuna's JournalOperation and TrialState codes.
CREATE_STUDY, DELETE_STUDY, CREATE_TRIAL, SET_PARAM, SET_STATE, SET_USER_ATTR = 0, 1, 4, 5, 6, 8
STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")  # index = TrialState value
FINISHED = "(1, 2, 3)"

# A bare Infinity or NaN between JSON punctuation, made a string; twice, since one
# match consumes the comma that a neighbouring value needs.
_BARE = r"([:,\[])(-?Infinity|NaN)([,}\]])"


def _quoted_numbers(column: str) -> str:
    once = f"regexp_replace({column}, {quote(_BARE)}, '\\1\"\\2\"\\3', 'g')"
    return f"regexp_replace({once}, {quote(_BARE)}, '\\1\"\\2\"\\3', 'g')"


def replay_journal(con: duckdb.DuckDBPyConnection, setup: list[str], path: str) -> None:
    """Create ``snap.optuna_<table>`` for every Optuna table from the journal ``path``."""
    _lines(con, setup, path)
    _studies(con, setup)
    _trials(con, setup)
    _trial_tables(con, setup)


def _lines(con, setup, path: str) -> None:
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.journal AS
WITH pieces AS (
  SELECT string_split(content, chr(10)) AS pieces FROM read_text({quote(path)})
), numbered AS (
  SELECT generate_subscripts(pieces, 1) AS line, unnest(pieces) AS text, len(pieces) AS n
  FROM pieces
), parsed AS (
  SELECT line, {_quoted_numbers("text")} AS text FROM numbered WHERE line < n
)
SELECT line, CAST(text->>'op_code' AS INTEGER) AS op, CAST(text AS JSON) AS log
FROM parsed WHERE json_valid(text)""",
    )


def _studies(con, setup) -> None:
    """``snap.journal_studies``: every study created (id, name, directions, the lines it
    was created and deleted at): a fold over the few study operations, in order."""
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.journal_studies AS
WITH RECURSIVE ops AS (
  SELECT row_number() OVER (ORDER BY line) AS k, line, op, log->>'study_name' AS name,
         CAST(log->>'study_id' AS BIGINT) AS ref,
         CAST(log->'directions' AS INTEGER[]) AS directions
  FROM snap.journal WHERE op IN ({CREATE_STUDY}, {DELETE_STUDY})
), replay(k, studies) AS (
  SELECT 0, []::STRUCT(study_id BIGINT, study_name VARCHAR, directions INTEGER[],
                       created BIGINT, deleted BIGINT)[]
  UNION ALL
  SELECT o.k,
    CASE WHEN o.op = {DELETE_STUDY} THEN list_transform(r.studies, lambda s:
           CASE WHEN s.study_id = o.ref AND s.deleted IS NULL
                THEN struct_pack(study_id := s.study_id, study_name := s.study_name,
                                 directions := s.directions, created := s.created,
                                 deleted := o.line)
                ELSE s END)
         WHEN len(list_filter(r.studies, lambda s: s.study_name = o.name AND s.deleted IS NULL)) > 0
         THEN r.studies  -- a live study has the name: this create did nothing
         ELSE list_append(r.studies, struct_pack(
                study_id := CAST(len(r.studies) AS BIGINT), study_name := o.name,
                directions := o.directions, created := o.line, deleted := NULL::BIGINT))
    END
  FROM replay r JOIN ops o ON o.k = r.k + 1
)
SELECT unnest(studies, recursive := true)
FROM replay WHERE k = (SELECT count(*) FROM ops)""",
    )


def _trials(con, setup) -> None:
    """``snap.journal_trials`` (the trials created, with ids) and ``snap.journal_ops``
    (the operations on them that count: up to the one that finished the trial)."""
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.journal_trials AS
SELECT row_number() OVER (ORDER BY j.line) - 1 AS trial_id,
       row_number() OVER (PARTITION BY s.study_id ORDER BY j.line) - 1 AS number,
       s.study_id, j.line AS created, j.log,
       coalesce(CAST(j.log->>'state' AS INTEGER), 0) AS state
FROM snap.journal j
JOIN snap.journal_studies s ON s.study_id = CAST(j.log->>'study_id' AS BIGINT)
WHERE j.op = {CREATE_TRIAL} AND s.created < j.line AND coalesce(s.deleted > j.line, true)""",
    )
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.journal_ops AS
WITH ops AS (
  SELECT t.trial_id, t.created, t.state AS created_state, j.line, j.op, j.log,
         CAST(j.log->>'state' AS INTEGER) AS state
  FROM snap.journal j JOIN snap.journal_trials t
    ON t.trial_id = CAST(j.log->>'trial_id' AS BIGINT) AND j.line > t.created
  WHERE j.op IN ({SET_PARAM}, {SET_STATE}, {SET_USER_ATTR})
), finished AS (  -- the line that finished each trial (its creation, for add_trial)
  SELECT trial_id, least(
           CASE WHEN any_value(created_state) IN {FINISHED} THEN any_value(created) END,
           min(line) FILTER (WHERE op = {SET_STATE} AND state IN {FINISHED})) AS line
  FROM ops GROUP BY trial_id
)
SELECT o.* FROM ops o LEFT JOIN finished f USING (trial_id)
WHERE f.line IS NULL OR o.line <= f.line""",
    )


def _trial_tables(con, setup) -> None:
    """The Optuna tables, as an RDB storage holds them."""
    statements = {
        "studies": "SELECT study_id, study_name FROM snap.journal_studies WHERE deleted IS NULL",
        "study_directions": """SELECT study_id, CAST(i - 1 AS BIGINT) AS objective,
       ['NOT_SET', 'MINIMIZE', 'MAXIMIZE'][directions[i] + 1] AS direction
FROM (SELECT study_id, directions, generate_subscripts(directions, 1) AS i
      FROM snap.journal_studies WHERE deleted IS NULL)""",
        "trials": _TRIALS,
        "trial_params": _PARAMS,
        "trial_values": _VALUES,
        "trial_user_attributes": _USER_ATTRS,
    }
    for name, select in statements.items():
        execute(con, setup, f"CREATE TABLE snap.optuna_{name} AS\n{select}")


_STATES = "[" + ", ".join(quote(s) for s in STATES) + "]"

# Trials of live studies: state, start (an enqueued trial starts when a worker takes
# it) and complete time.
_TRIALS = f"""SELECT t.trial_id, t.number, t.study_id,
       {_STATES}[coalesce(last(o.state ORDER BY o.line)
                          FILTER (WHERE o.op = {SET_STATE}), t.state) + 1] AS state,
       CAST(CAST(coalesce(
         CASE WHEN t.state = 4 THEN first(o.log->>'datetime_start' ORDER BY o.line)
                                    FILTER (WHERE o.op = {SET_STATE} AND o.state = 0) END,
         t.log->>'datetime_start') AS TIMESTAMPTZ) AS TIMESTAMP) AS datetime_start,
       CAST(CAST(coalesce(
         last(o.log->>'datetime_complete' ORDER BY o.line)
           FILTER (WHERE o.op = {SET_STATE} AND o.state IN {FINISHED}),
         t.log->>'datetime_complete') AS TIMESTAMPTZ) AS TIMESTAMP) AS datetime_complete
FROM snap.journal_trials t LEFT JOIN snap.journal_ops o USING (trial_id)
WHERE t.study_id IN (SELECT study_id FROM snap.journal_studies WHERE deleted IS NULL)
GROUP BY t.trial_id, t.number, t.study_id, t.state, t.log"""

# Params (Optuna's internal value: a categorical choice's index) and their
# distributions; keys through MAP casts, since a JSON path would read '$' or '/'.
_PARAMS = f"""WITH created AS (
  SELECT trial_id, created AS line, CAST(log->'params' AS MAP(VARCHAR, DOUBLE)) AS p,
         CAST(log->'distributions' AS MAP(VARCHAR, VARCHAR)) AS d
  FROM snap.journal_trials
), settings AS (
  SELECT trial_id, line, name AS param_name, p[name] AS param_value,
         d[name] AS distribution_json
  FROM (SELECT *, unnest(map_keys(p)) AS name FROM created)
  UNION ALL
  SELECT trial_id, line, log->>'param_name', CAST(log->>'param_value_internal' AS DOUBLE),
         log->>'distribution'
  FROM snap.journal_ops WHERE op = {SET_PARAM}
)
SELECT trial_id, param_name, arg_max(param_value, line) AS param_value,
       arg_max(distribution_json, line) AS distribution_json
FROM settings WHERE trial_id IN (SELECT trial_id FROM snap.optuna_trials)
GROUP BY trial_id, param_name"""

# Objective values, one row per objective (the RDB's value_type marks infinities).
_VALUES = f"""WITH v AS (
  SELECT t.trial_id, coalesce(
           last(CAST(o.log->'values' AS VARCHAR[]) ORDER BY o.line)
             FILTER (WHERE o.op = {SET_STATE} AND CAST(o.log->'values' AS VARCHAR[]) IS NOT NULL),
           CAST(t.log->'values' AS VARCHAR[]),
           CASE WHEN t.log->>'value' IS NOT NULL THEN [t.log->>'value'] END) AS vals
  FROM snap.journal_trials t LEFT JOIN snap.journal_ops o USING (trial_id)
  WHERE t.trial_id IN (SELECT trial_id FROM snap.optuna_trials)
  GROUP BY t.trial_id, t.log
), one AS (
  SELECT trial_id, generate_subscripts(vals, 1) - 1 AS objective,
         CAST(unnest(vals) AS DOUBLE) AS value
  FROM v WHERE vals IS NOT NULL
)
SELECT trial_id, CAST(objective AS BIGINT) AS objective, value,
       CASE WHEN value = 'inf'::DOUBLE THEN 'INF_POS'
            WHEN value = '-inf'::DOUBLE THEN 'INF_NEG' ELSE 'FINITE' END AS value_type
FROM one"""

# User attributes (value_json: the value's JSON text, as the RDB keeps it).
_USER_ATTRS = f"""WITH settings AS (
  SELECT trial_id, created AS line, unnest(map_keys(a)) AS key,
         CAST(unnest(map_values(a)) AS VARCHAR) AS value_json
  FROM (SELECT trial_id, created, CAST(log->'user_attrs' AS MAP(VARCHAR, JSON)) AS a
        FROM snap.journal_trials)
  UNION ALL
  SELECT trial_id, line, unnest(map_keys(a)), CAST(unnest(map_values(a)) AS VARCHAR)
  FROM (SELECT trial_id, line, CAST(log->'user_attr' AS MAP(VARCHAR, JSON)) AS a
        FROM snap.journal_ops WHERE op = {SET_USER_ATTR})
)
SELECT trial_id, key, arg_max(value_json, line) AS value_json
FROM settings WHERE trial_id IN (SELECT trial_id FROM snap.optuna_trials)
GROUP BY trial_id, key"""
