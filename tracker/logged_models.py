"""Logged models (MLflow 3's LoggedModel entity) and the Model Registry.

A train run's final checkpoint becomes a logged model of the ``python_function``
(pyfunc) flavour in MLflow's ``loader_module`` form: the model's folder holds MLmodel
(signature, metadata), the requirements, an optional input example and a small data
folder; MLflow loads it by importing the named loader module (a plain runners module)
and calling its ``_load_pyfunc(data_path)``. So nothing is pickled, the runners never
import mlflow, and this package never imports the runners: it only carries the loader's
module name. The weights are not in the model's folder: the loader reads them from the
source run's ``checkpoint/`` (:func:`run_artifact_folder`), so they are stored once
(``pyfunc.log_model(artifacts=...)`` would copy them in).

Written with the explicit client (no fluent active run): create the logged model,
record it as the run's output, save the pyfunc folder locally, upload it, mark it
READY (FAILED when anything on the way raises).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterprobe.tracker.conventions import TAG_MODEL_ID
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import redact_uri, run_artifact_dir, sqlite_path


@dataclass(frozen=True)
class PyfuncModel:
    """What a logged pyfunc model is made of (see the module docstring)."""

    loader_module: str  # importable module with _load_pyfunc(data_path)
    data_dir: Path  # copied into the model's folder: small files only (configs, pointers)
    input_shape: tuple[int, ...]  # float32 tensor, -1 for the batch
    output_shape: tuple[int, ...]
    pip_requirements: Sequence[str]
    input_example: Any = None  # a float32 array of input_shape (batch 1), or None
    metadata: Mapping[str, Any] | None = None  # MLmodel metadata: free JSON-able facts


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    # Saving a model logs INFO lines (input example validation) on mlflow's own handler.
    loggers = [logging.getLogger(n) for n in ("mlflow.pyfunc", "mlflow.models", "mlflow.utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _signature(model: PyfuncModel):
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # Unnamed tensor specs: pyfunc then hands the loader a bare array, not {name: array}.
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, tuple(model.input_shape))]),
        outputs=Schema([TensorSpec(f32, tuple(model.output_shape))]),
    )


def log_pyfunc_model(
    tracker,
    run_id: str,
    model: PyfuncModel,
    *,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    step: int = 0,
) -> str:
    """Log ``model`` as a logged model of run ``run_id`` (its output at ``step``, its id in
    the run's tag ``clusterprobe.model_id``); return the model id. ``params`` appear on
    the model's page (the run's design choices)."""
    import mlflow.pyfunc
    from clusterprobe.tracker.tracking import _check_params, _check_tags
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    client = tracker.client
    experiment_id = tracker.get_run(run_id).info.experiment_id
    logged = tracker._retry(
        client.create_logged_model,
        experiment_id,
        name=name,
        source_run_id=run_id,
        params=_check_params(params),
        tags=_check_tags(tags or {}),
        model_type="pyfunc",
    )
    model_id = logged.model_id
    try:
        tracker._retry(client.log_outputs, run_id, [LoggedModelOutput(model_id, step=step)])
        with tempfile.TemporaryDirectory(prefix="clusterprobe-model-") as tmp, _quiet_mlflow():
            # Without an example (left out on purpose: see the caller) MLflow warns each time.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                str(local),
                loader_module=model.loader_module,
                data_path=str(model.data_dir),
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    model_uuid=model_id,
                    run_id=run_id,
                    model_id=model_id,
                ),
                signature=_signature(model),
                input_example=model.input_example,
                pip_requirements=list(model.pip_requirements),
                metadata=dict(model.metadata or {}),
            )
            tracker._retry(client.log_model_artifacts, model_id, str(local))
        tracker._retry(client.finalize_logged_model, model_id, LoggedModelStatus.READY)
        tracker._retry(client.set_tag, run_id, TAG_MODEL_ID, model_id)
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
        raise
    return model_id


def use_model(ctx, model_id: str) -> None:
    """Record on the open run ``ctx`` that it measures logged model ``model_id`` (a model
    input on its page) and attach its metrics logged with ``linked=True`` to the model."""
    from mlflow.entities import LoggedModelInput

    ctx.tracker._retry(
        ctx.tracker.client.log_inputs, ctx.run_id, models=[LoggedModelInput(model_id)]
    )
    ctx.model_id = model_id


def model_folder(tracker, model_id: str) -> Path | None:
    """Local folder of a logged model's files; None when they live remotely."""
    from clusterprobe.tracker.store import local_path

    return local_path(tracker.client.get_logged_model(model_id).artifact_location)


@contextlib.contextmanager
def run_artifact_folder(run_id: str, path: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """A run's artifact folder ``path`` as a local folder, for a loader running outside
    clusterprobe (``mlflow.pyfunc.load_model``): read in place from a local store (moved
    store folders included), downloaded to a temporary folder from a remote one.

    ``tracking_uri``: default MLflow's current one (``mlflow.set_tracking_uri`` or
    ``MLFLOW_TRACKING_URI``), the store the model was loaded from.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        artifact_uri = client.get_run(run_id).info.artifact_uri
    except MlflowException as err:
        raise FileNotFoundError(
            f"the model's weights are the checkpoint of run {run_id}, which the tracking URI "
            f"{redact_uri(uri)} does not hold ({err.message}); point MLflow at the store the "
            "model came from (mlflow.set_tracking_uri or MLFLOW_TRACKING_URI)"
        ) from None
    root = sqlite_path(uri).parent if uri.startswith("sqlite:") else None
    local = run_artifact_dir(artifact_uri, run_id, root)
    if local is not None:
        yield local / path
        return
    with tempfile.TemporaryDirectory(prefix="clusterprobe-checkpoint-") as tmp:
        yield Path(client.download_artifacts(run_id, path, dst_path=tmp))


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    model_id: str
    run_id: str


def check_model_name(name: str, flag: str = "--name") -> str:
    """``name`` if MLflow accepts it as a registered model name; else one UsageError line."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as err:
        raise UsageError(f"{flag} {name!r}: {err.message}") from None
    return name


def register_model(
    tracker,
    model_id: str,
    name: str,
    *,
    run_id: str,
    description: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> ModelVersionInfo:
    """A new version of registered model ``name`` (created when new) for logged model
    ``model_id`` of run ``run_id``; the registry points at the model, copying nothing."""
    from clusterprobe.tracker.tracking import _check_tags
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client = tracker.client
    check_model_name(name)
    try:
        tracker._retry(client.create_registered_model, name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # MLflow's SQL registry looks a "models:/<id>" source up through the process-global
    # tracking URI, not the client's (a TODO in its code): point it at this store meanwhile.
    with _use_tracking_uri(tracker.store.tracking_uri):
        version = tracker._retry(
            client.create_model_version,
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=_check_tags(tags or {}),
            description=description,
            model_id=model_id,
        )
    return ModelVersionInfo(name, str(version.version), model_id, run_id)
