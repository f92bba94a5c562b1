"""Optuna journal files in the `trials` and `trial_params` views, against optuna itself.

The same operations are written by optuna into a journal file and into a SQLite RDB
storage; the views over the journal must hold what ``study.trials`` returns for it,
and what the views over the RDB storage hold.
"""

from __future__ import annotations

import json
import math

import optuna
import pytest
from clusterprobe.queries.canned import query_df
from clusterprobe.queries.connect import connect
from clusterprobe.runners.cli import main
from optuna.storages.journal import JournalFileBackend, JournalStorage

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _write(storage) -> None:
    """Every kind of operation the replay handles, in one storage."""

    def sampler():  # the same draws in every storage
        return optuna.samplers.RandomSampler(seed=0)

    study = optuna.create_study(
        study_name="main", storage=storage, direction="maximize", sampler=sampler()
    )
    optuna.create_study(study_name="main", storage=storage, load_if_exists=True)  # a no-op
    study.enqueue_trial({"arch": "vgg11", "lr": 0.1})  # WAITING, then taken by a worker

    def objective(trial):
        trial.suggest_categorical("arch", ["resnet18", "vgg11"])
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        n = trial.suggest_int("n", 1, 4)
        trial.suggest_float("$odd.name", 0, 1)  # a key a JSON path would misread
        trial.set_user_attr("mlflow_run_id", f"run-{trial.number}")
        trial.set_user_attr("mlflow_run_id", f"run{trial.number}")  # the last one wins
        if trial.number == 2:
            raise optuna.TrialPruned()
        if trial.number == 3:
            raise ValueError("a failed trial")
        return math.inf if trial.number == 4 else lr * n

    study.optimize(objective, n_trials=6, catch=(ValueError,))
    pareto = optuna.create_study(
        study_name="pareto", storage=storage, directions=["minimize", "maximize"], sampler=sampler()
    )
    trial = pareto.ask()
    trial.suggest_float("x", 0, 1)
    pareto.tell(trial, [1.0, 2.0])
    gone = optuna.create_study(study_name="gone", storage=storage, sampler=sampler())
    gone.optimize(lambda t: t.suggest_float("y", 0, 1), n_trials=2)
    optuna.delete_study(study_name="gone", storage=storage)
    again = optuna.create_study(study_name="gone", storage=storage, sampler=sampler())  # reused
    again.optimize(lambda t: t.suggest_float("y", 0, 1), n_trials=1)
    study.add_trial(
        optuna.trial.create_trial(
            params={"arch": "resnet18", "lr": 0.5, "n": 2},
            distributions={k: study.trials[0].distributions[k] for k in ("arch", "lr", "n")},
            value=0.3,
            user_attrs={"mlflow_run_id": "added"},
        )
    )
    study.ask()  # left RUNNING


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("journal")
    path = folder / "optuna.journal"
    _write(JournalStorage(JournalFileBackend(str(path))))
    rdb = f"sqlite:///{folder / 'optuna.db'}"
    _write(rdb)
    return path, rdb


def _optuna_rows(storage) -> list[tuple]:
    rows = []
    for name in sorted(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.trials:
            values = None if t.values is None else [float(v) for v in t.values]
            rows.append(
                (name, t.number, t.state.name, values, t.params, t.user_attrs.get("mlflow_run_id"))
            )
    return rows


def _view_rows(analysis) -> list[tuple]:
    params: dict[int, dict] = {}
    for trial_id, param, value, value_num in analysis.sql(
        "SELECT trial_id, param, value, value_num FROM trial_params"
    ).fetchall():
        params.setdefault(trial_id, {})[param] = _external(value, value_num)
    rows = []
    for study, trial_id, number, state, values, run_id in analysis.sql(
        'SELECT study, trial_id, number, state, "values", run_id FROM trials ORDER BY study, number'
    ).fetchall():
        values = None if values is None else [float(v) for v in values]
        rows.append((study, number, state, values, params.get(trial_id, {}), run_id))
    return rows


def _external(text: str, number: float):
    """The view's decoded value as optuna's ``trial.params`` holds it."""
    if text in ("resnet18", "vgg11"):
        return text
    return int(number) if float(number).is_integer() and "." not in text else float(number)


def test_journal_trials_are_optunas_own(journal):
    path, _ = journal
    want = _optuna_rows(JournalStorage(JournalFileBackend(str(path))))
    with connect(path.parent / "no-store", storage=str(path)) as analysis:
        got = _view_rows(analysis)
        times = analysis.sql(
            "SELECT study, number, datetime_start, datetime_complete FROM trials "
            "ORDER BY study, number"
        ).fetchall()
        directions = dict(analysis.sql("SELECT DISTINCT study, directions FROM trials").fetchall())
    assert got == want
    assert {w[0] for w in want} == {"gone", "main", "pareto"}  # the deleted study's gone
    storage = JournalStorage(JournalFileBackend(str(path)))
    frozen = [
        (name, t.number, t.datetime_start, t.datetime_complete)
        for name in sorted(optuna.get_all_study_names(storage))
        for t in optuna.load_study(study_name=name, storage=storage).trials
    ]
    assert times == frozen
    assert directions == {"main": ["MAXIMIZE"], "pareto": ["MINIMIZE", "MAXIMIZE"],
                          "gone": ["MINIMIZE"]}  # fmt: skip


def test_journal_and_rdb_give_the_same_views(journal):
    path, rdb = journal
    with (
        connect(path.parent / "no-store", storage=str(path)) as a,
        connect(path.parent / "no-store", storage=rdb) as b,
    ):
        assert _view_rows(a) == _view_rows(b)
        names = "SELECT study, number, param, value FROM trial_params ORDER BY ALL"
        assert a.sql(names).fetchall() == b.sql(names).fetchall()
        assert len(query_df(a, "study_trials")) == len(query_df(b, "study_trials")) == 10


def test_operations_that_do_not_count_are_left_out_as_optuna_does(journal, tmp_path):
    """Appended by hand, as other workers could write them: a second worker taking the
    running trial (rejected), settings on a finished trial and on no trial (ignored),
    and a line still being written (no newline yet)."""
    path, _ = journal
    storage = JournalStorage(JournalFileBackend(str(path)))
    main_study = optuna.load_study(study_name="main", storage=storage)
    running = main_study.trials[-1]._trial_id
    finished = main_study.trials[0]._trial_id

    def op(**fields) -> str:
        return json.dumps({"worker_id": "another-worker", **fields}) + "\n"

    extra = (
        op(op_code=6, trial_id=running, state=0, values=None,
           datetime_start="2030-01-01T00:00:00.000000+00:00")
        + op(op_code=8, trial_id=finished, user_attr={"mlflow_run_id": "late"})
        + op(op_code=6, trial_id=finished, state=3, values=None,
             datetime_complete="2030-01-01T00:00:00.000000+00:00")
        + op(op_code=5, trial_id=999, param_name="z", param_value_internal=1.0,
             distribution='{"name": "FloatDistribution", "attributes": '
                          '{"step": null, "low": 0, "high": 2, "log": false}}')
        + op(op_code=6, trial_id=running, state=1, values=[0.7],
             datetime_complete="2030-01-02T00:00:00.000000+00:00")
    )  # fmt: skip
    edited = tmp_path / "edited.journal"
    edited.write_bytes(path.read_bytes() + extra.encode() + op(op_code=6)[:30].encode())
    theirs = JournalStorage(JournalFileBackend(str(edited)))
    want = _optuna_rows(theirs)
    assert ("main", 7, "COMPLETE", [0.7], {}, None) in want  # the running trial, completed
    assert want[1][-1] == "run0"  # the finished trial kept its user attribute
    with connect(tmp_path / "no-store", storage=str(edited)) as analysis:
        assert _view_rows(analysis) == want
        start = analysis.sql(
            "SELECT datetime_start FROM trials WHERE number = 7 AND study = 'main'"
        )
        frozen = optuna.load_study(study_name="main", storage=theirs).trials[7]
        assert start.fetchone() == (frozen.datetime_start,)


def test_journal_through_the_cli(journal, tmp_path, capsys):
    path, _ = journal
    code = main(["query", "study_trials", "--store", str(tmp_path / "s"), "--storage", str(path),
                 "--param", "study=main", "--format", "json"])  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["number"] for r in rows] == list(range(8))
    first = rows[0]["params"]  # the enqueued trial
    assert (first["arch"], first["lr"]) == ("vgg11", "0.1") and "$odd.name" in first
    # the setup replays the journal in a plain DuckDB session too
    assert main(["sql", "--setup", "--store", str(tmp_path / "s"), "--storage", str(path)]) == 0
    setup = capsys.readouterr().out
    assert "read_text" in setup
    import duckdb

    con = duckdb.connect()
    con.execute(setup)
    assert con.sql("SELECT count(*) FROM trials").fetchone() == (10,)
    for bad, why in ((tmp_path, "folder"), (path.with_name("optuna.db"), "sqlite:///")):
        code = main(["query", "study_trials", "--store", str(tmp_path / "s"), "--storage",
                     str(bad)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1
    code = main(["query", "study_trials", "--store", str(tmp_path / "s"), "--storage",
                 str(tmp_path / "missing.journal"), "--format", "json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out) == [] and "no Optuna journal" in err
