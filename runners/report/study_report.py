"""The report of one Optuna study: its trials, how the search went, and where to look next.

* the trials table (state, objective values, params, duration, links to each trial's
  MLflow train run and to its eval run's report);
* the optimisation history of every objective (value per trial, best so far);
* the Pareto front on the first two objectives, where the study has several;
* Optuna's parameter importances (fANOVA with a fixed seed, so the page is repeatable);
* the best trial(s) (the Pareto front, with several objectives) with the same links.

Links point at the MLflow UI (``ui_url``, where ``clusterprobe ui`` serves the store);
they are links, not resources: the page itself loads nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from clusterprobe.runners.report import DEFAULT_UI_URL, figures, page
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

IMPORTANCE_SEED = 0  # fANOVA fits a random forest: a fixed seed gives the same page twice


@dataclass(frozen=True)
class RunLinks:
    """Where the MLflow UI shows a run: ``{ui_url}/#/experiments/{experiment}/runs/{run}``."""

    ui_url: str
    experiments: dict[str, str]  # run id -> experiment id

    def run(self, run_id: str | None, label: str) -> str:
        if not run_id or run_id not in self.experiments:
            return page.text(run_id or "")
        return page.link(self.url(run_id), label)

    def url(self, run_id: str, artifact: str = "") -> str:
        base = f"{self.ui_url.rstrip('/')}/#/experiments/{self.experiments[run_id]}/runs/{run_id}"
        return f"{base}/artifacts/{artifact}" if artifact else base


def objectives(study) -> list[tuple[str, str]]:
    """(name, direction) of each objective: clusterprobe's settings, else Optuna's own."""
    from clusterprobe.runners.study.settings import ATTR_SETTINGS, StudySettings

    raw = study.user_attrs.get(ATTR_SETTINGS)
    if raw is not None:
        return [tuple(o) for o in StudySettings.from_json(raw).objectives]
    n = len(study.directions)
    names = study.metric_names or (["value"] if n == 1 else [f"value {i}" for i in range(n)])
    return [(n, d.name.lower()) for n, d in zip(names, study.directions, strict=True)]


def load_study(name: str, storage):
    """The study ``name`` in ``storage``; UsageError listing the stored ones if unknown."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name not in names:
        have = ", ".join(sorted(names)) or "none"
        raise UsageError(f"--study {name!r}: no such study in this storage; studies: {have}")
    return optuna.load_study(study_name=name, storage=storage)


def run_links(tracker, study_name: str, ui_url: str = DEFAULT_UI_URL) -> RunLinks:
    """Links to the MLflow runs of the study's trials (train and eval runs carry its tag)."""
    runs = tracker.search_runs(tags={cv.TAG_STUDY: study_name})
    return RunLinks(ui_url, {r.info.run_id: r.info.experiment_id for r in runs})


def study_report(study, links: RunLinks, storage_label: str) -> str:
    """The HTML report of ``study`` (module docstring)."""
    from optuna.trial import TrialState

    objs = objectives(study)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = _best(study, objs, complete)
    counts = ", ".join(
        f"{sum(t.state == s for t in trials)} {s.name.lower()}"
        for s in TrialState
        if any(t.state == s for t in trials)
    )
    sections = [
        page.Section("Best trials" if len(objs) > 1 else "Best trial", anchor="best").add(
            _trial_table(best, objs, links)
            if best
            else page.note("no complete trial yet: nothing is best")
        ),
        _history(complete, objs),
    ]
    if len(objs) > 1:
        sections.append(_pareto(complete, {t.number for t in best}, objs))
    sections.append(_importances(study, complete, objs))
    sections.append(page.Section("Trials", anchor="trials").add(_trial_table(trials, objs, links)))
    directions = ", ".join(f"{n} ({d})" for n, d in objs)
    meta = f"Optuna study {study.study_name} in {storage_label}: {len(trials)} trials ({counts})"
    meta += f"; objective{'s' * (len(objs) > 1)}: {directions}"
    return page.render(f"clusterprobe report: study {study.study_name}", meta, sections)


def _best(study, objs, complete) -> list:
    if not complete:
        return []
    chosen = study.best_trials if len(objs) > 1 else [study.best_trial]
    return sorted(chosen, key=lambda t: t.number)


def _trial_table(trials, objs, links: RunLinks) -> str:
    names = sorted({k for t in trials for k in t.params})
    columns = ["trial", "state", *(n for n, _ in objs), *names]
    columns += ["seconds", "train run", "eval run report"]
    rows = []
    for t in trials:
        values = list(t.values) if t.values is not None else [""] * len(objs)
        seconds = t.duration.total_seconds() if t.duration is not None else ""
        run_id = t.user_attrs.get(cv.ATTR_RUN_ID)
        evals = t.user_attrs.get(cv.ATTR_EVAL_RUN_IDS) or []
        final = evals[-1] if evals else None
        report = (
            page.link(links.url(final, cv.ART_REPORT), final[:8])
            if final in links.experiments
            else ""
        )
        rows.append(
            [
                t.number,
                t.state.name,
                *values,
                *(t.params.get(n, "") for n in names),
                seconds,
                links.run(run_id, (run_id or "")[:8]),
                report,
            ]
        )
    return page.table(columns, rows, html_columns=("train run", "eval run report"))


def _history(complete, objs) -> page.Section:
    section = page.Section("Optimisation history", anchor="history")
    if not complete:
        return section.add(page.note("no complete trial yet"))
    numbers = [t.number for t in complete]
    for i, (name, direction) in enumerate(objs):
        fig = figures.optimisation_history(
            numbers, [t.values[i] for t in complete], objective=name, direction=direction
        )
        section.add(page.figure(fig, f"optimisation history of {name}"))
    return section


def _pareto(complete, front: set[int], objs) -> page.Section:
    section = page.Section("Pareto front", anchor="pareto")
    if not complete:
        return section.add(page.note("no complete trial yet"))
    values = np.array([t.values[:2] for t in complete], dtype=float)
    fig = figures.pareto_front(
        values,
        [t.number in front for t in complete],
        [t.number for t in complete],
        [n for n, _ in objs[:2]],
    )
    section.add(page.figure(fig, "Pareto front on the first two objectives"))
    if len(objs) > 2:
        section.add(page.note(f"drawn on the first two of {len(objs)} objectives"))
    return section


def _importances(study, complete, objs) -> page.Section:
    import optuna

    section = page.Section("Parameter importances", anchor="importances")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    for i, (name, _) in enumerate(objs):
        target = (lambda t, i=i: t.values[i]) if len(objs) > 1 else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's note that target names a value
                scores = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=target
                )
        except (RuntimeError, ValueError) as err:
            section.add(page.note(f"{name}: no importances ({err})"))
            continue
        if not scores:
            section.add(
                page.note(
                    f"{name}: no importances: no parameter is set in all "
                    f"{len(complete)} complete trials, or none varies"
                )
            )
            continue
        section.add(page.figure(figures.importances(scores, objective=name), f"{name} importances"))
        section.add(page.table(("param", "importance"), list(scores.items())))
    return section
