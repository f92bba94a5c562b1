"""`clusterprobe query / sql / plot` on a store made by a real tiny pipeline run.

The expected numbers come from the pipeline's own RunResult (what it measured),
not from the views.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from clusterprobe.queries.canned import query_names
from clusterprobe.runners.cli import main


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def real(tiny_run):
    store, config, result = tiny_run
    return store.root, config, result


def test_layer_profile_json_matches_the_pipeline(real, capsys):
    root, _, result = real
    final = result.eval_run_ids[-1]
    code, out, err = _cli(
        capsys, "query", "layer_profile", "--store", root, "--format", "json",
        "--param", f"run_id={final}", "--param", "factor=1",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)  # stdout is JSON only
    by = {(r["metric"], r["layer_index"]): r for r in rows}
    for layer in result.layers:
        i = layer["index"]
        assert by[("ami", i)]["mean"] == pytest.approx(layer["ami_f1"], abs=1e-12)
        assert by[("purity", i)]["mean"] == pytest.approx(layer["purity_f1"], abs=1e-12)
        assert by[("probe_acc", i)]["mean"] == pytest.approx(layer["probe_acc"], abs=1e-12)
        assert by[("ami", i)]["relative_depth"] == pytest.approx(layer["relative_depth"])
        assert by[("ami", i)]["n"] == 1 and by[("ami", i)]["std"] is None


def test_best_layers_csv_matches_the_run_summary(real, capsys, tmp_path):
    root, _, result = real
    out_file = tmp_path / "best.csv"
    code, out, _ = _cli(
        capsys, "query", "best_layers", "--store", root, "--format", "csv",
        "--param", "factor=1", "--out", out_file,
    )  # fmt: skip
    assert code == 0 and out == ""
    import pandas as pd

    df = pd.read_csv(out_file)
    assert len(df) == 1 and df["n"].item() == 1
    assert df["best_layer_mean"].item() == result.summary["best_layer"]
    assert df["best_value_mean"].item() == pytest.approx(result.summary["best_ami"], abs=1e-12)


def test_parquet_output_and_training_dynamics(real, capsys, tmp_path):
    root, config, _ = real
    target = tmp_path / "dyn.parquet"
    code, _, _ = _cli(
        capsys, "query", "training_dynamics", "--store", root, "--format", "parquet",
        "--out", target,
    )  # fmt: skip
    assert code == 0
    table = pq.read_table(target).to_pandas()
    assert set(table["checkpoint_epoch"]) == {*config.eval_epochs, config.epochs}
    assert (table["n"] == 1).all()


def test_parquet_layer_table_agrees_with_mlflow_metrics(real, capsys):
    root, _, result = real
    final = result.eval_run_ids[-1]
    code, out, _ = _cli(
        capsys, "sql", "--store", root, "--format", "json",
        "SELECT p.layer_index, any_value(p.layer_name) AS name, any_value(p.relative_depth) AS pd, "
        "avg(p.value) AS pq, any_value(s.value) AS ml, any_value(s.relative_depth) AS sd "
        "FROM layer_metrics p JOIN layer_scores s USING (run_id, layer_index, metric, factor) "
        f"WHERE run_id = '{final}' AND metric = 'ami' AND factor = 1 GROUP BY ALL ORDER BY 1",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [layer["name"] for layer in result.layers]
    np.testing.assert_allclose([r["pq"] for r in rows], [r["ml"] for r in rows], atol=1e-9)
    np.testing.assert_allclose([r["pd"] for r in rows], [r["sd"] for r in rows], atol=1e-12)


# The tiny run is one train run with two eval runs; some queries need params to find
# rows there, and two need runs it cannot have (test_queries.py checks that every
# query returns rows on the query store, these two included).
PARAMS_ON_THE_REAL_STORE = {
    "clusterability_vs_probe": ["factor=2"],  # at factor 1 the tiny run's AMI is flat
    "seed_stability": ["kind=layer"],  # one seed: no seed pairs
}
NO_ROWS_ON_THE_REAL_STORE = {
    "transfer_by_pretraining_labels": "no transfer eval run",
    "study_trials": "no Optuna study",
}


def test_every_query_runs_on_the_real_store(real, capsys):
    root, _, _ = real
    assert set(PARAMS_ON_THE_REAL_STORE) | set(NO_ROWS_ON_THE_REAL_STORE) <= set(query_names())
    for name in query_names():
        params = [a for p in PARAMS_ON_THE_REAL_STORE.get(name, []) for a in ("--param", p)]
        code, out, err = _cli(capsys, "query", name, "--store", root, "--format", "json", *params)
        assert code == 0, (name, err)
        rows = json.loads(out)
        assert isinstance(rows, list)
        if name in NO_ROWS_ON_THE_REAL_STORE:
            assert rows == [], f"{name} has rows now: drop it from NO_ROWS_ON_THE_REAL_STORE"
        else:
            assert rows, name


def test_unknown_query_lists_the_names(capsys):
    code, out, err = _cli(capsys, "query", "nope")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert all(name in err for name in query_names())


def test_sql_refuses_writes_and_changes_nothing(real, capsys):
    root, _, _ = real
    db = root / "mlflow.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for statement in (
        "DELETE FROM runs",
        "CREATE TABLE x (a INT)",
        "SELECT 1; UPDATE mlflow_db.runs SET status = 'FAILED'",
        f"COPY (SELECT 1) TO '{root}/x.csv'",
    ):
        code, out, err = _cli(capsys, "sql", "--store", root, statement)
        assert code == 2 and "read-only" in err, statement
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (root / "x.csv").exists()
    code, out, _ = _cli(capsys, "sql", "--store", root, "--format", "json",
                        "SELECT kind, count(*) AS n FROM runs GROUP BY kind ORDER BY kind")  # fmt: skip
    assert code == 0 and json.loads(out) == [{"kind": "eval", "n": 2}, {"kind": "train", "n": 1}]


def test_sql_setup_rebuilds_the_views_in_a_plain_duckdb(real, capsys, tmp_path):
    import duckdb
    import duckdb_extensions
    from clusterprobe.queries.canned import load_query
    from clusterprobe.queries.connect import connect
    from clusterprobe.queries.view_columns import VIEW_COLUMNS

    root, _, _ = real
    code, out, _ = _cli(capsys, "sql", "--store", root, "--setup")
    assert code == 0 and "ATTACH" in out
    # One thread each side: multi-threaded float sums differ in the last digits.
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "extension_directory": str(tmp_path),
            "threads": 1,
        }
    )
    duckdb_extensions.import_extension("sqlite", con=con)  # what a shell user installs once
    con.execute(out)
    for view, columns in VIEW_COLUMNS.items():
        assert tuple(con.sql(f"SELECT * FROM {view} LIMIT 0").columns) == columns, view
    rows = con.sql(load_query("best_layers").sql).fetchall()
    # no variables set, as in a shell: (ami, purity) x 5 factors + probe + kNN
    assert len(rows) == 12
    # Every canned file, pasted as it is (no variables set), answers as clusterprobe does.
    with connect(root, threads=1) as analysis:
        for name in query_names():
            sql = load_query(name).sql
            assert con.sql(sql).fetchall() == analysis.sql(sql).fetchall(), name


def test_empty_store_returns_empty_json(tmp_path, capsys):
    for name in query_names():
        code, out, _ = _cli(capsys, "query", name, "--store", tmp_path / "none", "--format", "json")
        assert code == 0 and json.loads(out) == [], name


def test_bad_param_is_a_usage_error(capsys):
    code, _, err = _cli(capsys, "query", "layer_profile", "--param", "factor=two")
    assert code == 2 and "factor" in err
    code, _, err = _cli(capsys, "query", "layer_profile", "--param", "colour=red")
    assert code == 2 and "run_id" in err


def test_plots_write_png_and_svg(real, capsys, tmp_path):
    root, _, _ = real
    png = tmp_path / "profile.png"
    code, _, err = _cli(capsys, "plot", "layer_profile", "--store", root, "--out", png)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("training_dynamics", "clusterability_vs_probe", "seed_stability", "layer_cka"):
        svg = tmp_path / f"{name}.svg"
        code, _, err = _cli(capsys, "plot", name, "--store", root, "--out", svg)
        assert code == 0, err
        assert b"<svg" in svg.read_bytes()[:500]
    code, _, err = _cli(
        capsys, "plot", "layer_profile", "--store", root, "--out", tmp_path / "x.txt"
    )
    assert code == 2 and ".png" in err


def test_queries_import_neither_torch_nor_mlflow(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import clusterprobe.queries.cli_query, clusterprobe.queries.cli_sql\n"
        "import clusterprobe.queries.cli_plot, clusterprobe.queries.plots\n"
        "from clusterprobe.queries.connect import connect\n"
        f"connect({str(tmp_path)!r}).close()\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
