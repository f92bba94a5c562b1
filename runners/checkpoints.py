"""A train run's stored checkpoints: logged while it trains, loaded to measure it again.

Layout (tracker.conventions): the final model in ``checkpoint/``, a measured
intermediate epoch N in ``checkpoints/epoch_NNN/``; each holds the safetensors
state_dict and the model config that rebuilds it without network
(``models.save_checkpoint`` / ``models.load_checkpoint``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError


def artifact_dir(epoch: int | None = None) -> str:
    """The artifact folder of the final checkpoint (``epoch=None``) or of epoch ``epoch``."""
    return (
        cv.ART_CHECKPOINT_DIR if epoch is None else cv.ART_EPOCH_CHECKPOINT_DIR.format(epoch=epoch)
    )


def log_checkpoint(ctx, model, cfg: dict, epoch: int | None = None) -> str:
    """Store ``model`` (built from ``cfg``, a ``models.model_config``) on the open run ``ctx``;
    return the sha256 of the weights file (what its logged model checks on loading)."""
    from clusterprobe.runners import models
    from clusterprobe.runners.weights import file_sha256

    with tempfile.TemporaryDirectory(prefix="clusterprobe-ckpt-") as tmp:
        paths = models.save_checkpoint(model, cfg, tmp)
        for path in paths:
            ctx.log_artifact(str(path), artifact_dir(epoch))
        return file_sha256(next(p for p in paths if p.name == cv.CHECKPOINT_WEIGHTS))


def stored_checkpoint(tracker, train_run_id: str, epoch: int | None = None) -> Path:
    """The local folder of a train run's checkpoint; UsageError when it has none."""
    where = artifact_dir(epoch)
    try:
        folder = tracker.artifact_path(train_run_id, where)
    except FileNotFoundError:
        folder = None
    if folder is None or not (Path(folder) / cv.CHECKPOINT_WEIGHTS).is_file():
        raise UsageError(
            f"train run {train_run_id} has no stored checkpoint ({where}/{cv.CHECKPOINT_WEIGHTS});"
            " rerun it with --save including checkpoint (the default)"
        )
    root = tracker.artifact_dir(train_run_id)
    if root is not None:  # the sha256 recorded when the run was written (remote: not checked)
        from clusterprobe.tracker.checksums import verify_tree

        verify_tree(root, Path(folder), train_run_id)
    return Path(folder)


def load_stored_model(tracker, train_run_id: str, device, epoch: int | None = None):
    """``(model in eval mode on device, its model config)`` of a stored checkpoint; a
    corrupt file or a config this timm cannot build is one UsageError line."""
    from clusterprobe.runners import models

    folder = stored_checkpoint(tracker, train_run_id, epoch)
    try:
        return models.load_checkpoint(folder, device), models.checkpoint_config(folder)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(
            f"train run {train_run_id}: checkpoint does not load ({type(err).__name__}: {err})"
        ) from None


def saved_epochs(tracker, train_run_id: str, epochs: int) -> list[int] | None:
    """The epochs (of 1..``epochs``) whose checkpoint a train run stored, the final one
    included; None where the artifacts are not local files (never downloaded for this)."""
    root = tracker.artifact_dir(train_run_id)
    if root is None:
        return None
    found = [
        e for e in range(1, epochs) if (root / artifact_dir(e) / cv.CHECKPOINT_WEIGHTS).is_file()
    ]
    if (root / artifact_dir(None) / cv.CHECKPOINT_WEIGHTS).is_file():
        found.append(epochs)
    return found
