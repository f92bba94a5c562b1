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
leaves orphans and never repeats a trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import difflib
import fcntl
import hashlib
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterprobe.runners.space import (  # re-exported: the study's space API
    DEFAULT_SPACE,
    Param,
    Space,
    build_config,
    load_space,
    parse_space,
)
from clusterprobe.tracker.conventions import SUMMARY_METRICS, TAG_ERROR, TAG_STUDY, TAG_TRIAL
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import Store

ATTR_SETTINGS = "clusterprobe"  # study user attr: JSON-able StudySettings
ATTR_RUN_ID = "mlflow_run_id"  # trial user attr: its train run
ATTR_EVAL_RUN_IDS = "mlflow_eval_run_ids"
ATTR_HOST = "clusterprobe.host"  # trial user attrs: the worker that owns a RUNNING trial
ATTR_PID = "clusterprobe.pid"
ATTR_FAILED_BY = "clusterprobe.failed_by"
STALE_ERROR = "trial heartbeat stopped: its worker died"
PRUNERS = ("none", "median")
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
MAX_CONSECUTIVE_FAILURES = 5  # a worker gives up after this many failed trials in a row


class StudyFailed(RuntimeError):
    """The study cannot go on (every trial fails); the command prints it and exits 1."""


# ----------------------------------------------------------------------- objectives


def parse_objectives(specs: list[str] | tuple[str, ...] | None) -> list[tuple[str, str]]:
    """``["best_ami:max", "best_probe_acc"]`` -> [(name, "maximize"), ...]; default best_ami:max."""
    out: list[tuple[str, str]] = []
    for spec in specs or ["best_ami:max"]:
        name, _, direction = spec.partition(":")
        direction = direction or "max"
        if direction.lower() not in DIRECTIONS:
            raise UsageError(f"--objective {spec!r}: direction must be max or min")
        if name not in SUMMARY_METRICS:
            close = difflib.get_close_matches(name, SUMMARY_METRICS, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(
                f"--objective {spec!r}: unknown metric {name!r}{hint}; "
                f"choose from {', '.join(SUMMARY_METRICS)}"
            )
        if any(name == n for n, _ in out):
            raise UsageError(f"--objective {name} given twice")
        out.append((name, DIRECTIONS[direction.lower()]))
    return out


# -------------------------------------------------------------------------- storage


def storage_kind(spec: str) -> str:
    """ "sqlite" | "postgresql" | "journal" for a resolved storage spec."""
    if "://" not in spec:
        return "journal"
    scheme = spec.split("://", 1)[0].split("+", 1)[0].lower()
    return {"postgres": "postgresql"}.get(scheme, scheme)


def resolve_storage(storage: str | None, store: Store) -> str:
    """``--storage`` (journal path or URL) or the store's ``optuna.db`` -> a storage spec."""
    if storage is None:
        if store.optuna_url is None:
            raise UsageError(
                f"--tracking-uri {store.tracking_uri!r} has no local folder for optuna.db; "
                "give --storage postgresql://... or a journal file path"
            )
        return store.optuna_url
    if "://" in storage:
        kind = storage_kind(storage)
        if kind not in ("sqlite", "postgresql"):
            raise UsageError(
                f"--storage {redact(storage)!r}: unsupported scheme {kind!r}; use a journal "
                "file path, sqlite:///FILE or postgresql://USER@HOST:PORT/DB"
            )
        if kind == "sqlite":
            path = storage.split(":///", 1)[-1]
            return "sqlite:///" + os.path.abspath(path)
        return _postgres_driver(storage)
    path = Path(os.path.abspath(os.path.expanduser(storage)))
    if path.is_dir():
        raise UsageError(f"--storage {storage!r} is a folder; give a journal file path")
    if path.exists():
        with open(path, "rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                raise UsageError(
                    f"--storage {storage!r} is a SQLite database; write sqlite:///{path}"
                )
    return str(path)


def _postgres_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; name psycopg2 where only it is here."""
    head, rest = url.split("://", 1)
    if "+" in head:
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def redact(url: str) -> str:
    """Hide a password in a URL before it is printed or logged."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def open_storage(spec: str, *, heartbeat: int | None = None, on_stale: Callable | None = None):
    """Optuna storage for a spec; RDB storages get heartbeats when ``heartbeat`` is set."""
    import optuna

    kind = storage_kind(spec)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec))
    engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {}
    if kind == "sqlite":
        Path(spec.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            spec,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=None if heartbeat is None else 3 * heartbeat,
            heartbeat_stale_trial_callback=on_stale if heartbeat is not None else None,
        )


class SlotLock:
    """Cross-process mutex for one study: fcntl file lock or PostgreSQL advisory lock.

    ``release`` is idempotent, so the objective can release the lock as soon as its
    trial exists while the caller still releases it in a ``finally``. Both kinds are
    dropped by the OS / server when the holder dies, so a SIGKILL never wedges a study.
    """

    def __init__(self, spec: str, study_name: str):
        self._held = False
        self._fh = None
        self._conn = None
        kind = storage_kind(spec)
        if kind == "postgresql":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            digest = hashlib.sha1(f"clusterprobe-study:{study_name}".encode()).digest()
            self._key = int.from_bytes(digest[:8], "big", signed=True)
            self._engine = sqlalchemy.create_engine(spec, poolclass=NullPool)
            self._path = None
        else:
            path = spec.split(":///", 1)[1] if kind == "sqlite" else spec
            # Not "<file>.lock": Optuna's journal backend owns that name for its own lock.
            self._path = Path(f"{path}.clusterprobe-lock")
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def acquire(self) -> None:
        if self._path is not None:
            self._fh = open(self._path, "a+")
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        else:
            import sqlalchemy

            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        if self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key}
                )
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


# ------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StudySettings:
    """What a study was created with; stored as a study user attr, read by workers."""

    name: str
    trials: int
    space_text: str
    space_source: str
    objectives: tuple[tuple[str, str], ...]
    quick: bool = False
    pruner: str = "none"
    seed: int | None = None
    study_run_id: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StudySettings:
        data = dict(data)
        data["objectives"] = tuple(tuple(o) for o in data["objectives"])
        return cls(**data)

    def space(self) -> Space:
        return parse_space(self.space_text, self.space_source)


def read_settings(study) -> StudySettings:
    raw = study.user_attrs.get(ATTR_SETTINGS)
    if raw is None:
        raise UsageError(
            f"study {study.study_name!r} was not created by clusterprobe study; nothing to resume"
        )
    return StudySettings.from_json(raw)


def list_study_names(storage) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


# --------------------------------------------------------------------------- worker


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet waited for is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def fail_orphan_trials(study, tracker=None) -> list[int]:
    """FAIL RUNNING trials whose worker is gone; returns their numbers.

    The host/pid check catches dead workers on this host at once, on every storage
    (with ``tracker``, the trial is first linked to the train run it left behind);
    heartbeats (RDB storages) catch dead workers on any host after the grace period.
    """
    import optuna
    from optuna.trial import TrialState

    storage, host, failed = study._storage, socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get(ATTR_PID)
        if t.user_attrs.get(ATTR_HOST) != host or pid is None or pid == os.getpid():
            continue
        if _process_alive(int(pid)):
            continue
        try:
            if tracker is not None and ATTR_RUN_ID not in t.user_attrs:
                with contextlib.suppress(Exception):
                    runs = trial_runs(tracker, study.study_name, t.number)
                    if runs:
                        storage.set_trial_user_attr(t._trial_id, ATTR_RUN_ID, runs[0].info.run_id)
            storage.set_trial_user_attr(t._trial_id, ATTR_FAILED_BY, "owner process gone")
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another worker failed or finished it first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


@dataclass
class _Objective:
    """The define-by-run objective: one trial = one `pipeline.run`."""

    settings: StudySettings
    space: Space
    store: Store
    slot: SlotLock
    quiet: bool
    last_number: int | None = None
    usage_error: UsageError | None = None
    last_error: str | None = None

    def __call__(self, trial) -> float | list[float]:
        import optuna

        self.last_number = trial.number
        trial.set_user_attr(ATTR_HOST, socket.gethostname())
        trial.set_user_attr(ATTR_PID, os.getpid())
        self.slot.release()  # the trial holds its slot now (RUNNING)
        values = self.space.suggest(trial)
        names = [n for n, _ in self.settings.objectives]
        on_eval = None
        if self.settings.pruner != "none":

            def on_eval(epoch: int, summary: dict) -> None:
                trial.report(float(summary[names[0]]), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        from clusterprobe.runners import pipeline

        tags = {TAG_STUDY: self.settings.name, TAG_TRIAL: str(trial.number)}
        try:
            config = build_config(self.space, values, quick=self.settings.quick)
            result = pipeline.run(
                config,
                self.store,
                parent_run_id=self.settings.study_run_id,
                tags=tags,
                on_eval=on_eval,
                quiet=self.quiet,
            )
        except UsageError as err:  # the space makes an invalid run: stop, do not repeat it
            self.usage_error = err
            raise
        except BaseException as err:
            self.last_error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            self._link_failed(trial)
            raise
        trial.set_user_attr(ATTR_RUN_ID, result.train_run_id)
        trial.set_user_attr(ATTR_EVAL_RUN_IDS, list(result.eval_run_ids))
        missing = [n for n in names if n not in result.summary]
        if missing:
            raise KeyError(f"objective {missing} not in the run's summary {sorted(result.summary)}")
        out = [float(result.summary[n]) for n in names]
        return out[0] if len(out) == 1 else out

    def _link_failed(self, trial) -> None:
        """Link a failed trial to its (FAILED) train run, found by its tags."""
        with contextlib.suppress(Exception):
            from clusterprobe.tracker.tracking import Tracker

            runs = trial_runs(Tracker(self.store), self.settings.name, trial.number)
            if runs:
                trial.set_user_attr(ATTR_RUN_ID, runs[0].info.run_id)


def trial_runs(tracker, study_name: str, number: int, status: str | None = None) -> list:
    """The train runs of trial ``number`` (normally one), found by their tags."""
    return tracker.search_runs(
        kind="train", status=status, tags={TAG_STUDY: study_name, TAG_TRIAL: str(number)}
    )


def _sampler(settings: StudySettings, worker_index: int, n_existing: int):
    import optuna

    seed = settings.seed
    if seed is not None:  # distinct streams per host, worker and resume: no repeated proposals
        host = zlib.crc32(socket.gethostname().encode())
        seed = (seed * 1_000_003 + host + worker_index * 10_007 + n_existing) % (2**31)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            multivariate=True, group=True, constant_liar=True, seed=seed
        )


def _pruner(name: str):
    import optuna

    return optuna.pruners.MedianPruner() if name == "median" else optuna.pruners.NopPruner()


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"clusterprobe study: {message}", file=sys.stderr, flush=True)


def run_worker(
    storage_spec: str,
    name: str,
    store: Store,
    *,
    worker_index: int = 0,
    heartbeat: int | None = 60,
    quiet: bool = False,
    poll: float = 1.0,
) -> int:
    """Run trials of study ``name`` until it has its number of COMPLETE trials.

    Returns how many trials this worker completed. Raises UsageError when the space
    itself makes invalid configs, StudyFailed after too many failures in a row.
    """
    import optuna
    from clusterprobe.tracker.tracking import Tracker, handle_sigterm

    optuna.logging.set_verbosity(optuna.logging.ERROR if quiet else optuna.logging.WARNING)
    tracker = Tracker(store)
    storage = open_storage(storage_spec, heartbeat=heartbeat, on_stale=_on_stale(tracker))
    study = optuna.load_study(study_name=name, storage=storage)
    settings = read_settings(study)
    study.sampler = _sampler(settings, worker_index, len(study.get_trials(deepcopy=False)))
    study.pruner = _pruner(settings.pruner)
    slot = SlotLock(storage_spec, name)
    objective = _Objective(settings, settings.space(), store, slot, quiet)
    worker = _Worker(study, tracker, slot, objective, quiet, poll)
    with handle_sigterm():  # SIGTERM ends the trial FAIL and its runs KILLED, not RUNNING
        worker.loop()
    return worker.done


@dataclass
class _Worker:
    """One worker's loop: take a free slot, run one trial, repeat until N are COMPLETE."""

    study: Any
    tracker: Any
    slot: SlotLock
    objective: _Objective
    quiet: bool
    poll: float
    done: int = 0  # trials this worker completed
    failures: int = 0  # failed in a row

    def after(self, study, trial) -> None:
        from optuna.trial import TrialState

        names = [n for n, _ in self.objective.settings.objectives]
        values = ", ".join(f"{n}={v:.4f}" for n, v in zip(names, trial.values or [], strict=False))
        run_id = trial.user_attrs.get(ATTR_RUN_ID, "-")
        _log(self.quiet, f"trial {trial.number} {trial.state.name} {values} run {run_id}")
        self.done += trial.state == TrialState.COMPLETE
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0

    def loop(self) -> None:
        from optuna.trial import TrialState

        study, slot, last_progress = self.study, self.slot, None
        while True:
            for number in fail_orphan_trials(study, self.tracker):
                _log(self.quiet, f"trial {number} FAIL: its worker process is gone")
            with contextlib.suppress(Exception):
                self.tracker.reap_orphans()
            target = read_settings(study).trials  # --resume may have raised --trials
            slot.acquire()
            try:
                trials = study.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
                )
                complete = sum(t.state == TrialState.COMPLETE for t in trials)
                running = len(trials) - complete
                if complete >= target:
                    return
                if complete + running >= target:  # every slot is taken: wait for one
                    if (complete, running) != last_progress:
                        _log(self.quiet, f"{complete} complete, {running} running: waiting")
                        last_progress = (complete, running)
                    slot.release()
                    time.sleep(self.poll)
                    continue
                self.objective.usage_error = None
                study.optimize(
                    self.objective, n_trials=1, catch=(Exception,), callbacks=[self.after]
                )
            finally:
                slot.release()
            if self.objective.usage_error is not None:
                raise self.objective.usage_error
            if self.failures >= MAX_CONSECUTIVE_FAILURES:
                raise StudyFailed(
                    f"{self.failures} trials in a row failed in this worker, the last with "
                    f"{self.objective.last_error or 'no error message'}; see the FAILED runs' "
                    "clusterprobe.error tags"
                )


def _on_stale(tracker) -> Callable:
    """Heartbeat callback: the stale trial's RUNNING train run and its evals become FAILED.

    `Tracker.reap_orphans` does this at once for workers of this host; this callback
    covers workers of other hosts, whose pids cannot be checked from here.
    """

    def callback(study, trial) -> None:
        with contextlib.suppress(Exception):
            name = read_settings(study).name
            for run in trial_runs(tracker, name, trial.number, status="RUNNING"):
                evals = tracker.search_runs(parent_run_id=run.info.run_id, status="RUNNING")
                for r in [*evals, run]:
                    tracker.client.set_tag(r.info.run_id, TAG_ERROR, STALE_ERROR)
                    tracker.client.set_terminated(r.info.run_id, "FAILED")

    return callback


# ---------------------------------------------------------------------------- study


@dataclass(frozen=True)
class StudyOptions:
    """The `clusterprobe study` flags, parsed."""

    name: str | None = None
    resume: str | None = None
    trials: int | None = None
    space: str | None = None
    storage: str | None = None
    workers: int = 1
    quick: bool = False
    objectives: tuple[str, ...] = ()
    pruner: str | None = None
    seed: int | None = None
    heartbeat: int = 60
    quiet: bool = False


@dataclass
class StudyOutcome:
    name: str
    storage: str
    study_run_id: str | None
    trials: int
    complete: int
    failed: int
    pruned: int
    best: list[dict]  # per best trial: number, values, params, mlflow_run_id


def _validate_options(opts: StudyOptions) -> None:
    if opts.workers < 1:
        raise UsageError(f"--workers {opts.workers}: must be >= 1")
    if opts.trials is not None and opts.trials < 1:
        raise UsageError(f"--trials {opts.trials}: must be >= 1")
    if opts.heartbeat < 1:
        raise UsageError(f"--heartbeat {opts.heartbeat}: must be >= 1 second")
    if opts.pruner is not None and opts.pruner not in PRUNERS:
        raise UsageError(f"--pruner {opts.pruner!r}: choose from {', '.join(PRUNERS)}")
    if opts.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--space", opts.space),
                ("--objective", opts.objectives),
                ("--pruner", opts.pruner),
                ("--quick", opts.quick),
                ("--name", opts.name if opts.name != opts.resume else None),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"--resume {opts.resume}: {', '.join(given)} cannot change a study; it keeps "
                "the settings it was created with (only --trials, --workers, --seed may change)"
            )


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


def _create_lock(spec: str) -> contextlib.AbstractContextManager:
    if storage_kind(spec) == "postgresql":
        return SlotLock(spec, "__create__").held()
    return SlotLock(spec, "").held()


def run_study(opts: StudyOptions, store: Store) -> StudyOutcome:
    """Create (or resume) a study and run its workers until it has N complete trials."""
    import optuna
    from clusterprobe.tracker.tracking import Tracker

    _validate_options(opts)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = resolve_storage(opts.storage, store)
    kind = storage_kind(spec)
    if opts.workers > 1 and kind == "sqlite":
        raise UsageError(
            f"--workers {opts.workers} with SQLite storage: SQLite does not take parallel "
            "writers reliably; give --storage DIR/optuna.journal (journal file, one machine) "
            "or --storage postgresql://USER@HOST:5432/DB"
        )
    tracker = Tracker(store)  # creates/upgrades the MLflow schema once, before any worker
    with _create_lock(spec):  # the storage schema and the study are created exactly once
        storage = open_storage(spec)
        names = list_study_names(storage)
        if opts.resume is not None:
            name = opts.resume
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
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
        else:
            name = opts.name or "study-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            if name in names:
                raise UsageError(
                    f"--name {name!r}: a study of that name exists in {redact(spec)}; "
                    f"continue it with --resume {name} or pick another --name"
                )
            settings = _new_settings(opts, name)
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                directions=[d for _, d in settings.objectives],
            )
            study.set_user_attr(ATTR_SETTINGS, settings.to_json())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([m for m, _ in settings.objectives])

    with _study_run(tracker, settings, spec, opts) as run_id:
        settings = dataclasses.replace(settings, study_run_id=run_id)
        study.set_user_attr(ATTR_SETTINGS, settings.to_json())
        _log(
            opts.quiet,
            f"study {name}: {settings.trials} complete trials wanted, {opts.workers} worker(s), "
            f"storage {redact(spec)}, study run {run_id} (resume: --resume {name})",
        )
        _run_workers(opts, spec, name, store)
        outcome = summarize(study, spec)
        outcome.study_run_id = run_id
        _log_study_summary(tracker, run_id, outcome)
        if outcome.complete < outcome.trials:
            raise StudyFailed(
                f"study {name} has {outcome.complete} of {outcome.trials} complete trials; "
                f"continue it with --resume {name}"
            )
    return outcome


@contextlib.contextmanager
def _study_run(tracker, settings: StudySettings, spec: str, opts: StudyOptions) -> Iterator[str]:
    """The study's MLflow run: created once, reused (re-opened) on --resume."""
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
            yield run.run_id
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
        yield run.run_id


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


def _log_study_summary(tracker, run_id: str, outcome: StudyOutcome) -> None:
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


def _run_workers(opts: StudyOptions, spec: str, name: str, store: Store) -> None:
    if opts.workers == 1:
        run_worker(spec, name, store, heartbeat=opts.heartbeat, quiet=opts.quiet)
        return
    env = dict(os.environ)
    # N workers share this machine's cores: one BLAS/OpenMP pool each, not N oversubscribed.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // opts.workers)))
    procs = []
    for i in range(opts.workers):
        cmd = [
            sys.executable,
            "-m",
            "clusterprobe.runners.cli",
            "study",
            "--worker",
            str(i),
            "--resume",
            name,
            "--storage",
            spec,
            "--tracking-uri",
            store.tracking_uri,
            "--heartbeat",
            str(opts.heartbeat),
        ]
        if store.artifact_root:
            cmd += ["--artifact-root", store.artifact_root]
        if opts.quiet:
            cmd.append("--quiet")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env))
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:  # the study may still be complete: the other workers took over the slots
        _log(
            False,
            "worker process(es) ended with errors ("
            + ", ".join(f"#{i}: exit {c}" for i, c in bad)
            + "); see their messages above",
        )


def summarize(study, spec: str) -> StudyOutcome:
    from optuna.trial import TrialState

    settings = read_settings(study)
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    best: list[dict] = []
    if count[TrialState.COMPLETE]:
        chosen = study.best_trials if len(settings.objectives) > 1 else [study.best_trial]
        for t in sorted(chosen, key=lambda t: t.number):
            best.append(
                {
                    "number": t.number,
                    "values": dict(zip([n for n, _ in settings.objectives], t.values, strict=True)),
                    "params": dict(t.params),
                    "mlflow_run_id": t.user_attrs.get(ATTR_RUN_ID),
                }
            )
    return StudyOutcome(
        name=study.study_name,
        storage=spec,
        study_run_id=settings.study_run_id,
        trials=settings.trials,
        complete=count[TrialState.COMPLETE],
        failed=count[TrialState.FAIL],
        pruned=count[TrialState.PRUNED],
        best=best,
    )


def dashboard_command(spec: str, store: Store) -> str:
    """The command that opens optuna-dashboard on this study's storage."""
    if store.optuna_url == spec and store.root is not None:
        ours = f"clusterprobe dashboard --store {shlex.quote(str(store.root))}"
    else:
        ours = f"clusterprobe dashboard --storage {shlex.quote(redact(spec))}"
    return f"{ours}  (or: optuna-dashboard {shlex.quote(redact(spec))})"


def format_outcome(outcome: StudyOutcome, store: Store) -> str:
    lines = [
        f"study {outcome.name}: {outcome.complete}/{outcome.trials} complete trials "
        f"({outcome.failed} failed, {outcome.pruned} pruned); study run {outcome.study_run_id}"
    ]
    multi = any(len(b["values"]) > 1 for b in outcome.best)
    label = f"Pareto front ({len(outcome.best)}): trial" if multi else "best trial"
    for b in outcome.best:
        values = ", ".join(f"{k}={_num(v)}" for k, v in b["values"].items())
        params = ", ".join(f"{k}={_num(v)}" for k, v in b["params"].items())
        lines.append(f"{label} {b['number']}: {values}  [{params}]  train run {b['mlflow_run_id']}")
    lines.append(f"dashboard: {dashboard_command(outcome.storage, store)}")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


__all__ = [
    "Param",
    "Space",
    "StudyOptions",
    "StudyOutcome",
    "StudySettings",
    "build_config",
    "fail_orphan_trials",
    "load_space",
    "open_storage",
    "parse_objectives",
    "parse_space",
    "resolve_storage",
    "run_study",
    "run_worker",
    "summarize",
]
