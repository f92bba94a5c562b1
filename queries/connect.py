"""Open DuckDB over a clusterprobe store: MLflow DB + Optuna DB + Parquet layer tables.

Nothing here imports mlflow, optuna or torch: the stores are read as databases.

`connect(store)` attaches the MLflow database and the Optuna storage read-only
(SQLite files by default, PostgreSQL URIs through DuckDB's postgres extension, both
loaded offline from the ``duckdb-extension-*`` PyPI packages), copies the small
tables it needs into memory once (one consistent snapshot: the run list is read
first, so a run shown FINISHED has all its metrics), and defines the views below.
A missing database or table gives empty views with the same columns, so every
query runs on any store and returns zero rows where there is nothing.

Views (stable names; `VIEW_COLUMNS` lists the columns):

* ``runs``: one row per active run (deleted runs and runs of deleted experiments
  are left out): kind, status, parent, times, study/trial links, error line.
* ``params`` (long: run_id, key, value) and ``run_params`` (wide: one column per
  param key, typed where obvious: ints, floats, booleans; '' is NULL).
* ``tags`` (long).
* ``metrics``: every metric of every active run, re-logged values deduplicated
  (per run, key and step the latest timestamp wins; NaN kept as NaN).
* ``layer_scores``: per-layer metrics of eval runs (step = layer index) split into
  metric ('ami', 'purity', 'probe_acc', ...) and factor, with n_layers and
  relative_depth = (layer_index + 1) / n_layers (as the pipeline's layers.json);
  NaN values are left out.
* ``evals``: one row per eval run with the design columns the canned queries group
  by, is_final (last checkpoint), is_transfer (evaluation set != training set) and
  rescored (made by `rescore` from another eval run: left out of the canned queries).
* ``epoch_metrics``: train runs' per-epoch metrics (step = epoch; summaries left out).
* ``layer_metrics``: the runs' ``layer_metrics.parquet`` artifacts (per superclass),
  read lazily from the files at query time.
* ``ari``: the runs' ``ari.parquet`` artifacts (layer x layer, seed and checkpoint ARI).
* ``trials`` and ``trial_params``: Optuna trials with state, values, decoded params and
  the linked MLflow run (user attribute ``mlflow_run_id``).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.conventions import ART_ARI  # the `ari` view reads these files
from clusterprobe.tracker.errors import UsageError

# Per-layer metrics of eval runs (step = layer index): ami_f<k>, purity_f<k>, and
# accuracies measured per layer. Anything else on an eval run is a run-level summary.
LAYER_METRIC_RE = r"^((ami|purity)_f[0-9]+|probe_acc|knn_acc)$"

# Types of the params that runners/config.py RunConfig (and the pipeline) writes.
# Params not listed get a type inferred from their values (BIGINT, DOUBLE, BOOLEAN
# or VARCHAR). Listed ones always exist as columns, so queries can name them on
# any store.
PARAM_TYPES: dict[str, str] = {
    "dataset": "VARCHAR",
    "shuffle": "BOOLEAN",
    cv.PARAM_SHUFFLED: "BOOLEAN",
    "classes": "INTEGER",
    "subclasses": "INTEGER",
    "train_per_subclass": "INTEGER",
    "eval_per_subclass": "INTEGER",
    "image_size": "INTEGER",
    "data_seed": "INTEGER",
    "data_dir": "VARCHAR",
    "split": "VARCHAR",
    "arch": "VARCHAR",
    "stem": "VARCHAR",
    "taps": "VARCHAR",
    "norm": "VARCHAR",
    "labels": "VARCHAR",
    "epochs": "INTEGER",
    "batch_size": "INTEGER",
    "lr": "DOUBLE",
    "momentum": "DOUBLE",
    "weight_decay": "DOUBLE",
    "warmup_epochs": "INTEGER",
    "seed": "INTEGER",
    "device": "VARCHAR",
    "workers": "INTEGER",
    "eval_epochs": "VARCHAR",
    "factors": "VARCHAR",
    "precision": "VARCHAR",
    "probe_per_subclass": "INTEGER",
    "save": "VARCHAR",
    cv.PARAM_CHECKPOINT_EPOCH: "INTEGER",
    cv.PARAM_EVAL_SET: "VARCHAR",
    "protocol": "VARCHAR",  # eval runs: per_superclass (the paper's) | whole (rescore)
}

# Columns of every view, in order (the empty views of an empty store have them too).
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": (
        "run_id",
        "experiment_id",
        "experiment",
        "run_name",
        "kind",
        "status",
        "parent_run_id",
        "start_time",
        "end_time",
        "duration_s",
        "study",
        "trial",
        "source_run",
        "error",
        "artifact_uri",
    ),
    "params": ("run_id", "key", "value"),
    "tags": ("run_id", "key", "value"),
    "metrics": ("run_id", "metric", "step", "value", "timestamp"),
    "layer_scores": (
        "run_id",
        "layer_index",
        "n_layers",
        "relative_depth",
        "metric",
        "factor",
        "value",
    ),
    "evals": (
        "run_id",
        "train_run_id",
        "status",
        "dataset",
        "shuffled",
        "arch",
        "arch_family",
        "norm",
        "taps",
        "labels",
        "seed",
        "epochs",
        "checkpoint_epoch",
        "eval_set",
        "protocol",
        "is_final",
        "is_transfer",
        "rescored",
    ),
    "epoch_metrics": ("run_id", "epoch", "metric", "value", "timestamp"),
    "layer_metrics": cv.LAYER_METRICS_COLUMNS,
    "ari": ("run_id", "other_run_id", "kind", "layer_a", "layer_b", "factor", "value"),
    "trials": (
        "study",
        "study_id",
        "trial_id",
        "number",
        "state",
        "value",
        "values",
        "directions",
        "params",
        "run_id",
        "datetime_start",
        "datetime_complete",
        "duration_s",
    ),
    "trial_params": ("study", "trial_id", "number", "param", "value", "value_num"),
}

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

_LOCK_RETRY_S = 60.0  # SQLite writers hold their lock for milliseconds; wait, never fail


@dataclass(frozen=True)
class Source:
    """One database to attach: DuckDB ATTACH target and type, or None when absent."""

    target: str | None  # file path (sqlite) or libpq connection string (postgres)
    type: str = "sqlite"  # "sqlite" | "postgres"

    @property
    def schema_prefix(self) -> str:
        return "public" if self.type == "postgres" else "main"


@dataclass(frozen=True)
class Sources:
    mlflow: Source
    optuna: Source
    root: Path | None = None  # local store folder (to find artifacts of a moved store)
    notes: tuple[str, ...] = field(default_factory=tuple)


# --- locating the stores ------------------------------------------------------


def _resolve_store(store: str | os.PathLike | None, tracking_uri: str | None):
    from clusterprobe.tracker.store import resolve_store

    return resolve_store(store, tracking_uri)


def _sqlite_file(url: str) -> Path:
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise UsageError(f"{url!r} is not a SQLite file URL; use sqlite:////abs/path.db")
    return Path(unquote(rest[3:].split("?", 1)[0])).expanduser().absolute()


def _database_source(url: str, flag: str) -> Source:
    """A DuckDB ATTACH target for a SQLAlchemy-style database URL."""
    scheme = urlparse(url).scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        path = _sqlite_file(url)
        return Source(str(path) if path.is_file() else None, "sqlite")
    if scheme in ("postgresql", "postgres"):
        # libpq takes the URL itself once the SQLAlchemy driver suffix is gone.
        return Source("postgresql://" + url.split("://", 1)[1], "postgres")
    if scheme in ("http", "https"):
        raise UsageError(
            f"{flag} {url!r}: a tracking server cannot be queried with SQL; pass its "
            "backend database instead (--tracking-uri sqlite:///... or postgresql://...)"
        )
    raise UsageError(
        f"{flag} {url!r}: unsupported for SQL queries; use a sqlite:/// or postgresql:// URL"
    )


def locate(
    store: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> Sources:
    """Where the MLflow and Optuna databases are, with the precedence of `run`.

    MLflow: ``tracking_uri`` > ``$MLFLOW_TRACKING_URI`` > ``store`` > ``./mlruns``.
    Optuna: ``storage`` > the store folder's ``optuna.db``. Missing files are not an
    error: their views are empty.
    """
    resolved = _resolve_store(store, tracking_uri)
    mlflow = _database_source(resolved.tracking_uri, "--tracking-uri")
    notes: list[str] = []
    if storage:
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", storage):
            raise UsageError(
                f"--storage {storage!r}: give an Optuna RDB URL (sqlite:///... or "
                "postgresql://...); journal files cannot be read with SQL"
            )
        optuna = _database_source(storage, "--storage")
    elif resolved.optuna_url:
        optuna = _database_source(resolved.optuna_url, "--storage")
    else:
        optuna = Source(None)
    if mlflow.target is None:
        notes.append(f"no MLflow database at {resolved.tracking_uri}: views are empty")
    return Sources(mlflow=mlflow, optuna=optuna, root=resolved.root, notes=tuple(notes))


# --- DuckDB setup -------------------------------------------------------------


def _extension_dir() -> Path:
    """Per-user folder for the extensions copied from the PyPI packages (offline)."""
    base = os.environ.get("CLUSTERPROBE_DUCKDB_EXTENSIONS")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"clusterprobe-duckdb-{os.getuid()}"


def _load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    try:
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error:
        pass
    try:
        import duckdb_extensions
    except ImportError as err:  # pragma: no cover - a broken install
        raise UsageError(
            f"DuckDB's {name} extension is needed offline: pip install "
            f"duckdb-extensions duckdb-extension-{name}=={duckdb.__version__}"
        ) from err
    duckdb_extensions.import_extension(name, con=con)
    con.execute(f"LOAD {name}")


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _empty(columns: Mapping[str, str]) -> str:
    cols = ", ".join(f"NULL::{t} AS {_ident(c)}" for c, t in columns.items())
    return f"SELECT {cols} WHERE false"


def _is_locked(err: Exception) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


class Analysis:
    """A DuckDB connection with the store's views, plus the setup that made them.

    ``setup`` holds the SQL statements in order (ATTACH, snapshot tables, views), so
    the same views can be rebuilt in a DuckDB shell (`clusterprobe sql --setup`).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, setup: list[str], sources: Sources):
        self.con = con
        self.setup = setup
        self.sources = sources

    def sql(self, text: str, variables: Mapping[str, object] | None = None):
        """Run ``text`` (one or more statements) and return the last result relation."""
        for name, value in (variables or {}).items():
            self.con.execute(f"SET VARIABLE {_ident(name)} = ?", [value])
        return self.con.sql(text)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(
    store: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    *,
    threads: int | None = None,
) -> Analysis:
    """Open an in-memory DuckDB with the views over the resolved stores."""
    sources = locate(store, tracking_uri, storage)
    return connect_sources(sources, threads=threads)


def connect_sources(sources: Sources, *, threads: int | None = None) -> Analysis:
    ext_dir = _extension_dir()
    ext_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "extension_directory": str(ext_dir),
    }
    if threads:
        config["threads"] = threads
    deadline = time.monotonic() + _LOCK_RETRY_S
    delay = 0.05
    while True:
        con = duckdb.connect(":memory:", config=config)
        con.execute("SET enable_progress_bar = false")  # it prints; stdout may be JSON
        setup: list[str] = []
        try:
            _build(con, sources, setup)
            return Analysis(con, setup, sources)
        except duckdb.Error as err:
            con.close()
            if not _is_locked(err) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _run(con: duckdb.DuckDBPyConnection, setup: list[str], statement: str) -> None:
    con.execute(statement)
    setup.append(statement)


def _attach(
    con: duckdb.DuckDBPyConnection, setup: list[str], source: Source, alias: str
) -> set[str]:
    """Attach ``source`` read-only as ``alias``; return the names of its tables."""
    if source.target is None:
        return set()
    _load_extension(con, source.type)
    setup.append(f"LOAD {source.type}")
    try:
        _run(
            con,
            setup,
            f"ATTACH {_quote(source.target)} AS {alias} (TYPE {source.type}, READ_ONLY)",
        )
    except duckdb.Error as err:
        if _is_locked(err):
            raise
        raise UsageError(f"cannot open {source.type} database {source.target!r}: {err}") from err
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = ? AND table_schema = ?",
        [alias, source.schema_prefix],
    ).fetchall()
    return {r[0] for r in rows}


def _raw(
    source: Source, alias: str, tables: set[str], name: str, columns: Mapping[str, str]
) -> str:
    """SELECT of the typed columns of table ``name``, or an empty SELECT if absent."""
    if name not in tables:
        return _empty(columns)
    cols = ", ".join(f"CAST({_ident(c)} AS {t}) AS {_ident(c)}" for c, t in columns.items())
    return f"SELECT {cols} FROM {alias}.{source.schema_prefix}.{_ident(name)}"


def _build(con: duckdb.DuckDBPyConnection, sources: Sources, setup: list[str]) -> None:
    m_tables = _attach(con, setup, sources.mlflow, "mlflow_db")
    o_tables = _attach(con, setup, sources.optuna, "optuna_db")
    _run(con, setup, "CREATE SCHEMA snap")

    def m(name: str) -> str:
        return _raw(sources.mlflow, "mlflow_db", m_tables, name, _MLFLOW_TABLES[name])

    def o(name: str) -> str:
        return _raw(sources.optuna, "optuna_db", o_tables, name, _OPTUNA_TABLES[name])

    # Snapshot, run list first: a run read as FINISHED here had all its metrics
    # committed before, so the metric copy below (read later) holds all of them.
    _run(
        con,
        setup,
        f"""CREATE TABLE snap.runs AS
SELECT r.run_uuid AS run_id, r.experiment_id, e.name AS experiment, r.name AS run_name,
       r.status, r.start_time, r.end_time, r.artifact_uri
FROM ({m("runs")}) r LEFT JOIN ({m("experiments")}) e USING (experiment_id)
WHERE r.lifecycle_stage = 'active' AND coalesce(e.lifecycle_stage, 'active') = 'active'""",
    )
    for name in ("tags", "params"):
        _run(
            con,
            setup,
            f"""CREATE TABLE snap.{name} AS
SELECT t.run_uuid AS run_id, t.key, t.value FROM ({m(name)}) t
WHERE t.run_uuid IN (SELECT run_id FROM snap.runs)""",
        )
    # Re-logged metrics: per (run, key, step) the latest timestamp wins.
    _run(
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
    for name in _OPTUNA_TABLES:
        _run(con, setup, f"CREATE TABLE snap.optuna_{name} AS {o(name)}")

    _define_run_views(con, setup)
    _define_param_views(con, setup)
    _define_layer_views(con, setup)
    _define_artifact_views(con, setup, sources)
    _define_optuna_views(con, setup)


def _define_run_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    def tag(key: str) -> str:
        return f"max(value) FILTER (WHERE key = {_quote(key)})"

    _run(
        con,
        setup,
        f"""CREATE TABLE snap.run_tags AS
SELECT run_id, {tag(cv.TAG_KIND)} AS kind, {tag(cv.TAG_PARENT)} AS parent_run_id,
       {tag(cv.TAG_STUDY)} AS study, TRY_CAST({tag(cv.TAG_TRIAL)} AS INTEGER) AS trial,
       {tag(cv.TAG_SOURCE_RUN)} AS source_run, {tag(cv.TAG_ERROR)} AS error
FROM snap.tags GROUP BY run_id""",
    )
    _run(
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
    _run(con, setup, "CREATE VIEW params AS SELECT run_id, key, value FROM snap.params")
    _run(con, setup, "CREATE VIEW tags AS SELECT run_id, key, value FROM snap.tags")
    _run(
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


def _define_param_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    types = {**PARAM_TYPES, **_infer_types(con)}
    cols = ",\n       ".join(
        f"TRY_CAST(NULLIF(max(value) FILTER (WHERE key = {_quote(k)}), '') AS {t}) AS {_ident(k)}"
        for k, t in types.items()
    )
    # A table, not a view: most queries join it, and the pivot is the costly part.
    _run(
        con,
        setup,
        f"""CREATE TABLE snap.run_params AS
SELECT r.run_id,
       {cols}
FROM snap.runs r LEFT JOIN snap.params p USING (run_id) GROUP BY r.run_id""",
    )
    _run(
        con,
        setup,
        """CREATE VIEW run_params AS
SELECT t.kind, r.status, p.* FROM snap.run_params p
JOIN snap.runs r USING (run_id) LEFT JOIN snap.run_tags t USING (run_id)""",
    )


def _define_layer_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    summaries = ", ".join(_quote(k) for k in cv.SUMMARY_METRICS)
    _run(
        con,
        setup,
        f"""CREATE TABLE snap.layer_scores AS
WITH keys AS (  -- the few distinct metric names, parsed once (not per row)
  SELECT metric AS key, regexp_extract(metric, '^(.*?)(_f[0-9]+)?$', 1) AS name,
         TRY_CAST(regexp_extract(metric, '_f([0-9]+)$', 1) AS INTEGER) AS factor
  FROM (SELECT DISTINCT metric FROM snap.metrics)
  WHERE regexp_matches(metric, {_quote(LAYER_METRIC_RE)})
), s AS (
  SELECT m.run_id, CAST(m.step AS INTEGER) AS layer_index, k.name AS metric, k.factor, m.value
  FROM snap.metrics m JOIN keys k ON m.metric = k.key JOIN snap.run_tags t USING (run_id)
  WHERE t.kind = {_quote("eval")}
    AND NOT isnan(m.value)  -- a metric that could not be computed: kept in `metrics` only
), n AS (
  SELECT run_id, CAST(max(layer_index) + 1 AS INTEGER) AS n_layers FROM s GROUP BY run_id
)
SELECT s.run_id, s.layer_index, n.n_layers,
       (s.layer_index + 1) / n.n_layers::DOUBLE AS relative_depth, s.metric, s.factor, s.value
FROM s JOIN n USING (run_id)""",
    )
    _run(
        con,
        setup,
        "CREATE VIEW layer_scores AS SELECT run_id, layer_index, n_layers, relative_depth, "
        "metric, factor, value FROM snap.layer_scores",
    )
    # One row per eval run: what the canned queries group by. norm (VGG only, as
    # runners/models.py resolves it): the `norm` param when it names one (none, bn,
    # ln), else from the timm name (vgg16_bn -> bn); NULL for other families.
    _run(
        con,
        setup,
        f"""CREATE TABLE snap.evals AS
SELECT p.run_id, t.parent_run_id AS train_run_id, r.status, p.dataset,
       coalesce(p.shuffled, p.shuffle, false) AS shuffled, p.arch,
       coalesce(regexp_extract(p.arch, '^(resnet|resnext|vgg|vit|deit|convnext|efficientnet|mobilenet)', 1),
                p.arch) AS arch_family,
       CASE WHEN p.norm IN ('none', 'bn', 'ln') THEN p.norm
            WHEN p.arch LIKE 'vgg%\\_bn' ESCAPE '\\' THEN 'bn'
            WHEN p.arch LIKE 'vgg%' THEN 'none' END AS norm,
       p.taps, p.labels, p.seed, p.epochs, p.{cv.PARAM_CHECKPOINT_EPOCH},
       p.{cv.PARAM_EVAL_SET},
       coalesce(p.protocol, 'per_superclass') AS protocol,
       (p.{cv.PARAM_CHECKPOINT_EPOCH} IS NULL OR p.epochs IS NULL
        OR p.{cv.PARAM_CHECKPOINT_EPOCH} >= p.epochs) AS is_final,
       coalesce(NOT starts_with(lower(p.{cv.PARAM_EVAL_SET}), lower(p.dataset)), false)
         AS is_transfer,
       t.source_run IS NOT NULL AS rescored
FROM snap.run_params p JOIN snap.runs r USING (run_id) JOIN snap.run_tags t USING (run_id)
WHERE t.kind = 'eval'""",
    )
    _run(con, setup, "CREATE VIEW evals AS SELECT * FROM snap.evals")
    _run(
        con,
        setup,
        f"""CREATE VIEW epoch_metrics AS
SELECT m.run_id, CAST(m.step AS INTEGER) AS epoch, m.metric, m.value, m.timestamp
FROM snap.metrics m JOIN snap.run_tags t USING (run_id)
WHERE t.kind = {_quote("train")} AND m.metric NOT IN ({summaries})""",
    )


def _artifact_dir(uri: str | None, run_id: str, root: Path | None) -> Path | None:
    """Local folder of a run's artifacts; follows a moved store folder."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" and uri.startswith("/"):
        path = Path(uri)
    else:
        return None  # object stores are not read here
    if path.is_dir() or root is None:
        return path
    # The store folder moved and nobody has rewritten the locations yet:
    # <old root>/artifacts/<experiment>/<run_id>/artifacts -> <root>/artifacts/...
    parts = path.parts
    if run_id in parts:
        i = parts.index(run_id)
        if i >= 1:
            return root.joinpath("artifacts", *parts[i - 1 :])
    return path


def _artifact_files(con: duckdb.DuckDBPyConnection, root: Path | None, name: str) -> list[str]:
    """Files ``name`` of every ended run (a RUNNING run may still be writing them)."""
    rows = con.execute(
        "SELECT run_id, artifact_uri FROM snap.runs WHERE status <> 'RUNNING' ORDER BY run_id"
    ).fetchall()
    out = []
    for run_id, uri in rows:
        folder = _artifact_dir(uri, run_id, root)
        if folder is not None and (folder / name).is_file():
            out.append(str(folder / name))
    return out


def _parquet_view(
    con: duckdb.DuckDBPyConnection,
    setup: list[str],
    view: str,
    files: Sequence[str],
    columns: Mapping[str, str],
) -> None:
    if files:
        listing = "[" + ", ".join(_quote(f) for f in files) + "]"
        cols = ", ".join(f"TRY_CAST({_ident(c)} AS {t}) AS {_ident(c)}" for c, t in columns.items())
        body = (
            # Schema from the first file (every file has the conventions' columns);
            # union_by_name would open all files whenever the view is bound.
            f"SELECT {cols} FROM read_parquet({listing})\n"
            "WHERE run_id IN (SELECT run_id FROM snap.runs)"
        )
    else:
        body = _empty(columns)
    _run(con, setup, f"CREATE VIEW {view} AS\n{body}")


def _define_artifact_views(
    con: duckdb.DuckDBPyConnection, setup: list[str], sources: Sources
) -> None:
    layer_cols = {
        "run_id": "VARCHAR",
        "layer_index": "INTEGER",
        "layer_name": "VARCHAR",
        "relative_depth": "DOUBLE",
        "superclass": "INTEGER",
        "factor": "INTEGER",
        "metric": "VARCHAR",
        "value": "DOUBLE",
    }
    _parquet_view(
        con,
        setup,
        "layer_metrics",
        _artifact_files(con, sources.root, cv.ART_LAYER_METRICS),
        layer_cols,
    )
    ari_cols = {
        "run_id": "VARCHAR",
        "other_run_id": "VARCHAR",
        "kind": "VARCHAR",
        "layer_a": "INTEGER",
        "layer_b": "INTEGER",
        "factor": "INTEGER",
        "value": "DOUBLE",
    }
    _parquet_view(con, setup, "ari", _artifact_files(con, sources.root, ART_ARI), ari_cols)


def _define_optuna_views(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    # Optuna stores a categorical choice as its index into the distribution's choices.
    _run(
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
    _run(
        con,
        setup,
        """CREATE VIEW trials AS
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
  FROM snap.optuna_trial_user_attributes WHERE key = 'mlflow_run_id'
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


# --- canned queries -----------------------------------------------------------

QUERY_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # DuckDB type the value is cast to
    default: str | None  # None: unset (the query covers everything)
    help: str


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    params: tuple[Param, ...]
    description: str


_PARAM_RE = re.compile(
    r"^--\s*param\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<type>[A-Z]+)"
    r"(?:\s*=\s*(?P<default>\S+))?\s*(?::\s*(?P<help>.*))?$"
)


def query_names() -> list[str]:
    return sorted(p.stem for p in QUERY_DIR.glob("*.sql"))


def load_query(name: str) -> Query:
    """Read ``queries/<name>.sql``; its header declares the parameters.

    Header lines ``-- param NAME TYPE [= DEFAULT] : help`` declare a parameter; in the
    SQL it is ``getvariable('NAME')`` (NULL when unset: no filter), so the file pastes
    into a DuckDB shell as it is, with ``SET VARIABLE NAME = ...`` to filter.
    """
    names = query_names()
    if name not in names:
        raise UsageError(f"unknown query {name!r}; choose one of: {', '.join(names)}")
    text = (QUERY_DIR / f"{name}.sql").read_text()
    params = []
    description = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _PARAM_RE.match(line.strip())
        if match:
            default = match["default"]
            params.append(
                Param(
                    match["name"],
                    match["type"],
                    None if default in (None, "NULL") else default.strip("'"),
                    (match["help"] or "").strip(),
                )
            )
        else:
            description.append(line[2:].strip())
    return Query(name, text, tuple(params), "\n".join(description).strip())


def parse_params(query: Query, pairs: Iterable[str]) -> dict[str, object]:
    """``["factor=2", ...]`` -> typed values for the query's declared parameters."""
    declared = {p.name: p for p in query.params}
    values: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in declared:
            valid = ", ".join(declared) or "(none)"
            raise UsageError(
                f"--param {pair!r}: {query.name} takes NAME=VALUE with NAME one of: {valid}"
            )
        values[key] = value
    out: dict[str, object] = {}
    for p in query.params:
        raw = values.get(p.name, p.default)
        out[p.name] = None if raw is None else _cast(p, raw, query.name)
    return out


def _cast(param: Param, raw: str, query: str) -> object:
    try:
        value = duckdb.execute(f"SELECT CAST(? AS {param.type})", [raw]).fetchone()[0]
    except duckdb.Error:
        value = None
    if value is None and raw.strip().upper() not in ("", "NULL"):
        raise UsageError(
            f"--param {param.name}={raw!r}: {query} expects a {param.type.lower()} ({param.help})"
        )
    return value


def run_query(analysis: Analysis, name: str, params: Mapping[str, object] | None = None):
    """Run canned query ``name`` with typed ``params``; returns a DuckDB relation."""
    query = load_query(name)
    values = parse_params(query, [])
    for key, value in (params or {}).items():
        if key not in values:
            raise UsageError(
                f"{name} has no parameter {key!r}; valid: {', '.join(values) or '(none)'}"
            )
        values[key] = value
    return analysis.sql(query.sql, values)


def query_df(analysis: Analysis, name: str, **params):
    """Canned query ``name`` as a pandas DataFrame (for Python users and plots)."""
    return run_query(analysis, name, params).df()


def note(message: str) -> None:
    print(f"clusterprobe: note: {message}", file=sys.stderr)
