"""The DuckDB views and every canned query, checked against pandas on the logged numbers.

The store is written through the real Tracker/MLflow/Optuna (tests/querystore.py);
the expected answers are computed here from the values that were logged, never
from the views.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap
import types
import typing

import numpy as np
import pandas as pd
import pytest
import querystore
from clusterprobe.queries.canned import load_query, query_df, query_names
from clusterprobe.queries.connect import connect
from clusterprobe.queries.run_views import PARAM_TYPES
from clusterprobe.queries.view_columns import VIEW_COLUMNS
from clusterprobe.runners.config import RunConfig
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.store import local_store
from scipy import stats


@pytest.fixture(scope="module")
def qs(_template_store, tmp_path_factory):
    target = tmp_path_factory.mktemp("queries") / "mlruns"
    shutil.copytree(_template_store.root, target)
    return querystore.build(local_store(target))


@pytest.fixture(scope="module")
def db(qs):
    with connect(qs.store.root) as analysis:
        yield analysis


def _scored(qs) -> pd.DataFrame:
    """Logged per-layer values with the eval run's design, as the queries see them."""
    df = qs.truth.merge(qs.evals.drop(columns="n_layers"), on="run_id")
    df["relative_depth"] = (df["layer_index"] + 1) / df["n_layers"]
    return df


def _main(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["is_final"] & ~df["is_transfer"]]


def _agg(df: pd.DataFrame, keys: list[str], col: str = "value") -> pd.DataFrame:
    out = df.groupby(keys, dropna=False)[col].agg(["mean", "std", "count"]).reset_index()
    return _ci(out.rename(columns={"count": "n"}))


def _ci(df: pd.DataFrame, mean: str = "mean", std: str = "std", prefix: str = "") -> pd.DataFrame:
    """The 95% t-interval of a mean over n values (scipy's t quantile; NaN for n = 1)."""
    n = df["n"].astype(float)
    half = stats.t.ppf(0.975, n - 1) * df[std] / np.sqrt(n)
    return df.assign(**{f"{prefix}ci_lo": df[mean] - half, f"{prefix}ci_hi": df[mean] + half})


# The store's eval runs differ in these design params (the rest are equal or not design),
# so the `design` column names exactly these, and tests read a group's design from it.
VARYING = ("arch", "labels", "lr", "shuffled")


def _designs(got: pd.DataFrame) -> pd.DataFrame:
    """``got`` with the design params parsed from its ``design`` text (d_<param>)."""
    parsed = got["design"].str.extractall(r"(?P<key>[^ =]+)=(?P<value>[^ ]+)")
    wide = parsed.reset_index().pivot(index="level_0", columns="key", values="value")
    out = got.copy()
    out["d_arch"] = wide["arch"]
    out["d_labels"] = wide["labels"]
    out["lr"] = wide["lr"].astype(float)
    out["d_shuffled"] = wide["shuffled"].map({"True": True, "False": False})
    return out


def _check(got: pd.DataFrame, want: pd.DataFrame, keys: list[str], cols: dict[str, str]):
    """Same rows (by keys) and values (got column -> want column) to 1e-9."""
    assert len(got) == len(want), (len(got), len(want))
    merged = got.merge(want, on=keys, how="outer", suffixes=("_got", "_want"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    for g, w in cols.items():
        a = merged[g if g != w else g + "_got"].astype(float).to_numpy()
        b = merged[w if g != w else w + "_want"].astype(float).to_numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, equal_nan=True, err_msg=g)


# --- views ------------------------------------------------------------------------


def test_views_have_their_documented_columns(db):
    for view, columns in VIEW_COLUMNS.items():
        got = db.sql(f"SELECT * FROM {view} LIMIT 0").columns
        assert tuple(got) == tuple(columns), view


def test_runs_exclude_deleted_and_keep_running(db, qs):
    runs = db.sql("SELECT run_id, kind, status, parent_run_id FROM runs").df()
    assert qs.deleted_run not in set(runs["run_id"])
    status = runs.set_index("run_id")["status"]
    assert status[qs.running_run] == "RUNNING"
    evals = runs[runs["kind"] == "eval"]
    # the designed eval runs + running + rescored + repeated
    assert len(evals) == len(qs.evals) + 3
    parents = runs.set_index("run_id")["parent_run_id"]
    for row in qs.evals.itertuples():
        assert parents[row.run_id] == row.train_run_id


def test_run_params_are_typed(db, qs):
    rp = db.sql("SELECT * FROM run_params WHERE kind = 'eval'").df().set_index("run_id")
    row = rp.loc[qs.evals["run_id"].iloc[0]]
    assert row["arch"] == "resnet18" and row["epochs"] == querystore.EPOCHS
    assert row["checkpoint_epoch"] == 1 and row["lr"] == pytest.approx(querystore.DEFAULT_LR)
    assert bool(row["shuffled"]) is False and pd.isna(row["classes"])  # '' -> NULL
    types = dict(db.sql("SELECT * FROM run_params LIMIT 0").df().dtypes.astype(str))
    assert types["epochs"].startswith("int") and types["lr"] == "float64"
    assert types["shuffled"] == "bool"


def _duckdb_type(annotation) -> str:
    """The column type a RunConfig field's param gets (to_params: tuples comma-joined,
    None as '' which reads as NULL)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return "VARCHAR"
    return {bool: "BOOLEAN", int: "INTEGER", float: "DOUBLE", str: "VARCHAR"}[annotation]


def test_param_types_follow_run_config():
    # queries may not import runners, so PARAM_TYPES is a copy of RunConfig's fields:
    # every field listed with its annotation's type, nothing else but eval-run params.
    hints = typing.get_type_hints(RunConfig)
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    columns = [name for name in fields if hints[name] is not dict]  # extra: extra.* params
    assert set(fields) - set(columns) == {"extra"}
    wrong = {
        name: (PARAM_TYPES.get(name), _duckdb_type(hints[name]))
        for name in columns
        if PARAM_TYPES.get(name) != _duckdb_type(hints[name])
    }
    assert not wrong, f"PARAM_TYPES field: (listed, annotation's type): {wrong}"
    conventions = {value for key, value in vars(cv).items() if key.startswith("PARAM_")}
    stray = set(PARAM_TYPES) - set(columns) - conventions
    assert not stray, f"PARAM_TYPES lists neither a RunConfig field nor a param: {stray}"


def test_metrics_deduplicate_relogged_values(db, qs):
    run_id, value = qs.relogged
    got = db.sql(
        f"SELECT value FROM metrics WHERE run_id = '{run_id}' AND metric = 'ami_f1' AND step = 0"
    ).fetchall()
    assert got == [(value,)]


def test_nan_metric_kept_in_metrics_not_in_layer_scores(db, qs):
    run_id = qs.evals["run_id"].iloc[0]
    (value,) = db.sql(
        f"SELECT value FROM metrics WHERE run_id = '{run_id}' AND metric = 'knn_acc'"
    ).fetchone()
    assert np.isnan(value)
    n = db.sql("SELECT count(*) FROM layer_scores WHERE metric = 'knn_acc'").fetchone()[0]
    assert n == 0


def test_layer_scores_match_logged_values(db, qs):
    got = db.sql(
        "SELECT * FROM layer_scores WHERE run_id IN (SELECT run_id FROM evals "
        "WHERE status = 'FINISHED' AND NOT rescored AND NOT is_repeat)"
    ).df()
    want = qs.truth.assign(relative_depth=(qs.truth.layer_index + 1) / qs.truth.n_layers)
    keys = ["run_id", "layer_index", "metric", "factor"]
    _check(got, want, keys, {"value": "value", "relative_depth": "relative_depth"})


# relative_depth = (layer_index + 1) / n_layers, written out for the store's layer counts.
DEPTHS_BY_ARCH = {
    "vit_tiny_patch16_224": [0.25, 0.5, 0.75, 1.0],  # 4 layers
    "vgg16": [0.2, 0.4, 0.6, 0.8, 1.0],  # 5 layers
}


@pytest.mark.parametrize("view", ["layer_scores", "layer_metrics"])
def test_relative_depth_by_hand(db, view):
    got = db.sql(
        f"""SELECT e.arch, s.run_id, list(DISTINCT s.relative_depth ORDER BY s.relative_depth)
        FROM {view} s JOIN evals e USING (run_id) GROUP BY ALL"""
    ).fetchall()
    runs = 0
    for arch, run_id, depths in got:
        if arch in DEPTHS_BY_ARCH:
            assert depths == pytest.approx(DEPTHS_BY_ARCH[arch], abs=1e-15), run_id
            runs += 1
    assert runs >= 4  # two seeds of each


def test_final_evals_are_the_runs_the_findings_average(db, qs):
    want = qs.evals[qs.evals.is_final]
    for view, transfer in (("final_evals", False), ("final_transfer_evals", True)):
        got = db.sql(f"SELECT run_id, shuffled FROM {view} ORDER BY run_id").df()
        w = want[want.is_transfer == transfer].sort_values("run_id")
        assert list(got["run_id"]) == list(w["run_id"]), view  # no RUNNING, rescored, deleted
        assert list(got["shuffled"]) == list(w["shuffled"]), view


def _header(name: str, field: str) -> list[str]:
    """The comma list after ``-- <field>:`` in a canned query's header (continued on
    ``--   `` lines)."""
    lines = load_query(name).sql.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"-- {field}:"))
    text = lines[start].split(":", 1)[1]
    for line in lines[start + 1 :]:
        if not line.startswith("--   "):
            break
        text += " " + line[2:]
    return [part.strip().rstrip(".") for part in text.split(",")]


@pytest.mark.parametrize("name", query_names())
def test_query_headers_name_their_columns_and_views(db, name):
    assert list(query_df(db, name).columns) == _header(name, "Columns")
    macros = {"design_key_without"}
    assert set(_header(name, "Reads")) <= set(VIEW_COLUMNS) | macros


@pytest.mark.parametrize("name", query_names())
def test_every_query_returns_rows(db, name):
    assert len(query_df(db, name)) > 0


def test_layer_metrics_parquet_means_equal_mlflow_metrics(db, qs):
    # Per superclass in Parquet; MLflow holds the mean over superclasses (re-logged
    # value aside, which exists in MLflow only).
    got = db.sql(
        """SELECT p.run_id, p.layer_index, p.metric, p.factor, avg(p.value) AS pq, any_value(s.value) AS ml
        FROM layer_metrics p JOIN layer_scores s USING (run_id, layer_index, metric, factor)
        GROUP BY ALL"""
    ).df()
    run_id, _ = qs.relogged
    got = got[~((got.run_id == run_id) & (got.layer_index == 0))]
    assert len(got) > 300
    np.testing.assert_allclose(got["pq"], got["ml"], atol=1e-9)
    names = db.sql("SELECT DISTINCT layer_name FROM layer_metrics").df()["layer_name"]
    assert "resnet18.layer5" in set(names)


def test_epoch_metrics_are_train_runs_without_summaries(db):
    df = db.sql("SELECT * FROM epoch_metrics").df()
    assert set(df["metric"]) == {"train_loss", "train_acc", "lr"}
    loss = df[df.metric == "train_loss"].set_index("epoch")["value"]
    np.testing.assert_allclose(loss.loc[2].to_numpy(), 0.5)


def test_trials_decode_params_and_link_runs(db, qs):
    df = db.sql("SELECT * FROM trials ORDER BY number").df()
    assert list(df["state"]) == list(qs.trials["state"])
    assert list(df["run_id"].fillna("")) == list(qs.trials["run_id"].fillna(""))
    params = [dict(p) for p in df["params"]]
    assert params[0] == {"arch": "resnet18", "epochs": "1"}
    assert params[1] == {"arch": "vgg16", "epochs": "2"}
    assert df["value"].iloc[1] == pytest.approx(0.2)
    assert df["directions"].iloc[0].tolist() == ["MAXIMIZE"]


def test_empty_store_gives_empty_views_and_queries(tmp_path):
    with connect(tmp_path / "nothing") as analysis:
        for view in VIEW_COLUMNS:
            assert analysis.sql(f"SELECT count(*) FROM {view}").fetchone()[0] == 0
        for name in query_names():
            assert query_df(analysis, name).empty, name


def test_missing_optuna_db_gives_empty_trials(qs, tmp_path):
    # The MLflow database alone: copy it somewhere without optuna.db.
    shutil.copy(qs.store.root / "mlflow.db", tmp_path / "mlflow.db")
    with connect(tmp_path) as analysis:
        assert query_df(analysis, "study_trials").empty
        assert analysis.sql("SELECT count(*) FROM runs").fetchone()[0] > 0


def test_a_store_only_session_answers_every_query_and_plot(db, qs, tmp_path):
    import duckdb
    from clusterprobe.queries.plots import PLOTS, figure

    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with connect(qs.store.root) as analysis:
        assert analysis.restrict_to_store() == [str(qs.store.root)]
        with pytest.raises(duckdb.PermissionException, match="secret.csv"):
            analysis.sql(f"SELECT * FROM read_csv('{secret}')").fetchall()
        for view in VIEW_COLUMNS:  # every row read, Parquet views included
            count = f"SELECT count(*), count(DISTINCT COLUMNS(*)) FROM {view}"
            assert analysis.sql(count).fetchall() == db.sql(count).fetchall(), view
        for name in query_names():
            pd.testing.assert_frame_equal(query_df(analysis, name), query_df(db, name))
        for name, plot in PLOTS.items():
            sql = plot.sql if plot.query is None else load_query(plot.query).sql
            figure(name, analysis.sql(sql, plot.params).df())


def test_a_store_only_session_reads_artifacts_outside_the_store(store, tmp_path):
    """Artifacts on shared storage (an artifact root outside the store folder) stay
    readable; the rest of that storage does not."""
    import duckdb
    from clusterprobe.runners.evalrun import LayerScores
    from clusterprobe.runners.evalrun.tables import layer_metrics_table
    from clusterprobe.tracker.store import Store
    from clusterprobe.tracker.tracking import Tracker

    shared = tmp_path / "shared"
    outside = Store(store.tracking_uri, store.root, str(shared / "artifacts"), store.optuna_url)
    tracker = Tracker(outside)
    ami = np.full((2, 1, 1), 0.25)
    scores = LayerScores(["a", "b"], [0], (1,), ami, ami, [0.5, 0.6])
    params = {"dataset": "synthetic", "epochs": "1", "checkpoint_epoch": "1"}
    with tracker.start_run("eval", params={**params, "eval_set": "synthetic:eval"}) as ev:
        ev.log_metric_steps("ami_f1", [0.25, 0.25])
        ev.log_parquet(layer_metrics_table(ev.run_id, scores), cv.ART_LAYER_METRICS)
    folder = tracker.artifact_path(ev.run_id, cv.ART_LAYER_METRICS).parent
    assert not folder.is_relative_to(store.root)
    (shared / "other.csv").write_text("a\n1\n")
    with connect(store.root) as analysis:
        assert analysis.restrict_to_store() == sorted([str(store.root), str(folder)])
        got = analysis.sql("SELECT metric, layer_index, value FROM layer_metrics ORDER BY ALL")
        assert got.fetchall() == [
            ("ami", 0, 0.25), ("ami", 1, 0.25), ("probe_acc", 0, 0.5), ("probe_acc", 1, 0.6),
            ("purity", 0, 0.25), ("purity", 1, 0.25),
        ]  # fmt: skip
        with pytest.raises(duckdb.PermissionException):
            analysis.sql(f"SELECT * FROM read_csv('{shared / 'other.csv'}')").fetchall()


# --- canned queries ----------------------------------------------------------------


def test_layer_profile(db, qs):
    got = _designs(query_df(db, "layer_profile"))
    df = _main(_scored(qs))
    keys = ["dataset", "shuffled", "arch", "taps", "labels", "lr", "layer_index", "metric"]
    keys.append("factor")
    want = _agg(df, keys)
    want["rd"] = df.groupby(keys, dropna=False)["relative_depth"].mean().to_numpy()
    got["factor"] = got["factor"].astype(float)
    want["factor"] = want["factor"].astype(float)
    cols = {"mean": "mean", "std": "std", "n": "n", "relative_depth": "rd"}
    _check(got, want, keys, {**cols, "ci_lo": "ci_lo", "ci_hi": "ci_hi"})
    # n = 1 groups (vgg16_bn) appear, std NULL
    one = got[got["arch"] == "vgg16_bn"]
    assert len(one) and (one["n"] == 1).all() and one["std"].isna().all()


def test_layer_profile_of_one_run(db, qs):
    run_id = qs.evals["run_id"].iloc[0]  # an intermediate checkpoint: allowed by run_id
    got = query_df(db, "layer_profile", run_id=run_id, metric="ami", factor=2)
    want = qs.truth[(qs.truth.run_id == run_id) & (qs.truth.metric == "ami")]
    want = want[want.factor == 2].sort_values("layer_index")
    np.testing.assert_allclose(got["mean"], want["value"], atol=1e-12)
    assert (got["n"] == 1).all()


def _best(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Each run's best layer per `by`; ties -> the shallower layer."""
    df = df.sort_values(["value", "layer_index"], ascending=[False, True])
    return df.groupby(["run_id", *by], dropna=False).head(1)


def test_best_layers(db, qs):
    got = _designs(query_df(db, "best_layers"))
    df = _main(_scored(qs))
    best = _best(df[df.metric == "ami"], ["factor"])
    keys = ["dataset", "shuffled", "arch", "taps", "labels", "lr", "factor"]
    want = best.groupby(keys).agg(
        bl_mean=("layer_index", "mean"),
        bl_std=("layer_index", "std"),
        bd_mean=("relative_depth", "mean"),
        bv_mean=("value", "mean"),
        bv_std=("value", "std"),
        n=("value", "size"),
    )
    want = _ci(want.reset_index(), "bv_mean", "bv_std")
    _check(
        got,
        want,
        keys,
        {
            "best_layer_mean": "bl_mean",
            "best_layer_std": "bl_std",
            "best_depth_mean": "bd_mean",
            "best_value_mean": "bv_mean",
            "best_value_std": "bv_std",
            "n": "n",
            "best_value_ci_lo": "ci_lo",
            "best_value_ci_hi": "ci_hi",
        },
    )


def test_natural_vs_shuffled(db, qs):
    got = _designs(query_df(db, "natural_vs_shuffled"))
    df = _main(_scored(qs))
    df = df[(df.metric == "ami") & (df.factor == 1)]
    design = ["dataset", "arch", "shuffled", "lr"]
    per_layer = _agg(df, [*design, "layer_index"])
    best = df.groupby(["run_id", *design])["value"].max().reset_index()
    best = _agg(best, design).assign(layer_index=np.nan)
    want = pd.concat([per_layer, best], ignore_index=True)
    got["layer_index"] = got["layer_index"].astype(float)
    want["layer_index"] = want["layer_index"].astype(float)
    keys = [*design, "layer_index"]
    cols = {"mean": "mean", "std": "std", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"}
    _check(got, want, keys, cols)
    # finding 1 built into the store (shuffled runs logged +0.3): shuffled is ahead
    r18 = got[(got.arch == "resnet18") & got.shuffled]
    assert r18["minus_natural"].mean() > 0.1
    # against the natural design of the same lr (0.4), never the lr 0.1 one
    default = want[(want.arch == "resnet18") & (want.lr == querystore.DEFAULT_LR)]
    natural = default[~default.shuffled].set_index("layer_index")["mean"]
    shuffled = default[default.shuffled].set_index("layer_index")["mean"]
    diff = r18.set_index("layer_index")["minus_natural"]
    np.testing.assert_allclose(diff.loc[shuffled.index], (shuffled - natural), atol=1e-9)
    # the lr 0.1 design has no shuffled counterpart, and is its own natural reference
    other = got[got.lr == querystore.LR_VARIANT]
    assert len(other) and not other.shuffled.any()
    np.testing.assert_allclose(other["minus_natural"], 0.0, atol=1e-12)


def test_architectures_by_depth(db, qs):
    got = _designs(query_df(db, "architectures_by_depth", bins=4))
    df = _main(_scored(qs))
    df = df[(df.metric == "ami") & (df.factor == 1)].copy()
    df["depth_bin"] = np.minimum(np.floor(df["relative_depth"] * 4), 3).astype(int)
    keys = ["arch", "dataset", "shuffled", "lr", "depth_bin"]
    per_run = df.groupby(["run_id", *keys])["value"].mean()
    want = _agg(per_run.reset_index(), keys)
    _check(got, want, keys, {"mean": "mean", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"})
    assert set(got["arch_family"]) == {"resnet", "vgg", "vit"}


def test_norm_peak_shift(db, qs):
    got = query_df(db, "norm_peak_shift", family="vgg")
    df = _main(_scored(qs))
    df = df[(df.metric == "ami") & (df.factor == 1) & df.arch.str.startswith("vgg")]
    best = _best(df, [])
    best["norm"] = np.where(best.arch == "vgg16_bn", "bn", "none")
    want = best.groupby("norm").agg(
        d=("relative_depth", "mean"),
        v=("value", "mean"),
        v_std=("value", "std"),
        n=("value", "size"),
    )
    want = _ci(want.reset_index(), "v", "v_std")
    cols = {"peak_depth_mean": "d", "peak_value_mean": "v", "n": "n"}
    _check(got, want, ["norm"], {**cols, "peak_value_ci_lo": "ci_lo", "peak_value_ci_hi": "ci_hi"})
    shift = got.set_index("norm")["depth_shift_vs_none"]
    w = want.set_index("norm")["d"]
    assert shift["bn"] == pytest.approx(w["bn"] - w["none"], abs=1e-9)
    assert shift["none"] == pytest.approx(0.0, abs=1e-12)


def _probe_correlations(df: pd.DataFrame, qs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run (arch, pearson, spearman) over layers of AMI f1 vs probe_acc, and each run's
    best AMI and best probe accuracy."""
    x = df[(df.metric == "ami") & (df.factor == 1)].set_index(["run_id", "layer_index"])["value"]
    y = df[df.metric == "probe_acc"].set_index(["run_id", "layer_index"])["value"]
    pairs = pd.concat({"x": x, "y": y}, axis=1).dropna().reset_index()
    design = qs.evals.set_index("run_id")
    keys = ["arch", "shuffled", "lr", "labels"]
    rows = []
    for run_id, g in pairs.groupby("run_id"):
        rows.append(
            dict(
                **design.loc[run_id, keys].to_dict(),
                pearson=stats.pearsonr(g.x, g.y)[0],
                spearman=stats.spearmanr(g.x, g.y)[0],
            )
        )
    return pd.DataFrame(rows), pairs.groupby("run_id")[["x", "y"]].max()


@pytest.mark.parametrize("transfer", [False, True])
def test_clusterability_vs_probe(db, qs, transfer):
    got = query_df(db, "clusterability_vs_probe")
    scored = _scored(qs)
    if transfer:  # the transfer set clustered whole vs the transfer probe
        df, prefix = scored[scored.is_final & scored.is_transfer], "transfer_"
        assert set(got[got.scope.str.startswith(prefix)].eval_set) == {querystore.TRANSFER_SET}
    else:
        df, prefix = _main(scored), ""
    per_run, best = _probe_correlations(df, qs)
    keys = ["arch", "shuffled", "lr", "labels"]
    want = _agg(per_run.melt(keys, var_name="method"), [*keys, "method"])
    layers = _designs(got[got.scope == prefix + "layers"].reset_index(drop=True))
    layers["shuffled"], layers["labels"] = layers["d_shuffled"], layers["d_labels"]
    cols = {"mean": "mean", "std": "std", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"}
    _check(layers, want, [*keys, "method"], cols)
    runs = got[got.scope == prefix + "runs"].set_index("method")
    assert runs.loc["pearson", "mean"] == pytest.approx(stats.pearsonr(best.x, best.y)[0], abs=1e-9)
    assert runs.loc["spearman", "mean"] == pytest.approx(
        stats.spearmanr(best.x, best.y)[0], abs=1e-9
    )
    assert runs.loc["pearson", "n"] == len(best) and runs["std"].isna().all()
    # Fisher's z interval of a correlation over n runs
    r, n = runs.loc["pearson", "mean"], len(best)
    half = stats.norm.ppf(0.975) / np.sqrt(n - 3)
    assert runs.loc["pearson", "ci_lo"] == pytest.approx(np.tanh(np.arctanh(r) - half), abs=1e-12)
    assert runs.loc["pearson", "ci_hi"] == pytest.approx(np.tanh(np.arctanh(r) + half), abs=1e-12)


def test_transfer_by_pretraining_labels(db, qs):
    got = _designs(query_df(db, "transfer_by_pretraining_labels", factor=1))
    scored = _scored(qs)
    df = scored[scored.is_transfer & (scored.metric == "ami") & (scored.factor == 1)]
    last = df[df.layer_index == df.n_layers - 1]
    want = _agg(last, ["eval_set", "labels", "lr"]).rename(columns={"labels": "pretrain_labels"})
    cols = {"mean": "mean", "std": "std", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"}
    _check(got, want, ["eval_set", "pretrain_labels", "lr"], cols)
    # against the superclass-label design of the same lr
    diff = got.set_index(["pretrain_labels", "lr"])["minus_superclass"]
    w = want.set_index(["pretrain_labels", "lr"])["mean"]
    lr = querystore.DEFAULT_LR
    assert diff[("subclass", lr)] == pytest.approx(
        w[("subclass", lr)] - w[("superclass", lr)], abs=1e-9
    )
    assert diff[("superclass", querystore.LR_VARIANT)] == pytest.approx(0.0, abs=1e-12)
    # the transfer probe's accuracy at the same (last) layer, mean over the same runs
    probe = scored[scored.is_transfer & (scored.metric == "probe_acc")]
    probe = probe[probe.layer_index == probe.n_layers - 1]
    acc = probe.groupby(["labels", "lr"])["value"].mean()
    got_acc = got.set_index(["pretrain_labels", "lr"])["probe_acc"]
    for key, value in acc.items():
        assert got_acc[key] == pytest.approx(value, abs=1e-9)
    assert got["knn_acc"].isna().all()  # the query store's transfer runs have no k-NN probe


def test_seed_stability_reads_ari_tables(db, qs):
    got = _designs(query_df(db, "seed_stability"))
    want = qs.ari[qs.ari.kind == "seed"].merge(qs.evals, on="run_id")
    want = _agg(want, ["arch", "lr", "layer_a"])
    _check(got, want, ["arch", "lr", "layer_a"], {"mean": "mean", "n": "n", "ci_lo": "ci_lo"})
    heat = _designs(query_df(db, "seed_stability", kind="layer", arch="resnet18"))
    assert len(heat) == 2 * 36  # a 6 x 6 heatmap for each learning rate
    heat = heat[heat.lr == querystore.DEFAULT_LR]
    diag = heat[heat.layer_a == heat.layer_b]
    np.testing.assert_allclose(diag["mean"], 1.0)


def test_training_dynamics(db, qs):
    got = _designs(query_df(db, "training_dynamics", arch="resnet18"))
    df = _scored(qs)
    df = df[~df.is_transfer & (df.arch == "resnet18") & (df.metric == "ami") & (df.factor == 1)]
    keys = ["shuffled", "lr", "checkpoint_epoch", "layer_index"]
    want = _agg(df, keys)
    per_layer = got[got.layer_index.notna()]
    cols = {"mean": "mean", "std": "std", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"}
    _check(per_layer, want, keys, cols)
    assert set(got["checkpoint_epoch"]) == {1, 2}


def test_study_trials(db, qs):
    got = query_df(db, "study_trials")
    assert list(got["state"]) == list(qs.trials["state"])
    first = got.iloc[0]
    # trial 0 -> resnet18 natural seed 0 train run -> its final eval run
    evals = qs.evals
    final = evals[(evals.train_run_id == first["run_id"]) & evals.is_final & ~evals.is_transfer][
        "run_id"
    ].item()
    assert first["eval_run_id"] == final
    t = qs.truth[(qs.truth.run_id == final) & (qs.truth.metric == "ami") & (qs.truth.factor == 1)]
    assert first["best_ami"] == pytest.approx(t["value"].max(), abs=1e-12)
    assert (
        first["best_layer"]
        == t.sort_values(["value", "layer_index"], ascending=[False, True]).iloc[0]["layer_index"]
    )
    assert got.iloc[2]["run_id"] is None or pd.isna(got.iloc[2]["run_id"])
    assert len(query_df(db, "study_trials", state="PRUNED")) == 1


# --- design groups, intervals, design effects -------------------------------------


def test_design_key_and_text_follow_the_design_params(db, qs):
    got = db.sql("SELECT run_id, design_key, design FROM evals").df().set_index("run_id")
    got = got.loc[qs.evals["run_id"]]
    want = [
        f"arch={r.arch} labels={r.labels} lr={r.lr!r} shuffled={r.shuffled}"
        for r in qs.evals.itertuples()
    ]
    assert list(got["design"]) == want
    # one key per design, whatever the seed, checkpoint or evaluation set
    design = qs.evals[list(VARYING)].astype(str).agg("|".join, axis=1).to_numpy()
    key = got["design_key"].to_numpy()
    for i in range(len(key)):
        assert ((key == key[i]) == (design == design[i])).all(), qs.evals.iloc[i]


# Grouped queries: their interval columns, and params for rows of both seeds.
GROUPED = {
    "layer_profile": ("ci_lo", "ci_hi", {}),
    "best_layers": ("best_value_ci_lo", "best_value_ci_hi", {}),
    "natural_vs_shuffled": ("ci_lo", "ci_hi", {}),
    "architectures_by_depth": ("ci_lo", "ci_hi", {}),
    "norm_peak_shift": ("peak_value_ci_lo", "peak_value_ci_hi", {}),
    "clusterability_vs_probe": ("ci_lo", "ci_hi", {}),
    "training_dynamics": ("ci_lo", "ci_hi", {}),
    "seed_stability": ("ci_lo", "ci_hi", {"kind": "layer"}),  # seed rows: one run holds them
    "transfer_by_pretraining_labels": ("ci_lo", "ci_hi", {}),
}


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_one_param_apart_is_another_group_and_seeds_average(db, name):
    # resnet18 natural at lr 0.4 and at lr 0.1, two seeds each: two groups of n = 2.
    lo, hi, params = GROUPED[name]
    got = query_df(db, name, **params)
    got = _designs(got[got["design"].notna()].reset_index(drop=True))
    mine = got[(got.d_arch == "resnet18") & ~got.d_shuffled.astype(bool)]
    mine = mine[mine.d_labels == "superclass"]
    assert set(mine["lr"]) == {querystore.DEFAULT_LR, querystore.LR_VARIANT}
    assert mine.groupby("lr")["design_key"].nunique().eq(1).all()
    assert (mine["n"] == 2).all()
    assert mine[lo].notna().all() and (mine[lo] <= mine[hi]).all()


def test_t_quantile_macro_matches_scipy(db):
    dfs = [1, 2, 3, 5, 10, 29, 30, 31, 40, 100, 1000, 100000]
    got = db.sql(f"SELECT [t975(d) FOR d IN {dfs}]").fetchone()[0]
    np.testing.assert_allclose(got, stats.t.ppf(0.975, dfs), rtol=0, atol=5e-8)
    assert db.sql("SELECT t975(0), ci95_half(0.5, 1)").fetchone() == (None, None)


def _pair_effects(evals: pd.DataFrame, best: pd.Series, choices: list[str]) -> pd.DataFrame:
    """Per choice x level pair: the mean, std and n of best[b] - best[a] over runs a, b of
    one seed whose choices differ in that one alone (levels: numeric order, else text)."""
    rows = []
    runs = evals.assign(best=evals["run_id"].map(best)).astype({c: str for c in choices})
    for c in choices:
        others = [o for o in choices if o != c] + ["seed"]
        for _, g in runs.groupby(others):
            for a in g.itertuples():
                for b in g.itertuples():
                    la, lb = getattr(a, c), getattr(b, c)
                    try:
                        before = float(la) < float(lb)
                    except ValueError:
                        before = la < lb
                    if before:
                        rows.append((c, la, lb, b.best - a.best))
    pairs = pd.DataFrame(rows, columns=["choice", "level_a", "level_b", "diff"])
    out = pairs.groupby(["choice", "level_a", "level_b"])["diff"].agg(["mean", "std", "count"])
    return _ci(out.reset_index().rename(columns={"count": "n"}))


def test_design_effects_are_matched_pair_differences(db, qs):
    got = query_df(db, "design_effects")
    main = qs.evals[qs.evals.is_final & ~qs.evals.is_transfer]
    t = qs.truth[(qs.truth.metric == "ami") & (qs.truth.factor == 1)]
    want = _pair_effects(main, t.groupby("run_id")["value"].max(), list(VARYING))
    cols = {"mean_diff": "mean", "std": "std", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"}
    _check(got, want, ["choice", "level_a", "level_b"], cols)
    assert {"arch", "lr", "shuffled"} <= set(got["choice"])
    size = got["mean_diff"].abs().to_numpy()
    assert (np.diff(size) <= 1e-15).all() and list(got["rank"]) == sorted(got["rank"])


def test_design_effects_rank_two_choices_with_their_sign(store):
    """A 2 x 2 factorial, three seeds: shuffling adds 0.3, lr 0.4 instead of 0.1 takes 0.1.
    Memory budgets differ run to run and the dataset record follows `shuffled`, as in
    real runs: neither may break the pairs."""
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(store)
    rng = np.random.default_rng(3)
    rows = []
    for shuffled in (False, True):
        for lr in (0.1, 0.4):
            for seed in range(3):
                best = 0.2 + 0.3 * shuffled - 0.1 * (lr == 0.4) + 0.01 * rng.standard_normal()
                params = {
                    **RunConfig(shuffled=shuffled, lr=lr, seed=seed, epochs=2).to_params(),
                    cv.PARAM_CHECKPOINT_EPOCH: "2",
                    cv.PARAM_EVAL_SET: "synthetic:eval",
                    "dataset_digest": "d-shuffled" if shuffled else "d-natural",
                    "embed.memory_budget_bytes": str(int(rng.integers(1e9, 4e9))),
                }
                with tracker.start_run("eval", params=params) as ev:
                    ev.log_metric_steps("ami_f1", [best - 0.05, best, best - 0.1])
                rows.append(dict(run_id=ev.run_id, shuffled=shuffled, lr=lr, seed=seed, v=best))
    runs = pd.DataFrame(rows)
    with connect(store.root) as analysis:
        got = query_df(analysis, "design_effects")
        groups = analysis.sql("SELECT count(DISTINCT design_key) FROM final_evals").fetchone()
    assert groups == (4,)
    assert list(got["choice"]) == ["shuffled", "lr"] and list(got["rank"]) == [1, 2]
    want = _pair_effects(runs, runs.set_index("run_id")["v"], ["shuffled", "lr"])
    cols = {"mean_diff": "mean", "std": "std", "n": "n", "ci_lo": "ci_lo", "ci_hi": "ci_hi"}
    _check(got, want, ["choice", "level_a", "level_b"], cols)
    first, second = got.iloc[0], got.iloc[1]
    assert (first.level_a, first.level_b, first.n) == ("False", "True", 6)
    assert (second.level_a, second.level_b, second.n) == ("0.1", "0.4", 6)
    assert first.ci_lo > 0.25 and second.ci_hi < -0.05  # the right signs, clear of zero


def _plot(db, name: str, **params):
    from clusterprobe.queries.plots import PLOTS, figure

    plot = PLOTS[name]
    df = query_df(db, plot.query, **{**plot.params, **params})
    return df, figure(name, df)


def test_design_effects_plot_draws_each_difference_with_its_interval(db):
    df, fig = _plot(db, "design_effects")
    from matplotlib.container import BarContainer

    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    # rank 1 on top: bars bottom-up are the rows in reverse rank order
    rows = df[::-1]
    np.testing.assert_allclose([p.get_width() for p in bars], rows["mean_diff"], atol=1e-12)
    segments = bars.errorbar.lines[2][0].get_segments()  # one (lo, hi) segment per bar
    single = rows["n"] == 1  # no interval: a zero-length bar
    want_lo = rows["ci_lo"].where(~single, rows["mean_diff"])
    want_hi = rows["ci_hi"].where(~single, rows["mean_diff"])
    np.testing.assert_allclose([seg[0][0] for seg in segments], want_lo, atol=1e-12)
    np.testing.assert_allclose([seg[1][0] for seg in segments], want_hi, atol=1e-12)


def test_layer_profile_plot_bands_are_the_intervals(db):
    df, fig = _plot(db, "layer_profile", arch="resnet18", shuffled=False)
    ax = fig.axes[0]
    assert len(ax.lines) == df["design_key"].nunique() == 2  # lr 0.4 and lr 0.1
    labels = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert labels == sorted(df["design"].unique())
    bands = [b.get_paths()[0].vertices[:, 1] for b in ax.collections]
    by_design = df.groupby("design")  # lines are drawn in design order
    want = [(g["ci_lo"].min(), g["ci_hi"].max()) for _, g in by_design]
    np.testing.assert_allclose([(y.min(), y.max()) for y in bands], want, atol=1e-12)


def test_every_plot_draws_on_the_query_store(db):
    from clusterprobe.queries.plots import PLOTS, figure

    for name, plot in PLOTS.items():
        if plot.query is None:
            df = db.sql(plot.sql).df()
        else:
            df = query_df(db, plot.query, **plot.params)
        assert len(df), name
        fig = figure(name, df)
        assert fig.axes[0].has_data(), name


def test_excluded_runs_never_counted(db, qs):
    # The deleted, RUNNING, rescored and repeated runs logged AMI near 5: no group mean
    # reaches it.
    repeats = db.sql("SELECT run_id FROM evals WHERE is_repeat").fetchall()
    assert repeats == [(qs.repeated_run,)]
    final = {r for (r,) in db.sql("SELECT run_id FROM final_evals").fetchall()}
    assert qs.repeated_run not in final and qs.rescored_run not in final
    for name in ("layer_profile", "best_layers", "natural_vs_shuffled", "training_dynamics"):
        df = query_df(db, name)
        value = df["best_value_mean"] if "best_value_mean" in df else df["mean"]
        assert value.max() < 1.5, name


# --- live store ----------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from mlflow.entities import Metric
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker
    tracker = Tracker(local_store(sys.argv[1]))
    deadline = time.time() + float(sys.argv[2])
    print("ready", flush=True)
    while time.time() < deadline:
        with tracker.start_run("eval", params={"dataset": "live", "epochs": "1"}) as ctx:
            now = int(time.time() * 1000)
            for half in (range(0, 10), range(10, 20)):  # two batches: a partial window
                tracker.client.log_batch(
                    ctx.run_id, metrics=[Metric("ami_f1", 0.5, now, i) for i in half]
                )
    """
)


def test_queries_while_a_run_writes(qs, tmp_path):
    target = tmp_path / "live"
    shutil.copytree(qs.store.root, target)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), "2.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = 0
        for _ in range(10):
            with connect(target) as analysis:
                rows = analysis.sql(
                    """SELECT e.run_id, count(*) AS layers
                    FROM layer_scores s JOIN evals e USING (run_id)
                    WHERE e.dataset = 'live' AND e.status = 'FINISHED' GROUP BY ALL"""
                ).fetchall()
                assert all(n == 20 for _, n in rows), rows  # never a partial run
                seen = max(seen, len(rows))
                profile = query_df(analysis, "layer_profile", dataset="live")
                assert (profile["n"] == len(rows)).all()
            if proc.poll() is not None:
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert seen > 0


# --- PostgreSQL backend ----------------------------------------------------------------


def test_postgres_tracking_uri(postgres_url, tmp_path):
    """The same views over an MLflow PostgreSQL database (DuckDB's postgres extension)."""
    from clusterprobe.tracker.store import resolve_store
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(resolve_store(tmp_path / "unused", postgres_url))
    params = {"dataset": "synthetic", "arch": "resnet18", "epochs": "2"}
    with tracker.start_run("train", params=params) as train:
        with tracker.start_run(
            "eval",
            params={**params, "checkpoint_epoch": "2", "eval_set": "synthetic:eval"},
            parent_run_id=train.run_id,
        ) as ev:
            ev.log_metric_steps("ami_f1", [0.1, 0.4, 0.3])
            ev.log_metric_steps("probe_acc", [0.5, 0.6, 0.7])
    with connect(tracking_uri=postgres_url) as analysis:
        runs = dict(analysis.sql("SELECT run_id, kind FROM runs").fetchall())
        assert runs == {train.run_id: "train", ev.run_id: "eval"}
        best = query_df(analysis, "best_layers", factor=1)
        assert best["best_layer_mean"].item() == 1 and best["best_value_mean"].item() == 0.4
        assert query_df(analysis, "study_trials").empty  # no Optuna storage given
        assert analysis.restrict_to_store() == []  # no store folder, no artifact files
        assert query_df(analysis, "best_layers", factor=1).equals(best)
        runs = analysis.sql("SELECT count(*) FROM mlflow_db.public.runs").fetchone()
        assert runs == (2,)  # the attached database still reads
