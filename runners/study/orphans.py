"""Fail what a dead worker left RUNNING: its trial, and its train and eval runs.

A trial whose worker died is failed (a) by a host/pid check on this host, on every
storage (the journal file has no heartbeat), and (b) by Optuna's heartbeat on RDB
storages, for workers of any host; `on_stale` then fails the runs that such a trial
left RUNNING, which `Tracker.reap_orphans` cannot do across hosts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Callable

from clusterprobe.runners.study.objective import (
    ATTR_FAILED_BY,
    ATTR_HOST,
    ATTR_PID,
    trial_runs,
)
from clusterprobe.runners.study.settings import read_settings
from clusterprobe.tracker.conventions import ATTR_RUN_ID, TAG_ERROR
from clusterprobe.tracker.provenance import pid_alive

STALE_ERROR = "trial heartbeat stopped: its worker died"


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
        if pid_alive(int(pid)):
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


def on_stale(tracker) -> Callable:
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
