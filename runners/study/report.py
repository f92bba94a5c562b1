"""What a study ended with: trial counts, its best trial(s), and how to see them."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

from clusterprobe.runners.study.settings import read_settings
from clusterprobe.runners.study.storage import redact
from clusterprobe.tracker.conventions import ATTR_RUN_ID
from clusterprobe.tracker.store import Store


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
    registered: dict | None = None  # --register-best: name, version, trial, run_id


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


def registry_pick(best: list[dict], objectives) -> dict | None:
    """The trial ``--register-best`` registers: the best trial; with several objectives,
    the trial of the Pareto front best on the FIRST objective (ties: the lowest trial
    number), so the first ``--objective`` is the one that decides."""
    if not best:
        return None
    name, direction = objectives[0]
    sign = -1.0 if direction == "maximize" else 1.0
    return min(best, key=lambda b: (sign * b["values"][name], b["number"]))


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
    if outcome.registered:
        r = outcome.registered
        lines.append(
            f"registered {r['name']} version {r['version']}: trial {r['trial']}'s model "
            f"(train run {r['run_id']}), models:/{r['name']}/{r['version']}"
        )
    lines.append(f"dashboard: {dashboard_command(outcome.storage, store)}")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)
