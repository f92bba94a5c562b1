"""`clusterprobe query / sql / plot` on a store made by a real tiny pipeline run.

The expected numbers come from the pipeline's own RunResult (what it measured),
not from the views.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from clusterprobe.queries.canned import query_names
from clusterprobe.queries.view_columns import VIEW_COLUMNS
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
    "design_effects": "one design: no pair of runs one choice apart",
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


# A fresh DuckDB session as a shell user has one: default configuration, a HOME with
# nothing installed, no network (any download goes to a closed port). It replays the
# setup from stdin, then runs every canned file as it is (no variables set) and pickles
# the rows; argv[2] == "bare" drops the INSTALL lines first, as the setup used to be.
SHELL = textwrap.dedent(
    """
    import pickle, sys, duckdb
    queries = pickle.load(open(sys.argv[1], "rb"))
    con = duckdb.connect(config={"threads": 1})
    for setting in ("custom_extension_repository", "autoinstall_extension_repository"):
        con.execute(f"SET {setting} = 'http://127.0.0.1:9'")
    setup = sys.stdin.read()
    if sys.argv[2] == "bare":
        setup = ";\\n\\n".join(s for s in setup.split(";\\n\\n") if not s.startswith("INSTALL"))
    try:
        con.execute(setup)
    except duckdb.Error as err:
        sys.exit(f"setup failed: {err}")
    rows = {name: con.sql(sql).fetchall() for name, sql in queries.items()}
    pickle.dump(rows, open(sys.argv[1], "wb"))
    """
)


def test_sql_setup_runs_unchanged_in_a_fresh_offline_duckdb(real, capsys, tmp_path):
    import pickle

    from clusterprobe.queries.canned import load_query
    from clusterprobe.queries.connect import connect

    root, _, _ = real
    code, setup, _ = _cli(capsys, "sql", "--store", root, "--setup")
    assert code == 0 and "ATTACH" in setup
    assert setup.index("INSTALL '") < setup.index("LOAD sqlite") < setup.index("ATTACH")
    views = {f"view {v}": f"SELECT * FROM {v} LIMIT 0" for v in VIEW_COLUMNS}
    queries = {**{n: load_query(n).sql for n in query_names()}, **views}
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}

    def shell(variant: str):
        (tmp_path / "q.pkl").write_bytes(pickle.dumps(queries))
        return subprocess.run(
            [sys.executable, "-c", SHELL, str(tmp_path / "q.pkl"), variant],
            input=setup, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip

    bare = shell("bare")  # the session really is fresh and offline: LOAD alone fails
    assert bare.returncode != 0 and "download extension" in bare.stderr, bare.stderr
    done = shell("as printed")
    assert done.returncode == 0, done.stderr
    rows = pickle.loads((tmp_path / "q.pkl").read_bytes())
    # One thread each side: multi-threaded float sums differ in the last digits.
    with connect(root, threads=1) as analysis:
        for name, sql in queries.items():
            assert rows[name] == analysis.sql(sql).fetchall(), name
    assert len(rows["best_layers"]) == 12  # (ami, purity) x 5 factors + probe + kNN
    # INSTALL copied the packaged binary into the fresh session's own extension folder
    assert list((home / ".duckdb" / "extensions").rglob("sqlite_scanner.duckdb_extension"))


def test_sql_setup_in_the_duckdb_cli_of_the_same_version(real, capsys, tmp_path):
    import duckdb

    cli = shutil.which("duckdb")
    if cli is None:
        pytest.skip("no duckdb CLI on PATH (the Python session test covers the setup)")
    version = subprocess.run([cli, "--version"], capture_output=True, text=True).stdout
    if not version.startswith(f"v{duckdb.__version__}"):
        pytest.skip(f"duckdb CLI {version.strip()!r} is not {duckdb.__version__}")
    root, _, result = real
    code, setup, _ = _cli(capsys, "sql", "--store", root, "--setup")
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run(
        [cli, "-csv", "-noheader", ":memory:"],
        input=setup + "SELECT count(*) FROM evals;\n",
        capture_output=True, text=True, env={**os.environ, "HOME": str(home)}, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(len(result.eval_run_ids))


def test_sql_reads_nothing_but_the_store(real, capsys, tmp_path):
    root, _, result = real
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for text in (
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_text('{root}/../../{tmp_path.name}/secret.csv')",
        "SELECT * FROM glob('/etc/*')",
        "SET enable_external_access = true",  # cannot be turned back
        f"SET allowed_directories = ['{tmp_path}']",
    ):
        code, out, err = _cli(capsys, "sql", "--store", root, text)
        assert code == 2 and out == "", text
        assert len(err.strip().splitlines()) == 1, err
    code, out, err = _cli(capsys, "sql", "--store", root, f"SELECT * FROM read_csv('{secret}')")
    assert str(secret) in err and str(root) in err  # the refused file, and what is readable
    # the store itself still reads: a view over the Parquet artifacts, and the databases
    code, out, _ = _cli(
        capsys, "sql", "--store", root, "--format", "json",
        "SELECT (SELECT count(DISTINCT run_id) FROM layer_metrics) AS parquet, "
        "(SELECT count(*) FROM mlflow_db.runs) AS attached",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out) == [{"parquet": len(result.eval_run_ids), "attached": 3}]


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
    import matplotlib.pyplot as plt

    root, _, _ = real
    plt.close("all")
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
    assert plt.get_fignums() == []  # every figure drawn was closed after saving


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
