"""`clusterprobe report`: one self-contained HTML page of an eval run or a study.

The run is the shared tiny pipeline run (tests/conftest.py) and the study a real
3-trial, two-objective Optuna study of tiny runs; the pages are parsed as HTML and their
numbers checked against MLflow's metric history, sklearn's ARI on the stored cluster
assignments and Optuna's own Pareto front.
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np
import optuna
import pandas as pd
import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.evalrun import stored
from clusterprobe.runners.report.run_report import (
    eval_run_report,
    layer_ari,
    layer_table,
    resolve_eval_run,
)
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.tracking import Tracker
from sklearn.metrics import adjusted_rand_score

# Attributes through which a page would load something (a link's href is not a load).
RESOURCE_ATTRS = {"src", "srcset", "data", "poster", "background", "action", "formaction"}


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, html: str):
        super().__init__()
        self.images: list[tuple[str, str]] = []  # (alt, src)
        self.resources: list[str] = []  # every src-like attribute value
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.resources += [v for k, v in attrs.items() if k in RESOURCE_ATTRS and v]
        if tag == "img":
            self.images.append((attrs.get("alt", ""), attrs.get("src", "")))
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def table_with(self, header: str, last: bool = False) -> pd.DataFrame:
        """The first (or last) table with a column named ``header``."""
        for rows in reversed(self.tables) if last else self.tables:
            if header in rows[0]:
                return pd.DataFrame(rows[1:], columns=rows[0])
        raise AssertionError(f"no table with a {header!r} column")


def assert_offline(html: str, page: Page) -> None:
    """Nothing on the page is fetched from anywhere: data: URIs only, no scripts, no
    stylesheets or fonts by URL."""
    assert all(r.startswith("data:image/png;base64,") for r in page.resources), [
        r[:60] for r in page.resources if not r.startswith("data:")
    ]
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert "url(" not in html and "@import" not in html


def png(src: str) -> np.ndarray:
    return mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")


@pytest.fixture(scope="module")
def final_report(tiny_run):
    store, config, result = tiny_run
    tracker = Tracker(store)
    run_id = result.eval_run_ids[-1]  # the final checkpoint's
    return tracker, run_id, eval_run_report(tracker, run_id)


# --- an eval run's report --------------------------------------------------------------


def test_every_run_logs_its_report_as_an_artifact(tiny_run):
    store, config, result = tiny_run
    tracker = Tracker(store)
    assert len(result.eval_run_ids) == 2  # checkpoint epoch 1 and the final one
    for run_id in result.eval_run_ids:
        html = tracker.artifact_path(run_id, cv.ART_REPORT).read_text()
        page = Page(html)
        assert_offline(html, page)
        assert run_id in html and len(page.images) == 3


def test_the_report_opens_offline_and_holds_every_plot(final_report):
    tracker, run_id, html = final_report
    page = Page(html)
    assert_offline(html, page)
    assert "http" not in html.replace(page.images[0][1], "")  # nor any address in its text
    alts = [alt for alt, _ in page.images]
    assert alts == [
        "layer profile: AMI per factor, probe and k-NN accuracy, pixel baseline",
        "AMI f1 heat map, superclass x layer (Ward inside each superclass)",
        "layer x layer ARI matrix, factor 1",
    ]
    for _, src in page.images:  # real PNGs that decode, not placeholders
        image = png(src)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0.05  # something is drawn
    # The design choices, and what was measured, as the run logged them.
    params = tracker.get_run(run_id).data.params
    design = page.table_with("param")
    got = dict(zip(design["param"], design["value"], strict=True))
    for key in ("arch", "lr", "epochs", "taps", "dataset"):
        assert got[key] == params[key]
    assert "AMI per superclass x layer" in html and "ARI between layers" in html


def test_per_layer_numbers_match_mlflows_metric_history(final_report, tiny_run):
    tracker, run_id, html = final_report
    store, config, _ = tiny_run
    rows = Page(html).table_with("AMI f1")
    assert len(rows) == len(stored.layer_names(tracker, run_id))
    for column, metric in (
        *((f"AMI f{f}", cv.ami_metric(f)) for f in config.factors),
        ("probe acc", cv.PROBE_METRIC),
        ("k-NN acc", cv.KNN_METRIC),
    ):
        history = tracker.client.get_metric_history(run_id, metric)
        expected = [m.value for m in sorted(history, key=lambda m: m.step)]
        got = rows[column].astype(float).to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)  # 4 digits shown


def test_layer_ari_is_sklearns_ari_of_the_stored_assignments(final_report):
    tracker, run_id, _ = final_report
    names = stored.layer_names(tracker, run_id)
    factor, matrix = layer_ari(stored.load_ari(tracker, run_id), len(names))
    assignments, factors, _ = stored.load_assignments(tracker, run_id)
    assert factor == 1 == factors[0]
    superclasses = sorted({s for _, s in assignments})
    for a, b in ((0, len(names) - 1), (1, 2), (3, 3)):
        expected = np.mean(
            [
                adjusted_rand_score(assignments[(a, s)][0], assignments[(b, s)][0])
                for s in superclasses
            ]
        )
        assert matrix[a, b] == pytest.approx(expected, abs=1e-12)


def test_layer_table_reshapes_tidy_rows():
    """Means over superclasses per factor; per-superclass AMI at the smallest factor;
    a whole-set clustering (superclass NULL) is one row 'all'."""
    rows = [
        ("r", layer, f"l{layer}", 0.5, sup, factor, "ami", 0.1 * layer + 0.01 * sup + factor)
        for layer in range(3)
        for sup in (4, 7)
        for factor in (1, 3)
    ]
    rows += [
        ("r", layer, f"l{layer}", 0.5, None, None, cv.PROBE_METRIC, 0.2 * layer)
        for layer in range(3)
    ]
    frame = pd.DataFrame(rows, columns=list(cv.LAYER_METRICS_COLUMNS))
    table = layer_table(frame, ["l0", "l1", "l2"])
    assert table.factors == [1, 3] and table.superclasses == [4, 7]
    for layer in range(3):
        for k, factor in enumerate((1, 3)):
            expected = 0.1 * layer + (0.04 + 0.07) / 2 + factor
            assert table.mean_ami[layer, k] == pytest.approx(expected)
        assert table.ami[1, layer] == pytest.approx(0.1 * layer + 0.07 + 1)
    assert table.probe_acc == pytest.approx([0.0, 0.2, 0.4]) and table.knn_acc == []
    whole = frame.assign(superclass=pd.array([None] * len(frame), dtype="Int64"))
    whole = whole[(whole["metric"] != "ami") | (frame["superclass"] == 4)]
    assert layer_table(whole, ["l0", "l1", "l2"]).superclasses == [None]
    with pytest.raises(ValueError, match="no AMI rows"):
        layer_table(frame[frame["metric"] != "ami"], ["l0", "l1", "l2"])


# --- the command --------------------------------------------------------------------------


def test_report_of_a_train_run_is_its_final_eval_run(tiny_run, tmp_path, capsys):
    store, config, result = tiny_run
    out = tmp_path / "r.html"
    argv = ["report", result.train_run_id, "--store", str(store.root), "--out", str(out)]
    assert cli_main(argv) == 0
    final = result.eval_run_ids[-1]
    assert resolve_eval_run(Tracker(store), result.train_run_id) == final
    assert f"report of eval run {final}: {out}" in capsys.readouterr().out
    html = out.read_text()
    assert f"eval run {final}; model resnet18" in html
    assert f"checkpoint epoch {config.epochs}" in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either RUN_ID or --study NAME"),
        (["RUN", "--study", "s"], "give either RUN_ID or --study NAME"),
        (["nosuchrun"], "RUN_ID 'nosuchrun': no such run"),
        (["EVAL", "--out", "x.txt"], "--out 'x.txt': give a file name ending in .html"),
        (["EVAL", "--out", "no/such/dir/r.html"], "folder 'no/such/dir' does not exist"),
        (["TRAIN_PARENT"], "is a study run; give an eval run or a train run"),
        (["EVAL", "--storage", "j.log"], "--storage names a study's storage: use it with --study"),
        (["--study", "tiny3", "--ui-url", "ui:5000"], "--ui-url 'ui:5000': give the UI's address"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_run, tiny_study, args, message, capsys):
    store, _, result = tiny_run
    study_store, outcome = tiny_study
    where = study_store if "--study" in args else store
    if "TRAIN_PARENT" in args:  # a study run: no report of its own (use --study)
        where, args = study_store, [outcome.study_run_id]
    args = [a.replace("EVAL", result.eval_run_ids[-1]) for a in args]
    assert cli_main(["report", *args, "--store", str(where.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# --- a study's report ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_page(tiny_study, tmp_path_factory):
    store, outcome = tiny_study
    out = tmp_path_factory.mktemp("study_report") / "study.html"
    argv = ["report", "--study", "tiny3", "--store", str(store.root), "--out", str(out)]
    assert cli_main([*argv, "--ui-url", "http://ui.example:5001/"]) == 0
    return store, out.read_text()


def test_study_report_shows_trials_history_pareto_and_importances(study_page):
    store, html = study_page
    page = Page(html)
    assert_offline(html, page)
    alts = [alt for alt, _ in page.images]
    assert alts[:3] == [
        "optimisation history of best_ami",
        "optimisation history of best_probe_acc",
        "Pareto front on the first two objectives",
    ]
    study = optuna.load_study(study_name="tiny3", storage=store.optuna_url)
    trials = page.table_with("state", last=True)  # the last section: every trial
    assert trials["trial"].astype(int).tolist() == [t.number for t in study.trials] == [0, 1, 2]
    for t, (_, row) in zip(study.trials, trials.iterrows(), strict=True):
        assert float(row["best_ami"]) == pytest.approx(t.values[0], rel=1e-3, abs=1e-6)
        assert float(row["best_probe_acc"]) == pytest.approx(t.values[1], rel=1e-3, abs=1e-6)
        assert row["taps"] == t.params["taps"]
    # Importances: one figure per objective, or a note saying why there is none.
    n_importance = sum(a.endswith(" importances") for a in alts)
    assert n_importance + html.count("no importances") == 2


def test_study_report_links_the_best_trials_to_their_mlflow_runs(study_page):
    store, html = study_page
    study = optuna.load_study(study_name="tiny3", storage=store.optuna_url)
    tracker = Tracker(store)
    best = sorted(t.number for t in study.best_trials)  # Optuna's own Pareto front
    page = Page(html)
    shown = page.table_with("trial")  # the first table: the best trials
    assert shown["trial"].astype(int).tolist() == best
    for number in best:
        trial = study.trials[number]
        run = tracker.get_run(trial.user_attrs[cv.ATTR_RUN_ID])
        url = (
            f"http://ui.example:5001/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        )
        assert url in page.links
        eval_id = trial.user_attrs[cv.ATTR_EVAL_RUN_IDS][-1]
        assert f"/runs/{eval_id}/artifacts/{cv.ART_REPORT}" in " ".join(page.links)
        tracker.artifact_path(eval_id, cv.ART_REPORT)  # the linked report exists


def test_unknown_study_lists_the_stored_ones(tiny_study, capsys):
    store, _ = tiny_study
    assert cli_main(["report", "--study", "nope", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--study 'nope': no such study in this storage; studies: tiny3")


def test_the_study_run_carries_the_studys_report(tiny_study, tmp_path):
    """`clusterprobe study` logs report.html on its study run: the page `report --study`
    writes (links to the default UI address), byte for byte."""
    store, outcome = tiny_study
    logged = Tracker(store).artifact_path(outcome.study_run_id, cv.ART_REPORT).read_text()
    out = tmp_path / "s.html"
    assert (
        cli_main(["report", "--study", "tiny3", "--store", str(store.root), "--out", str(out)]) == 0
    )
    assert logged == out.read_text()
    assert "http://127.0.0.1:5000/#/experiments/" in logged


def test_single_objective_study_of_another_tool():
    """A study not made by `clusterprobe study` (no settings, no runs): Optuna's direction
    and a plain 'value'; no Pareto front; Optuna's importances, drawn and listed."""
    from clusterprobe.runners.report.study_report import RunLinks, study_report
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(study_name="plain", direction="minimize")
    dists = {"x": FloatDistribution(0.0, 1.0), "c": CategoricalDistribution(["a", "b"])}
    for i in range(8):
        x, c = i / 8, "ab"[i % 2]
        params = {"x": x, "c": c}
        study.add_trial(create_trial(params=params, distributions=dists, value=(x - 0.4) ** 2))
    html = study_report(study, RunLinks("http://127.0.0.1:5000", {}), "in memory")
    page = Page(html)
    assert_offline(html, page)
    assert [a for a, _ in page.images] == ["optimisation history of value", "value importances"]
    assert "Pareto front" not in html and "objective: value (minimize)" in html
    assert page.table_with("trial")["trial"].astype(int).tolist() == [study.best_trial.number]
    shown = page.table_with("importance")
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert shown["param"].tolist() == list(expected)
    np.testing.assert_allclose(
        shown["importance"].astype(float), list(expected.values()), atol=1e-4
    )


def test_a_report_that_cannot_be_drawn_warns_and_the_run_finishes(store):
    """An eval run with nothing stored yet: log_report warns, writes no page, and the run
    still ends FINISHED (the measurement is what matters; `report` can draw it later)."""
    from clusterprobe.runners.evalrun import log_report

    tracker = Tracker(store)
    with tracker.start_run("eval", params={"arch": "resnet18"}) as ctx:
        with pytest.warns(RuntimeWarning, match=f"eval run {ctx.run_id}: no report.html"):
            log_report(ctx)
    run = tracker.get_run(ctx.run_id)
    assert run.info.status == "FINISHED"
    with pytest.raises(FileNotFoundError):
        tracker.artifact_path(ctx.run_id, cv.ART_REPORT)


def test_report_of_a_whole_set_rescore_without_probes(tiny_run, tmp_path, capsys):
    """A re-scored run (k-means on the pooled embeddings of the whole set): no probes, one
    'all' row of AMI, no layer ARI; the page still holds its plots, offline."""
    import shutil

    store, _, result = tiny_run
    root = tmp_path / "mlruns"
    shutil.copytree(store.root, root)  # the shared run's store stays as it was
    argv = ["--store", str(root)]
    assert cli_main(["rescore", result.eval_run_ids[-1], "--method", "kmeans", *argv]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("eval run:"))
    out = tmp_path / "r.html"
    assert cli_main(["report", line.split()[2], *argv, "--out", str(out)]) == 0
    html = out.read_text()
    page = Page(html)
    assert_offline(html, page)
    assert len(page.images) == 2  # profile and AMI heat map; a note stands for the ARI
    assert "protocol whole" in html
    assert (
        page.images[1][0] == "AMI f1 heat map, superclass x layer (the whole set clustered at once)"
    )
    assert "this run has no layer x layer ARI" in html
    rows = page.table_with("AMI f1")
    assert "probe acc" not in rows.columns and len(rows) == 8


def test_default_file_name_is_in_the_current_folder(tiny_study, tmp_path, monkeypatch, capsys):
    store, _ = tiny_study
    monkeypatch.chdir(tmp_path)
    assert cli_main(["report", "--study", "tiny3", "--store", str(store.root)]) == 0
    assert (tmp_path / "report_tiny3.html").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report_tiny3.html"]  # no temporary left
    assert "report of study tiny3: report_tiny3.html" in capsys.readouterr().out
