"""``study --resume``: trials whose training was interrupted continue it, not start over.

A trial is interrupted when its worker died (its train run failed as an orphan or by
the heartbeat) or was stopped (Ctrl-C, SIGTERM: the run ended KILLED). Optuna cannot
reopen a FAILED trial, so each such trial whose train run stored a training state
(``--save-every``, ``runners/resume.py``) is enqueued again with the same parameters
and two user attrs: the run to resume and the trial it retries. The objective then
calls ``pipeline.resume`` on that run instead of ``pipeline.run``: the same MLflow run
continues from its last saved epoch and is relinked to the new trial.
"""

from __future__ import annotations

from clusterprobe.runners.study.objective import ATTR_RESUME_RUN
from clusterprobe.runners.study.orphans import STALE_ERROR, fail_orphan_trials
from clusterprobe.tracker.conventions import ATTR_RUN_ID, TAG_ERROR

ATTR_RETRY_OF = "clusterprobe.retry_of"  # trial user attr: the interrupted trial's number


def enqueue_interrupted(study, tracker) -> list[tuple[int, str]]:
    """Enqueue a retry of every interrupted trial whose run can resume (once per trial);
    returns (trial number, train run id) of each."""
    from clusterprobe.runners.resume import has_state  # torch: only when a study resumes
    from optuna.trial import TrialState

    fail_orphan_trials(study, tracker)
    tracker.reap_orphans()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(ATTR_RETRY_OF) for t in trials}
    out = []
    for t in trials:
        run_id = t.user_attrs.get(ATTR_RUN_ID)
        if t.state != TrialState.FAIL or t.number in retried or not run_id:
            continue
        if not _interrupted(tracker, run_id) or not has_state(tracker, run_id):
            continue
        study.enqueue_trial(t.params, user_attrs={ATTR_RESUME_RUN: run_id, ATTR_RETRY_OF: t.number})
        out.append((t.number, run_id))
    return out


def _interrupted(tracker, run_id: str) -> bool:
    """Killed, or failed because its worker died (not by an error of its own)."""
    from clusterprobe.tracker.tracking import ORPHAN_ERROR

    run = tracker.get_run(run_id)
    if run.info.status == "KILLED":
        return True
    return run.info.status == "FAILED" and run.data.tags.get(TAG_ERROR) in (
        STALE_ERROR,
        ORPHAN_ERROR,
    )
