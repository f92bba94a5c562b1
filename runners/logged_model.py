"""A train run's final checkpoint as an MLflow logged model, and the loader MLflow calls.

Logging (:func:`log_train_model`, called by ``pipeline`` after the final checkpoint is
stored; :func:`log_stored_model` for a run stored before logged models existed): a
pyfunc model in MLflow's ``loader_module`` form (``tracker.logged_models``) whose data
folder holds one small pointer file (cv.MODEL_POINTER: the train run, its checkpoint
folder, the weights' sha256). The weights stay where they are, in the run's
``checkpoint/``: stored once. Beside it: a signature (float32 [-1, 3, H, W] -> [-1,
classes]), the model config and input normalisation as metadata, pip requirements
listed from the installed versions (never inferred), and an input example only up
to EXAMPLE_MAX_PX (see there).

Loading (MLflow imports this module by name; it imports neither mlflow nor the
training code at import time): ``_load_pyfunc(data_path)`` reads the pointer, fetches
the checkpoint through the tracker (in place from a local store, downloaded from a
remote one), checks its sha256 and rebuilds the model with ``models.load_checkpoint``,
the loader clusterprobe itself uses. ``predict`` maps float32 images [N, 3, H, W],
normalised as the training data, to logits [N, classes] on the CPU. The store the
model was loaded from must be MLflow's current tracking URI (as it is for
``mlflow.pyfunc.load_model("models:/<id>")``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
from clusterprobe.tracker import conventions as cv

# An input example is written twice by MLflow (input_example.json and an indented
# serving_input_example.json). Rounded to 1/16 (short JSON), one 32 px image costs
# ~80 KB; a 64 px one ~320 KB, more than the whole budget of 200 KB per logged model,
# so larger images get the signature alone.
EXAMPLE_MAX_PX = 32
EXAMPLE_STEP = 1 / 16  # exactly representable in float32: short decimal JSON
# What the loader imports; clusterprobe itself must be installed where the model is served.
REQUIREMENTS = ("clusterprobe", "torch", "torchvision", "timm", "safetensors", "numpy")
PREDICT_BATCH = 256


def pip_requirements() -> list[str]:
    """``name==version`` of the loader's packages as installed (local tags such as
    ``+cpu`` dropped: not on PyPI)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def example_input(data) -> np.ndarray | None:
    """One eval image as a float32 batch [1, 3, H, W], rounded to EXAMPLE_STEP; None above
    EXAMPLE_MAX_PX."""
    if data.image_size > EXAMPLE_MAX_PX or len(data.eval) == 0:
        return None
    image = np.asarray(data.eval[0][0], dtype=np.float64)[None]
    return (np.round(image / EXAMPLE_STEP) * EXAMPLE_STEP).astype(np.float32)


def log_train_model(
    tracker,
    train_run_id: str,
    cfg: Mapping,
    *,
    weights_sha256: str,
    params: Mapping[str, str],
    step: int,
    example: np.ndarray | None = None,
    normalisation: Mapping | None = None,
) -> str:
    """Log the final checkpoint of train run ``train_run_id`` (built from ``cfg``, a
    ``models.model_config``; already stored in its ``checkpoint/``) as its logged model;
    return the model id."""
    from clusterprobe.runners.checkpoints import artifact_dir
    from clusterprobe.tracker.logged_models import PyfuncModel, log_pyfunc_model

    size = int(cfg["image_size"])
    pointer = {
        "run_id": train_run_id,
        "artifact_path": artifact_dir(None),
        "weights_sha256": weights_sha256,
    }
    about = {
        "train_run_id": train_run_id,
        "checkpoint": f"runs:/{train_run_id}/{artifact_dir(None)}",
        "weights_sha256": weights_sha256,
        "model_config": dict(cfg),
        "input": f"float32 [N, 3, {size}, {size}], normalised as the training data",
        "normalisation": dict(normalisation) if normalisation else None,
        "output": f"logits [N, {cfg['num_classes']}]",
    }
    with tempfile.TemporaryDirectory(prefix="clusterprobe-pointer-") as tmp:
        folder = Path(tmp) / "clusterprobe"
        folder.mkdir()
        (folder / cv.MODEL_POINTER).write_text(json.dumps(pointer, indent=1) + "\n")
        model = PyfuncModel(
            loader_module=__name__,
            data_dir=folder,
            input_shape=(-1, 3, size, size),
            output_shape=(-1, int(cfg["num_classes"])),
            pip_requirements=pip_requirements(),
            input_example=example,
            metadata={"clusterprobe": about},
        )
        return log_pyfunc_model(
            tracker, train_run_id, model, name=cv.LOGGED_MODEL_NAME, params=params, step=step
        )


def log_stored_model(tracker, train_run) -> str:
    """Log the logged model of a train run stored before they existed, from its stored
    final checkpoint (no input example: the data is not loaded). UsageError where the run
    stored no checkpoint."""
    from clusterprobe.runners.checkpoints import stored_checkpoint
    from clusterprobe.runners.models import checkpoint_config
    from clusterprobe.runners.weights import file_sha256

    run_id = train_run.info.run_id
    folder = stored_checkpoint(tracker, run_id)
    params = dict(train_run.data.params)
    return log_train_model(
        tracker,
        run_id,
        checkpoint_config(folder),
        weights_sha256=file_sha256(folder / cv.CHECKPOINT_WEIGHTS),
        params=params,
        step=int(params.get("epochs") or 0),
    )


# --- the loader MLflow calls ----------------------------------------------------------------


class LoadedModel:
    """What ``mlflow.pyfunc.load_model`` wraps: a clusterprobe checkpoint on the CPU."""

    def __init__(self, model, cfg: dict):
        self.model, self.cfg = model, cfg

    def predict(self, model_input, params=None) -> np.ndarray:
        """float32 images [N, 3, H, W] (normalised as the training data) -> logits [N, C]."""
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got an array of shape {x.shape}")
        out = []
        with torch.no_grad():
            for i in range(0, len(x), PREDICT_BATCH):
                out.append(self.model(torch.from_numpy(x[i : i + PREDICT_BATCH])).numpy())
        width = int(self.cfg["num_classes"])
        return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


def _load_pyfunc(data_path: str) -> LoadedModel:
    """MLflow's entry point: the model a pointer folder names (see the module docstring)."""
    from clusterprobe.runners import models
    from clusterprobe.runners.weights import file_sha256
    from clusterprobe.tracker.logged_models import run_artifact_folder

    pointer = json.loads((Path(data_path) / cv.MODEL_POINTER).read_text())
    run_id = pointer["run_id"]
    with run_artifact_folder(run_id, pointer["artifact_path"]) as folder:
        weights = folder / cv.CHECKPOINT_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"train run {run_id} has no stored checkpoint ({weights})")
        if file_sha256(weights) != pointer["weights_sha256"]:
            raise ValueError(
                f"the checkpoint of train run {run_id} is not the one this model was logged "
                f"with (sha256 differs from {pointer['weights_sha256'][:12]}...)"
            )
        model = models.load_checkpoint(folder, "cpu")
        return LoadedModel(model, models.checkpoint_config(folder))
