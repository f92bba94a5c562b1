"""Copy the small tables the views need from the attached databases into memory.

The copy is one consistent snapshot taken once per connection, into schema ``snap``:
the run list is read first, so a run shown FINISHED has all its metrics. A database
or table a store lacks becomes an empty table with the same columns. An Optuna
journal file is replayed into the same tables (`clusterprobe.queries.journal`).
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.attach import attach, raw_select
from clusterprobe.queries.journal import replay_journal
from clusterprobe.queries.sources import Sources
from clusterprobe.queries.sql_text import execute

# Raw tables read from the databases, with the columns (and types) used. A table a
# store lacks becomes an empty table of these columns.
_MLFLOW_TABLES: dict[str, dict[str, str]] = {
    "experiments": {
        "experiment_id": "BIGINT",
        "name": "VARCHAR",
        "artifact_location": "VARCHAR",
        "lifecycle_stage": "VARCHAR",
    },
    "runs": {
        "run_uuid": "VARCHAR",
        "name": "VARCHAR",
        "status": "VARCHAR",
        "start_time": "BIGINT",
        "end_time": "BIGINT",
        "lifecycle_stage": "VARCHAR",
        "artifact_uri": "VARCHAR",
        "experiment_id": "BIGINT",
    },
    "tags": {"key": "VARCHAR", "value": "VARCHAR", "run_uuid": "VARCHAR"},
    "params": {"key": "VARCHAR", "value": "VARCHAR", "run_uuid": "VARCHAR"},
    "metrics": {
        "key": "VARCHAR",
        "value": "DOUBLE",
        "timestamp": "BIGINT",
        "run_uuid": "VARCHAR",
        "step": "BIGINT",
        "is_nan": "BOOLEAN",
    },
}
_OPTUNA_TABLES: dict[str, dict[str, str]] = {
    "studies": {"study_id": "BIGINT", "study_name": "VARCHAR"},
    "study_directions": {"study_id": "BIGINT", "objective": "BIGINT", "direction": "VARCHAR"},
    "trials": {
        "trial_id": "BIGINT",
        "number": "BIGINT",
        "study_id": "BIGINT",
        "state": "VARCHAR",
        "datetime_start": "TIMESTAMP",
        "datetime_complete": "TIMESTAMP",
    },
    "trial_params": {
        "trial_id": "BIGINT",
        "param_name": "VARCHAR",
        "param_value": "DOUBLE",
        "distribution_json": "VARCHAR",
    },
    "trial_values": {
        "trial_id": "BIGINT",
        "objective": "BIGINT",
        "value": "DOUBLE",
        "value_type": "VARCHAR",
    },
    "trial_user_attributes": {"trial_id": "BIGINT", "key": "VARCHAR", "value_json": "VARCHAR"},
}


def take_snapshot(con: duckdb.DuckDBPyConnection, sources: Sources, setup: list[str]) -> None:
    """Attach both databases and copy their tables into ``snap`` (runs, tags, params,
    metrics of active runs; ``optuna_<table>`` for each Optuna table)."""
    journal = sources.optuna.type == "journal"
    m_tables = attach(con, setup, sources.mlflow, "mlflow_db")
    o_tables = set() if journal else attach(con, setup, sources.optuna, "optuna_db")
    execute(con, setup, "CREATE SCHEMA snap")

    def m(name: str) -> str:
        return raw_select(sources.mlflow, "mlflow_db", m_tables, name, _MLFLOW_TABLES[name])

    def o(name: str) -> str:
        return raw_select(sources.optuna, "optuna_db", o_tables, name, _OPTUNA_TABLES[name])

    # Snapshot, run list first: a run read as FINISHED here had all its metrics
    # committed before, so the metric copy below (read later) holds all of them.
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.runs AS
SELECT r.run_uuid AS run_id, r.experiment_id, e.name AS experiment, r.name AS run_name,
       r.status, r.start_time, r.end_time, r.artifact_uri
FROM ({m("runs")}) r LEFT JOIN ({m("experiments")}) e USING (experiment_id)
WHERE r.lifecycle_stage = 'active' AND coalesce(e.lifecycle_stage, 'active') = 'active'""",
    )
    for name in ("tags", "params"):
        execute(
            con,
            setup,
            f"""CREATE TABLE snap.{name} AS
SELECT t.run_uuid AS run_id, t.key, t.value FROM ({m(name)}) t
WHERE t.run_uuid IN (SELECT run_id FROM snap.runs)""",
        )
    # Re-logged metrics: per (run, key, step) the latest timestamp wins.
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.metrics AS
SELECT t.run_uuid AS run_id, t.key AS metric, t.step,
       arg_max(CASE WHEN t.is_nan THEN 'NaN'::DOUBLE ELSE t.value END, t.timestamp) AS value,
       max(t.timestamp) AS timestamp
FROM ({m("metrics")}) t
WHERE t.run_uuid IN (SELECT run_id FROM snap.runs)
GROUP BY ALL""",
    )
    if journal and sources.optuna.target is not None:
        replay_journal(con, setup, sources.optuna.target)
        return
    for name in _OPTUNA_TABLES:
        execute(con, setup, f"CREATE TABLE snap.optuna_{name} AS {o(name)}")
