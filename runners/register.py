"""Register a train run's logged model in the MLflow Model Registry.

``clusterprobe register RUN_ID --name NAME`` and ``study --register-best NAME`` both
come here. RUN_ID is a train run, or an eval run of its final checkpoint (the logged
model is the final checkpoint; an eval run of an earlier one measured another model).
A train run stored before logged models existed gets its logged model first, from its
stored checkpoint (no weights are copied either way). Every check runs before
anything is written: bad input is one UsageError line and stores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError


def model_train_run(tracker, run_id: str):
    """The train run whose logged model RUN_ID names: itself, or the parent of an eval run
    of its final checkpoint. UsageError for anything else."""
    run = tracker.open_run(run_id)
    kind = run.data.tags.get(cv.TAG_KIND) or "non-clusterprobe"
    if kind == "train":
        return run
    parent_id = run.data.tags.get(cv.TAG_PARENT)
    parent = tracker.get_run(parent_id) if kind == "eval" and parent_id else None
    parent_kind = parent.data.tags.get(cv.TAG_KIND) if parent is not None else None
    if parent_kind != "train":
        what = f"an eval run of a {parent_kind} run" if parent is not None else f"a {kind} run"
        raise UsageError(
            f"RUN_ID {run_id!r} is {what}; give a train run, or an eval run of a train "
            "run's final checkpoint"
        )
    measured = run.data.params.get(cv.PARAM_CHECKPOINT_EPOCH)
    final = parent.data.params.get("epochs")
    if measured != final:
        raise UsageError(
            f"RUN_ID {run_id!r} measured the checkpoint of epoch {measured}, not the final "
            f"model (epoch {final}) of train run {parent.info.run_id}, the one it logged; "
            f"register {parent.info.run_id} for that"
        )
    return parent


def register_run(
    tracker,
    run_id: str,
    name: str,
    *,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
):
    """A new version of registered model ``name`` for the logged model of RUN_ID's train
    run; returns ``tracker.logged_models.ModelVersionInfo``."""
    from clusterprobe.runners.checkpoints import stored_checkpoint
    from clusterprobe.runners.logged_model import log_stored_model
    from clusterprobe.tracker.logged_models import check_model_name, register_model

    check_model_name(name)
    train = model_train_run(tracker, run_id)
    train_id = train.info.run_id
    model_id = train.data.tags.get(cv.TAG_MODEL_ID)
    if model_id is None:
        stored_checkpoint(tracker, train_id)  # UsageError before writing: nothing to log
        model_id = log_stored_model(tracker, train)
    text = description or f"{train.info.run_name or train_id} (train run {train_id})"
    return register_model(tracker, model_id, name, run_id=train_id, description=text, tags=tags)
