"""Views of the runs as logged: ``runs``, ``params``, ``run_params``, ``tags``, ``metrics``.

They read the ``snap`` tables (active runs only). ``run_params`` is the wide form of
``params``: one column per param key, typed where obvious ('' is NULL).
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.sql_text import execute, ident, quote
from clusterprobe.tracker import conventions as cv

# Types of the params that runners/config.py RunConfig (and the pipeline) writes: one
# entry per RunConfig field (tests/test_queries.py checks every field against its
# annotation; `queries` may not import `runners`), plus the eval-run params named in
# tracker/conventions.py. Params not listed get a type inferred from their values
# (BIGINT, DOUBLE, BOOLEAN or VARCHAR), e.g. ``extra.*`` and the ``shuffle`` param of
# stores written before the field became ``shuffled``. Listed ones always exist as
# columns, so queries can name them on any store.
PARAM_TYPES: dict[str, str] = {
    cv.PARAM_DATASET: "VARCHAR",
    cv.PARAM_SHUFFLED: "BOOLEAN",
    "classes": "INTEGER",
    "subclasses": "INTEGER",
    "train_per_subclass": "INTEGER",
    "eval_per_subclass": "INTEGER",
    "image_size": "INTEGER",
    "data_seed": "INTEGER",
    "data_dir": "VARCHAR",
    "split": "VARCHAR",
    "breeds_info": "VARCHAR",
    "download": "BOOLEAN",
    "skip_corrupt": "BOOLEAN",
    "image_cache": "VARCHAR",
    "arch": "VARCHAR",
    "stem": "VARCHAR",
    "taps": "VARCHAR",
    "norm": "VARCHAR",
    "pool": "VARCHAR",
    "augment": "VARCHAR",
    "labels": "VARCHAR",
    "epochs": "INTEGER",
    "batch_size": "INTEGER",
    "lr": "DOUBLE",
    "momentum": "DOUBLE",
    "weight_decay": "DOUBLE",
    "warmup_epochs": "INTEGER",
    "recipe": "VARCHAR",
    "optimizer": "VARCHAR",
    "loss": "VARCHAR",
    "label_smoothing": "DOUBLE",
    "squared_k": "DOUBLE",
    "squared_m": "DOUBLE",
    "supcon_temperature": "DOUBLE",
    "ema": "DOUBLE",
    "probe_features": "VARCHAR",
    "probe_dim": "INTEGER",
    "save_every": "INTEGER",
    "seed": "INTEGER",
    "device": "VARCHAR",
    "workers": "INTEGER",
    "eval_epochs": "VARCHAR",
    "factors": "VARCHAR",
    "precision": "VARCHAR",
    "cka": "VARCHAR",
    "probe_per_subclass": "INTEGER",
    "save": "VARCHAR",
    "preprocess": "VARCHAR",
    "mean": "VARCHAR",  # comma list, as input.mean
    "std": "VARCHAR",
    "interpolation": "VARCHAR",
    "crop_pct": "DOUBLE",
    cv.PARAM_INPUT_SOURCE: "VARCHAR",  # the preprocessing applied: dataset | model
    cv.PARAM_INPUT_SIZE: "INTEGER",
    cv.PARAM_INPUT_MEAN: "VARCHAR",
    cv.PARAM_INPUT_STD: "VARCHAR",
    cv.PARAM_INPUT_INTERPOLATION: "VARCHAR",
    cv.PARAM_INPUT_CROP_PCT: "DOUBLE",
    cv.PARAM_INPUT_CROP_MODE: "VARCHAR",
    cv.PARAM_CHECKPOINT_EPOCH: "INTEGER",
    cv.PARAM_EVAL_SET: "VARCHAR",
    cv.PARAM_PROTOCOL: "VARCHAR",  # eval runs: per_superclass (the paper's) | whole (rescore)
    cv.PARAM_DEAD_LAYERS: "VARCHAR",  # eval runs: comma list ("3" alone would infer BIGINT)
    cv.PARAM_MODEL_SOURCE: "VARCHAR",  # eval runs: trained | weights | pretrained
    cv.PARAM_TEST_ACC_LABELS: "VARCHAR",  # eval runs: superclass | subclass
    cv.PARAM_WEIGHTS_SHA256: "VARCHAR",  # model runs: hex digits (all-digit ones exist)
    cv.PARAM_WEIGHTS_PATH: "VARCHAR",
    cv.PARAM_PRETRAINED: "VARCHAR",  # model runs of timm weights: arch.tag
    cv.PARAM_HF_HUB_ID: "VARCHAR",
}


def define_run_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    """``runs`` (with the tags it lifts into columns, as ``snap.run_tags``), ``params``,
    ``tags`` and ``metrics``."""

    def tag(key: str) -> str:
        return f"max(value) FILTER (WHERE key = {quote(key)})"

    execute(
        con,
        setup,
        f"""CREATE TABLE snap.run_tags AS
SELECT run_id, {tag(cv.TAG_KIND)} AS kind, {tag(cv.TAG_PARENT)} AS parent_run_id,
       {tag(cv.TAG_STUDY)} AS study, TRY_CAST({tag(cv.TAG_TRIAL)} AS INTEGER) AS trial,
       {tag(cv.TAG_SOURCE_RUN)} AS source_run, {tag(cv.TAG_ERROR)} AS error
FROM snap.tags GROUP BY run_id""",
    )
    execute(
        con,
        setup,
        """CREATE VIEW runs AS
SELECT r.run_id, CAST(r.experiment_id AS VARCHAR) AS experiment_id, r.experiment, r.run_name,
       t.kind, r.status, t.parent_run_id,
       make_timestamp(r.start_time * 1000) AS start_time,
       make_timestamp(r.end_time * 1000) AS end_time,
       (r.end_time - r.start_time) / 1000.0 AS duration_s,
       t.study, t.trial, t.source_run, t.error, r.artifact_uri
FROM snap.runs r LEFT JOIN snap.run_tags t USING (run_id)""",
    )
    execute(con, setup, "CREATE VIEW params AS SELECT run_id, key, value FROM snap.params")
    execute(con, setup, "CREATE VIEW tags AS SELECT run_id, key, value FROM snap.tags")
    execute(
        con,
        setup,
        "CREATE VIEW metrics AS SELECT run_id, metric, step, value, timestamp FROM snap.metrics",
    )


def _infer_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Type of each param key not in PARAM_TYPES: the narrowest that fits every value."""
    rows = con.execute(
        """SELECT key,
       bool_and(v IS NULL OR TRY_CAST(v AS BIGINT) IS NOT NULL) AS is_int,
       bool_and(v IS NULL OR TRY_CAST(v AS DOUBLE) IS NOT NULL) AS is_float,
       bool_and(v IS NULL OR lower(v) IN ('true', 'false')) AS is_bool
FROM (SELECT key, NULLIF(value, '') AS v FROM snap.params) GROUP BY key ORDER BY key"""
    ).fetchall()
    out: dict[str, str] = {}
    for key, is_int, is_float, is_bool in rows:
        if key in PARAM_TYPES:
            continue
        out[key] = (
            "BOOLEAN" if is_bool else "BIGINT" if is_int else "DOUBLE" if is_float else "VARCHAR"
        )
    return out


def define_param_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    """``run_params``: one row per run, one typed column per param key (after
    `define_run_views`, whose ``snap.run_tags`` it joins)."""
    types = {**PARAM_TYPES, **_infer_types(con)}
    cols = ",\n       ".join(
        f"TRY_CAST(NULLIF(max(value) FILTER (WHERE key = {quote(k)}), '') AS {t}) AS {ident(k)}"
        for k, t in types.items()
    )
    # A table, not a view: most queries join it, and the pivot is the costly part.
    execute(
        con,
        setup,
        f"""CREATE TABLE snap.run_params AS
SELECT r.run_id,
       {cols}
FROM snap.runs r LEFT JOIN snap.params p USING (run_id) GROUP BY r.run_id""",
    )
    execute(
        con,
        setup,
        """CREATE VIEW run_params AS
SELECT t.kind, r.status, p.* FROM snap.run_params p
JOIN snap.runs r USING (run_id) LEFT JOIN snap.run_tags t USING (run_id)""",
    )
