"""Shared fixtures: fresh stores, and fresh PostgreSQL databases when a server answers.

* ``store``: a fresh, empty local `Store` in ``tmp_path / "mlruns"``. The MLflow schema
  (a few seconds of migrations) is built once per session in a template folder and
  copied; the first Tracker on the copy relocates it, which the relocation tests cover.
* ``postgres_url``: ``postgresql+psycopg2://postgres@127.0.0.1:5432/<fresh db>``, created
  for the test and dropped after it. Server: ``$CLUSTERPROBE_POSTGRES_URL`` (an admin URL,
  default ``postgresql://postgres@127.0.0.1:5432/postgres``). Skips with the reason
  when no server answers, and FAILS instead when ``CLUSTERPROBE_REQUIRE_POSTGRES=1``
  (CI machines that have PostgreSQL set it so the backend cannot silently go untested).
* ``shared_breeds``: the BREEDS hierarchy files in ``../shared/breeds``; skips where they
  are absent, FAILS instead when ``CLUSTERPROBE_REQUIRE_SHARED=1`` (set by CI).
* ``postgres_database``: session-scoped factory behind ``postgres_url``; call it for a
  database that lives longer than one test (e.g. in a class-scoped fixture).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from clusterprobe.tracker.store import Store, resolve_store

# Caches the code fills by default (decoded images, BREEDS files) go to a folder of this
# session, inherited by the CLI subprocesses, never to the user's own.
os.environ["CLUSTERPROBE_CACHE"] = tempfile.mkdtemp(prefix="clusterprobe-test-cache-")
atexit.register(shutil.rmtree, os.environ["CLUSTERPROBE_CACHE"], ignore_errors=True)

POSTGRES_ADMIN_URL = os.environ.get(
    "CLUSTERPROBE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("CLUSTERPROBE_REQUIRE_POSTGRES") == "1"
# The shared test data beside the repository (never copied into it): BREEDS hierarchy files.
SHARED_BREEDS = Path(__file__).resolve().parents[2] / "shared" / "breeds"
REQUIRE_SHARED = os.environ.get("CLUSTERPROBE_REQUIRE_SHARED") == "1"


def _admin_connection():
    import psycopg2

    u = urlparse(POSTGRES_ADMIN_URL)
    con = psycopg2.connect(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname=(u.path or "/postgres").lstrip("/") or "postgres",
        connect_timeout=3,
    )
    con.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return con


def _database_url(name: str) -> str:
    u = urlparse(POSTGRES_ADMIN_URL)
    auth = u.username or "postgres"
    if u.password:
        auth += f":{u.password}"
    return f"postgresql+psycopg2://{auth}@{u.hostname or '127.0.0.1'}:{u.port or 5432}/{name}"


@pytest.fixture(scope="session")
def shared_breeds() -> Path:
    """The shared BREEDS folder; skips without it, and FAILS instead when
    ``CLUSTERPROBE_REQUIRE_SHARED=1`` (CI, where the shared folder is part of the setup)."""
    if not (SHARED_BREEDS / "breeds_splits_derived.json").is_file():
        reason = f"BREEDS fixture not found at {SHARED_BREEDS} (the shared folder beside the repo)"
        if REQUIRE_SHARED:
            pytest.fail(f"CLUSTERPROBE_REQUIRE_SHARED=1 but {reason}")
        pytest.skip(reason)
    return SHARED_BREEDS


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: small models on a shared 2-core machine spin-wait
    between two busy threads (measured several times slower under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def postgres_database():
    """Factory: ``postgres_database() -> URL`` of a fresh database, dropped at session end."""
    try:
        admin = _admin_connection()
    except Exception as err:
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {' '.join(str(err).split())}"
        if REQUIRE_POSTGRES:
            pytest.fail(f"CLUSTERPROBE_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    created: list[str] = []

    def make() -> str:
        name = f"clusterprobe_test_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _database_url(name)

    make.drop = lambda url: _drop(admin, url.rsplit("/", 1)[1], created)
    yield make
    for name in list(created):
        _drop(admin, name, created)
    admin.close()


def _drop(admin, name: str, created: list[str]) -> None:
    if name not in created:
        return
    with admin.cursor() as cur:
        # WITH (FORCE) (PostgreSQL >= 13) ends connections a pool may still hold.
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    created.remove(name)


@pytest.fixture
def postgres_url(postgres_database) -> str:
    """A fresh PostgreSQL database for this test (dropped after it)."""
    url = postgres_database()
    yield url
    postgres_database.drop(url)


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory) -> Store:
    from clusterprobe.tracker.schema import prepare_store

    template = resolve_store(tmp_path_factory.mktemp("template") / "mlruns")
    prepare_store(template)
    return template


@pytest.fixture
def store(_template_store, tmp_path, monkeypatch) -> Store:
    """A fresh, empty local store in ``tmp_path / "mlruns"`` (schema copied, not rebuilt)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = tmp_path / "mlruns"
    shutil.copytree(_template_store.root, target)
    return resolve_store(target)


# --- pipeline: one tiny end-to-end run shared by test_pipeline/test_run_cli/test_rescore ---
# 4 superclasses x 2 subclasses, 12 train / 8 eval images each, 16 px, resnet18, 2 epochs
# (epoch 1 evaluated too, so intermediate checkpoints are covered): a few seconds on 2 cores.
TINY_RUN = dict(
    classes=4,
    subclasses=2,
    train_per_subclass=12,
    eval_per_subclass=8,
    image_size=16,
    epochs=2,
    eval_epochs=(1,),
    batch_size=32,
    probe_per_subclass=6,
    device="cpu",
)


# The smallest run that trains and records: 2 x 2 subclasses, 8 train / 4 eval images
# each, 16 px, batch 8 (4 optimiser steps an epoch), factor 1, no heavy artifacts. Tests of one
# training option take it and change what they test.
ONE_EPOCH_RUN = dict(
    classes=2,
    subclasses=2,
    train_per_subclass=8,
    eval_per_subclass=4,
    image_size=16,
    epochs=1,
    batch_size=8,
    factors=(1,),
    save=(),
    device="cpu",
)


# The same at 32 px, for the models that need it (ViT patches, ConvNeXt's stem): 2 x 2
# subclasses, 6 train / 6 eval images each, batch 12, no heavy artifacts.
ONE_EPOCH_32PX_RUN = {
    **{k: v for k, v in ONE_EPOCH_RUN.items() if k != "factors"},
    "train_per_subclass": 6,
    "eval_per_subclass": 6,
    "probe_per_subclass": 2,
    "image_size": 32,
    "batch_size": 12,
}


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny RunConfig; ``.replace(...)`` it for variants."""
    from clusterprobe.runners.config import RunConfig

    return RunConfig(**TINY_RUN)


@pytest.fixture(scope="session")
def tiny_run(_template_store, tmp_path_factory, tiny_config):
    """``(store, config, RunResult)`` of one tiny `pipeline.run` in its own session store."""
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker.store import local_store

    target = tmp_path_factory.mktemp("pipeline") / "mlruns"
    shutil.copytree(_template_store.root, target)
    store = local_store(target)  # not resolve_store: ignore any MLFLOW_TRACKING_URI
    result = pipeline.run(tiny_config, store, quiet=True)
    return store, tiny_config, result


# --- a 3-trial, two-objective study (Pareto front) of tiny runs that keep their plots and
# reports (resnet10t, 16 px, 1 epoch): the reports' and the browser's study. ~15 s on 2 cores.
TINY_STUDY_SPACE = """
[fixed]
arch = "resnet10t"
classes = 4
subclasses = 2
train_per_subclass = 10
eval_per_subclass = 8
image_size = 16
epochs = 1
batch_size = 40
probe_per_subclass = 6
device = "cpu"
save = ["plots"]

[params.lr]
type = "float"
low = 0.01
high = 0.3
log = true

[params.taps]
choices = ["blocks", "stages"]
"""


@pytest.fixture(scope="session")
def tiny_study(_template_store, tmp_path_factory):
    """``(store, StudyOutcome)`` of study 'tiny3' (objectives best_ami, best_probe_acc)."""
    from clusterprobe.runners.study import run_study
    from clusterprobe.runners.study.options import StudyOptions
    from clusterprobe.tracker.store import local_store

    root = tmp_path_factory.mktemp("study") / "mlruns"
    shutil.copytree(_template_store.root, root)
    space = root.parent / "tiny.toml"
    space.write_text(TINY_STUDY_SPACE)
    objectives = ("best_ami:max", "best_probe_acc:max")
    opts = StudyOptions(
        name="tiny3", trials=3, space=str(space), objectives=objectives, seed=0, quiet=True
    )
    store = local_store(root)
    return store, run_study(opts, store)


# --- pretrained weights: a Hugging Face cache in timm's layout, and no network -------------
# timm's own tiny test models (~0.3-0.4M parameters, 160 px, mean/std 0.5, crop 0.95,
# bicubic: a data config unlike ImageNet's defaults), with random-init weights.
HUB_MODELS = ("test_convnext.r160_in1k", "test_vit.r160_in1k")


def write_hub_weights(cache: Path, name: str, seed: int = 0) -> Path:
    """Random-init weights of timm model ``name`` where huggingface_hub caches its repository
    (``models--timm--NAME/refs/main`` -> ``snapshots/COMMIT/model.safetensors``); the file."""
    import hashlib

    import timm
    import torch
    from safetensors.torch import save_file

    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = timm.create_model(name).state_dict()
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="session")
def _hub_folder(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    for name in HUB_MODELS:
        write_hub_weights(cache, name)
    return cache


@pytest.fixture
def hf_cache(_hub_folder, tmp_path, monkeypatch) -> Path:
    """HF_HUB_CACHE pointing at a cache holding HUB_MODELS (HF_HOME at an empty folder)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_folder))
    return _hub_folder


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection is refused and recorded; the test fails after if
    anything tried (even where the code under test swallowed the refusal)."""
    import socket

    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"no network in tests (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"
