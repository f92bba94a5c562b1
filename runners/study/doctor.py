"""`clusterprobe doctor`'s study checks: study runs, trials and their train runs agree.

A study run is FAILED or KILLED although its study reached the trials it asked for (its
main process was killed while the workers finished); a finished trial names no train
run, or one the store lacks; a study's train run carries a trial number the study does
not have; a RUNNING trial's worker is gone. ``fix`` sets the study run FINISHED and fails
the dead workers' trials (as ``study --resume`` would); it deletes nothing.
"""

from __future__ import annotations

import contextlib

from clusterprobe.runners.study.settings import read_settings
from clusterprobe.runners.study.storage import list_study_names, open_storage
from clusterprobe.tracker.conventions import ATTR_RUN_ID, TAG_STUDY, TAG_TRIAL
from clusterprobe.tracker.doctor import (
    RUN_WITHOUT_TRIAL,
    STUDY_STATUS,
    TRIAL_WITHOUT_RUN,
    Finding,
)

TRIAL_ORPHAN = "trial-orphan"  # a RUNNING trial whose worker process is gone


def check_studies(tracker, spec: str) -> list[Finding]:
    """Findings for every study of the Optuna storage ``spec`` against the MLflow store."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(spec)
    findings: list[Finding] = []
    for name in list_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        wanted = None
        with contextlib.suppress(Exception):
            wanted = read_settings(study).trials
        dead = set(_dead_trials(study, running))
        findings += [
            Finding(
                TRIAL_ORPHAN,
                f"study {name} trial {t.number}",
                "RUNNING, its worker process is gone",
                fixable=True,
                new_status="FAIL",
            )
            for t in running
            if t.number in dead
        ]
        done = wanted is not None and complete >= wanted and len(running) == len(dead)
        for run in tracker.search_runs(kind="study", tags={TAG_STUDY: name}):
            status = run.info.status
            if done and status in ("FAILED", "KILLED"):
                findings.append(
                    Finding(
                        STUDY_STATUS,
                        run.info.run_id,
                        f"study {name}: {complete}/{wanted} trials complete, its run is {status}",
                        fixable=True,
                        new_status="FINISHED",
                    )
                )
        runs = {r.info.run_id: r for r in tracker.search_runs(kind="train", tags={TAG_STUDY: name})}
        numbers = {t.number for t in trials}
        for t in trials:
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            run_id = t.user_attrs.get(ATTR_RUN_ID)
            if run_id is None or (run_id not in runs and not _exists(tracker, run_id)):
                what = "names no train run" if run_id is None else f"names run {run_id}, absent"
                findings.append(
                    Finding(TRIAL_WITHOUT_RUN, f"study {name} trial {t.number}", f"{what}")
                )
        for run_id, run in runs.items():
            number = run.data.tags.get(TAG_TRIAL, "")
            if not number.isdigit() or int(number) not in numbers:
                findings.append(
                    Finding(
                        RUN_WITHOUT_TRIAL,
                        run_id,
                        f"train run of study {name} trial {number or '?'}, a trial it lacks",
                    )
                )
    return findings


def _dead_trials(study, running) -> list[int]:
    """Numbers of RUNNING trials whose worker (this host) is gone; read-only."""
    import os
    import socket

    from clusterprobe.runners.study.objective import ATTR_HOST, ATTR_PID
    from clusterprobe.tracker.provenance import pid_alive

    host = socket.gethostname()
    out = []
    for t in running:
        pid = t.user_attrs.get(ATTR_PID)
        if t.user_attrs.get(ATTR_HOST) != host or pid is None or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            out.append(t.number)
    return out


def _exists(tracker, run_id: str) -> bool:
    try:
        tracker.get_run(run_id)
    except Exception:
        return False
    return True


def fix_studies(tracker, spec: str, findings: list[Finding]) -> list[Finding]:
    """Fail the dead workers' trials (``orphans.fail_orphan_trials``) and set the study runs
    the findings name FINISHED; returns the findings repaired."""
    import optuna
    from clusterprobe.runners.study.orphans import fail_orphan_trials
    from clusterprobe.tracker.doctor import fix

    done = fix(tracker, [f for f in findings if f.kind == STUDY_STATUS])
    orphans = [f for f in findings if f.kind == TRIAL_ORPHAN]
    if orphans:
        storage = open_storage(spec)
        names = {f.subject.split(" ")[1] for f in orphans}
        for name in names:
            fail_orphan_trials(optuna.load_study(study_name=name, storage=storage), tracker)
        done += orphans
    return done
