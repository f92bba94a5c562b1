"""One study worker: take a free slot, run one trial, repeat until N trials are COMPLETE.

Before each trial the worker fails what dead workers left RUNNING (trials and runs),
so no trial is repeated and no orphan survives. A trial starts only while
``complete + running < N`` under the slot lock; a trial that fails frees its slot.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

from clusterprobe.runners.study.lock import SlotLock
from clusterprobe.runners.study.objective import Objective
from clusterprobe.runners.study.orphans import fail_orphan_trials, on_stale
from clusterprobe.runners.study.settings import StudySettings, read_settings
from clusterprobe.runners.study.storage import open_storage
from clusterprobe.tracker.conventions import ATTR_RUN_ID
from clusterprobe.tracker.store import Store

MAX_CONSECUTIVE_FAILURES = 5  # a worker gives up after this many failed trials in a row


class StudyFailed(RuntimeError):
    """The study cannot go on (every trial fails); the command prints it and exits 1."""


def log_progress(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"clusterprobe study: {message}", file=sys.stderr, flush=True)


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
    storage = open_storage(storage_spec, heartbeat=heartbeat, on_stale=on_stale(tracker))
    study = optuna.load_study(study_name=name, storage=storage)
    settings = read_settings(study)
    study.sampler = _sampler(settings, worker_index, len(study.get_trials(deepcopy=False)))
    study.pruner = _pruner(settings.pruner)
    slot = SlotLock(storage_spec, name)
    objective = Objective(settings, settings.space(), store, slot, quiet)
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
    objective: Objective
    quiet: bool
    poll: float
    done: int = 0  # trials this worker completed
    failures: int = 0  # failed in a row

    def after(self, study, trial) -> None:
        from optuna.trial import TrialState

        names = [n for n, _ in self.objective.settings.objectives]
        values = ", ".join(f"{n}={v:.4f}" for n, v in zip(names, trial.values or [], strict=False))
        run_id = trial.user_attrs.get(ATTR_RUN_ID, "-")
        log_progress(self.quiet, f"trial {trial.number} {trial.state.name} {values} run {run_id}")
        self.done += trial.state == TrialState.COMPLETE
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0

    def loop(self) -> None:
        from optuna.trial import TrialState

        study, slot, last_progress = self.study, self.slot, None
        while True:
            for number in fail_orphan_trials(study, self.tracker):
                log_progress(self.quiet, f"trial {number} FAIL: its worker process is gone")
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
                        log_progress(self.quiet, f"{complete} complete, {running} running: waiting")
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
