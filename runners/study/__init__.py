"""Optuna studies over design choices: every trial is one recorded `run`.

The search space is data (a TOML file, see ``default_space.toml``); the objective is
define-by-run: it walks the space in file order calling ``trial.suggest_*``, with
conditional parameters inside an ``if``, builds a `RunConfig` and hands it to
`pipeline.run`. Each trial's train run is nested under one ``study`` run and linked
both ways: the run carries the study name and trial number as tags, the trial carries
the run id as the user attribute ``mlflow_run_id``.

``--trials N`` counts COMPLETE trials, across workers and across ``--resume``. Workers
take a *slot* under a lock (a file lock next to a file storage, a PostgreSQL advisory
lock otherwise) and start a trial only while ``complete + running < N``, so N workers
finish with exactly N complete trials; a trial that fails frees its slot.

A worker that dies leaves a RUNNING trial. It is failed by (a) Optuna's heartbeat on
RDB storages (SQLite, PostgreSQL: any host), and (b) a host/pid check on this host for
every storage (the journal file has no heartbeat). Its RUNNING MLflow runs are failed
by `Tracker.reap_orphans`. Both run before any new trial starts, so ``--resume`` never
leaves orphans and never repeats a trial. ``--resume`` retries an interrupted trial whose
run saved a training state (``save_every``), continuing that run (``retry``).

This package's ``__init__`` creates or resumes the study and drives it to the end;
the parts live in ``options`` (flags), ``settings`` (what a study keeps), ``storage``
and ``lock`` (where trials are stored and who may start one), ``objective`` (one
trial), ``worker`` and ``processes`` (the trial loop and its processes), ``orphans``
(cleanup after dead workers), ``mlflow_run`` (the study's own run) and ``report``
(the outcome).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import warnings
from pathlib import Path

from clusterprobe.runners.space import DEFAULT_SPACE, build_config, load_space
from clusterprobe.runners.study.lock import SlotLock
from clusterprobe.runners.study.mlflow_run import log_study_report, log_study_summary, study_run
from clusterprobe.runners.study.options import StudyOptions, validate_options
from clusterprobe.runners.study.processes import run_workers
from clusterprobe.runners.study.report import StudyOutcome, registry_pick, summarize
from clusterprobe.runners.study.retry import enqueue_interrupted
from clusterprobe.runners.study.settings import (
    ATTR_SETTINGS,
    StudySettings,
    parse_objectives,
    read_settings,
)
from clusterprobe.runners.study.storage import (
    list_study_names,
    open_storage,
    redact,
    resolve_storage,
    storage_kind,
)
from clusterprobe.runners.study.worker import StudyFailed, log_progress
from clusterprobe.tracker.errors import UsageError, did_you_mean
from clusterprobe.tracker.store import Store


def _new_settings(opts: StudyOptions, name: str) -> StudySettings:
    space = load_space(opts.space)
    objectives = parse_objectives(list(opts.objectives))
    pruner = opts.pruner or "none"
    if pruner != "none":
        if len(objectives) > 1:
            raise UsageError(f"--pruner {pruner}: pruning needs a single --objective")
        config = build_config(space, {}, quick=opts.quick)
        if not config.eval_epochs and not any(p.name == "eval_epochs" for p in space.params):
            raise UsageError(
                f"--pruner {pruner} needs intermediate checkpoints: set eval_epochs "
                "(e.g. eval_epochs = [1, 2]) in the space's [fixed] table"
            )
    return StudySettings(
        name=name,
        trials=opts.trials or 20,
        space_text=space.text,
        space_source=str(Path(opts.space).name if opts.space else DEFAULT_SPACE.name),
        objectives=tuple(objectives),
        quick=opts.quick,
        pruner=pruner,
        seed=opts.seed,
    )


def _check_register_best(opts: StudyOptions, settings: StudySettings) -> None:
    """--register-best needs trials that store their final checkpoint (the logged model)."""
    if not opts.register_best:
        return
    space = settings.space()
    if any(p.name == "save" for p in space.params):
        return  # searched: whether the best trial saved one is known at the end only
    if "checkpoint" not in build_config(space, {}, quick=settings.quick).save:
        raise UsageError(
            f"--register-best {opts.register_best}: the space's trials save no checkpoint "
            "(save lacks 'checkpoint'), so they log no model to register"
        )


def _create_lock(spec: str) -> contextlib.AbstractContextManager:
    if storage_kind(spec) == "postgresql":
        return SlotLock(spec, "__create__").held()
    return SlotLock(spec, "").held()


def run_study(opts: StudyOptions, store: Store) -> StudyOutcome:
    """Create (or resume) a study and run its workers until it has N complete trials."""
    import optuna
    from clusterprobe.tracker.tracking import Tracker

    validate_options(opts)
    # A new study's space, objectives and pruner are checked before any file exists.
    fresh = None if opts.resume is not None else _new_settings(opts, opts.name or "")
    if fresh is not None:
        _check_register_best(opts, fresh)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = resolve_storage(opts.storage, store)
    kind = storage_kind(spec)
    if opts.workers > 1 and kind == "sqlite":
        raise UsageError(
            f"--workers {opts.workers} with SQLite storage: SQLite does not take parallel "
            "writers reliably; give --storage DIR/optuna.journal (journal file, one machine) "
            "or --storage postgresql://USER@HOST:5432/DB"
        )
    if opts.resume is not None and kind != "postgresql":
        path = Path(spec.split(":///", 1)[1] if kind == "sqlite" else spec)
        if not path.is_file():  # nothing to resume: create no storage file either
            raise UsageError(
                f"--resume {opts.resume!r}: no such study; {redact(spec)} does not exist"
            )
    tracker = Tracker(store)  # creates/upgrades the MLflow schema once, before any worker
    with _create_lock(spec):  # the storage schema and the study are created exactly once
        storage = open_storage(spec)
        names = list_study_names(storage)
        if opts.resume is not None:
            name = opts.resume
            if name not in names:
                hint = did_you_mean(name, names)
                raise UsageError(
                    f"--resume {name!r}: no such study in {redact(spec)}{hint}; "
                    f"studies there: {', '.join(names) or '(none)'}"
                )
            study = optuna.load_study(study_name=name, storage=storage)
            settings = read_settings(study)
            changes = {}
            if opts.trials is not None:
                changes["trials"] = opts.trials
            if opts.seed is not None:
                changes["seed"] = opts.seed
            settings = dataclasses.replace(settings, **changes)
            _check_register_best(opts, settings)
            for number, run_id in enqueue_interrupted(study, tracker):
                log_progress(
                    opts.quiet, f"trial {number} was interrupted: its run {run_id} will resume"
                )
        else:
            name = opts.name or "study-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            if name in names:
                raise UsageError(
                    f"--name {name!r}: a study of that name exists in {redact(spec)}; "
                    f"continue it with --resume {name} or pick another --name"
                )
            settings = dataclasses.replace(fresh, name=name)
            _check_register_best(opts, settings)
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                directions=[d for _, d in settings.objectives],
            )
            study.set_user_attr(ATTR_SETTINGS, settings.to_json())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([m for m, _ in settings.objectives])

    with study_run(tracker, settings, spec, opts) as study_ctx:
        run_id = study_ctx.run_id
        settings = dataclasses.replace(settings, study_run_id=run_id)
        study.set_user_attr(ATTR_SETTINGS, settings.to_json())
        log_progress(
            opts.quiet,
            f"study {name}: {settings.trials} complete trials wanted, {opts.workers} worker(s), "
            f"storage {redact(spec)}, study run {run_id} (resume: --resume {name})",
        )
        run_workers(opts, spec, name, store)
        outcome = summarize(study, spec)
        outcome.study_run_id = run_id
        log_study_summary(tracker, run_id, outcome)
        log_study_report(study_ctx, study, spec)
        if outcome.complete < outcome.trials:
            raise StudyFailed(
                f"study {name} has {outcome.complete} of {outcome.trials} complete trials; "
                f"continue it with --resume {name}"
            )
        if opts.register_best:
            outcome.registered = _register_best(tracker, outcome, settings, opts.register_best)
    return outcome


def _register_best(tracker, outcome: StudyOutcome, settings: StudySettings, name: str) -> dict:
    """Register the model of the trial `registry_pick` chooses as a new version of ``name``."""
    from clusterprobe.runners.register import register_run
    from clusterprobe.tracker.conventions import TAG_STUDY, TAG_TRIAL

    pick = registry_pick(outcome.best, settings.objectives)
    values = ", ".join(f"{k}={v:.4g}" for k, v in pick["values"].items())
    version = register_run(
        tracker,
        pick["mlflow_run_id"],
        name,
        description=f"study {outcome.name}, trial {pick['number']}: {values}",
        tags={TAG_STUDY: outcome.name, TAG_TRIAL: str(pick["number"])},
    )
    return {
        "name": version.name,
        "version": version.version,
        "trial": pick["number"],
        "run_id": version.run_id,
    }
