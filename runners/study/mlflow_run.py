"""The study's own MLflow run, the parent of every trial's train run.

It is created once, with the study's settings as params and its space as an artifact,
and re-opened on ``--resume`` (found by its id, or by the study tag in another store);
when the workers are done it gets the study's trial counts as metrics and the study's
report (``report.html``, as ``clusterprobe report --study`` writes it).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from clusterprobe.runners.study.options import StudyOptions
from clusterprobe.runners.study.report import StudyOutcome
from clusterprobe.runners.study.settings import StudySettings
from clusterprobe.runners.study.storage import redact
from clusterprobe.tracker.conventions import ART_REPORT, TAG_STUDY


@contextlib.contextmanager
def study_run(tracker, settings: StudySettings, spec: str, opts: StudyOptions) -> Iterator:
    """The study's MLflow run (its run context): created once, reused (re-opened) on
    --resume."""
    params = {
        "study_name": settings.name,
        "trials": settings.trials,
        "objectives": ",".join(f"{n}:{d}" for n, d in settings.objectives),
        "space": settings.space_source,
        "quick": settings.quick,
        "pruner": settings.pruner,
        "seed": "" if settings.seed is None else settings.seed,
        "storage": redact(spec),
        "sampler": "TPESampler(multivariate=True, group=True, constant_liar=True)",
    }
    existing = settings.study_run_id
    if existing is not None and not _run_exists(tracker, existing):
        existing = None  # resumed against another MLflow store: give it its own study run
    existing = existing or _find_study_run(tracker, settings.name)
    if existing is not None:
        with _reopen_run(tracker, existing) as run:
            yield run
        return
    with tracker.start_run(
        "study", params=params, tags={TAG_STUDY: settings.name}, run_name=settings.name
    ) as run:
        with contextlib.suppress(Exception):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "space.toml"
                path.write_text(settings.space_text)
                run.log_artifact(path)
        yield run


def _reopen_run(tracker, run_id: str):
    """Set a finished run RUNNING again, owned by this process, and return its context."""
    from clusterprobe.tracker.tracking import RunContext, owner_tags

    run = tracker.get_run(run_id)
    for key, value in owner_tags().items():
        tracker.client.set_tag(run_id, key, value)
    tracker.client.update_run(run_id, status="RUNNING")
    return RunContext(tracker, run)


def _run_exists(tracker, run_id: str) -> bool:
    try:
        tracker.get_run(run_id)
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST (tracker owns mlflow)
        return False
    return True


def _find_study_run(tracker, name: str) -> str | None:
    runs = tracker.search_runs(kind="study", tags={TAG_STUDY: name})
    return runs[0].info.run_id if runs else None


def log_study_summary(tracker, run_id: str, outcome: StudyOutcome) -> None:
    with contextlib.suppress(Exception):
        client = getattr(tracker, "client", None)
        if client is None:
            return
        metrics = {
            "complete_trials": outcome.complete,
            "failed_trials": outcome.failed,
            "pruned_trials": outcome.pruned,
        }
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))


def log_study_report(ctx, study, spec: str) -> None:
    """``report.html`` on the study run: the study's one-page report, its links pointing at
    ``clusterprobe ui``'s default address. Drawing it never fails the study: a warning."""
    from clusterprobe.runners.report import study_report as sr

    try:
        links = sr.run_links(ctx.tracker, study.study_name)
        ctx.log_text(sr.study_report(study, links, redact(spec)), ART_REPORT)
    except Exception as err:
        warnings.warn(
            f"study {study.study_name}: no report.html ({type(err).__name__}: {err})",
            RuntimeWarning,
            stacklevel=2,
        )
