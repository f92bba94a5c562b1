"""Datasets as MLflow run inputs: the run page lists them, and runs on the same data are
found by digest (``search_runs`` filter ``dataset.digest = '...'``).

A `DatasetInfo` is plain data that the runners build from their dataset record;
:func:`log_dataset` turns it into MLflow's dataset entity with a ``code`` source (the
data is made or read by clusterprobe's loaders, not by a file MLflow could resolve:
``mlflow.data.from_pandas(source='synthetic://...')`` fails for want of a resolver)
and logs it as an input of the run with MLflow's context tag (``train`` or ``eval``,
the words MLflow's own autologgers use).

MLflow keeps one dataset row per (experiment, name, digest), the first one logged: the
digest must therefore cover everything the profile shows, or a later run on other data
would be shown the first run's profile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DATASET_CONTEXTS = ("train", "eval")

# "float32[3,32,32]": an array column (one image); anything else is an MLflow scalar type.
_ARRAY_TYPE = re.compile(r"^(\w+)\[([\d,\s]+)\]$")
_ELEMENT_TYPES = {"float32": "float", "float64": "double", "int64": "long", "int32": "integer"}


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as a run input: what the run page shows about it."""

    name: str
    digest: str  # MLflow keeps at most 36 characters
    source: Mapping[str, str]  # where it comes from (a code source's tags)
    profile: Mapping[str, Any]  # shown key by key on the run page: counts, class lists
    columns: Mapping[str, str] = field(default_factory=dict)  # the schema: name -> type


def schema_json(columns: Mapping[str, str]) -> str | None:
    """MLflow's column-spec schema JSON for ``columns`` (name -> type); None when empty."""
    if not columns:
        return None
    from mlflow.types.schema import Array, ColSpec, Schema

    specs = []
    for name, type_ in columns.items():
        match = _ARRAY_TYPE.match(type_)
        if match:
            kind: Any = _ELEMENT_TYPES.get(match.group(1), match.group(1))
            for _ in match.group(2).split(","):
                kind = Array(kind)
            specs.append(ColSpec(kind, name))
        else:
            specs.append(ColSpec(type_, name))
    return json.dumps({"mlflow_colspec": Schema(specs).to_dict()})


def dataset_entity(info: DatasetInfo):
    """The MLflow ``Dataset`` entity of ``info`` (a ``code`` source)."""
    from mlflow.entities import Dataset

    return Dataset(
        name=info.name,
        digest=info.digest,
        source_type="code",
        source=json.dumps({"tags": dict(info.source)}, sort_keys=True),
        schema=schema_json(info.columns),
        profile=json.dumps(dict(info.profile), default=str),
    )


def log_dataset(ctx, info: DatasetInfo, context: str) -> None:
    """Log ``info`` as an input of the open run ``ctx`` (context ``train`` or ``eval``) and
    remember it on ``ctx``, so metrics logged with ``linked=True`` name it."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if context not in DATASET_CONTEXTS:
        raise ValueError(f"dataset context {context!r}: choose one of {DATASET_CONTEXTS}")
    given = DatasetInput(dataset_entity(info), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    ctx.tracker._retry(ctx.tracker.client.log_inputs, ctx.run_id, datasets=[given])
    ctx.dataset = (info.name, info.digest)
