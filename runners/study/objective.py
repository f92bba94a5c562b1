"""The study's objective: one trial = one `pipeline.run`, linked to its runs both ways.

The objective is define-by-run: it walks the space calling ``trial.suggest_*``, builds
a `RunConfig` and runs it nested under the study run. The train run carries the study
name and trial number as tags (`trial_runs` finds it by them); the trial carries the
run ids as user attrs, and the host and pid of the worker that owns it while RUNNING.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from clusterprobe.runners.space import Space, build_config
from clusterprobe.runners.study.lock import SlotLock
from clusterprobe.runners.study.settings import StudySettings
from clusterprobe.tracker.conventions import ATTR_EVAL_RUN_IDS, ATTR_RUN_ID, TAG_STUDY, TAG_TRIAL
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import Store

ATTR_HOST = "clusterprobe.host"  # trial user attrs: the worker that owns a RUNNING trial
ATTR_PID = "clusterprobe.pid"
ATTR_FAILED_BY = "clusterprobe.failed_by"
ATTR_RESUME_RUN = "clusterprobe.resume_run_id"  # a retry's train run to resume (retry.py)


@dataclass
class Objective:
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

        def link(run_id: str) -> None:
            # linked at once: a trial that dies (or is failed by the heartbeat later) still
            # names its train run
            trial.set_user_attr(ATTR_RUN_ID, run_id)

        resumed = trial.user_attrs.get(ATTR_RESUME_RUN)  # study --resume: see retry.py
        try:
            config = build_config(self.space, values, quick=self.settings.quick)
            if resumed:
                result = pipeline.resume(
                    resumed, self.store, tags=tags, on_start=link, on_eval=on_eval, quiet=self.quiet
                )
            else:
                result = pipeline.run(
                    config,
                    self.store,
                    parent_run_id=self.settings.study_run_id,
                    tags=tags,
                    on_start=link,
                    on_eval=on_eval,
                    quiet=self.quiet,
                )
        except UsageError as err:  # the space makes an invalid run: stop, do not repeat it
            self.usage_error = err
            raise
        except BaseException as err:
            self.last_error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            raise
        trial.set_user_attr(ATTR_EVAL_RUN_IDS, list(result.eval_run_ids))
        missing = [n for n in names if n not in result.summary]
        if missing:
            raise KeyError(f"objective {missing} not in the run's summary {sorted(result.summary)}")
        out = [float(result.summary[n]) for n in names]
        return out[0] if len(out) == 1 else out


def trial_runs(tracker, study_name: str, number: int, status: str | None = None) -> list:
    """The train runs of trial ``number`` (normally one), found by their tags."""
    return tracker.search_runs(
        kind="train", status=status, tags={TAG_STUDY: study_name, TAG_TRIAL: str(number)}
    )
