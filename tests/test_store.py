"""Store resolution: flag > $MLFLOW_TRACKING_URI > --store > ./mlruns, URI schemes, args."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import (
    ENV_ARTIFACT_ROOT,
    ENV_TRACKING_URI,
    add_store_arguments,
    redact_uri,
    resolve_store,
    store_from_args,
    store_lock,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_TRACKING_URI, raising=False)
    monkeypatch.delenv(ENV_ARTIFACT_ROOT, raising=False)
    monkeypatch.chdir(tmp_path)


def test_default_is_absolute_mlruns(tmp_path):
    store = resolve_store()
    root = tmp_path / "mlruns"
    assert store.root == root and store.root.is_absolute()
    assert store.tracking_uri == f"sqlite:///{root}/mlflow.db"
    assert store.tracking_uri.startswith("sqlite:////")  # four slashes: absolute path
    assert store.artifact_root == str(root / "artifacts")
    assert store.optuna_url == f"sqlite:///{root}/optuna.db"
    assert store.backend == "sqlite" and store.is_local
    assert store.db_path == root / "mlflow.db"
    assert not root.exists()  # resolving creates nothing


def test_store_flag_relative_made_absolute(tmp_path):
    store = resolve_store("runs/a")
    assert store.root == tmp_path / "runs" / "a"


def test_env_beats_store_flag_and_flag_beats_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_TRACKING_URI, f"sqlite:///{tmp_path}/env/mlflow.db")
    assert resolve_store().root == tmp_path / "env"
    assert resolve_store("flagdir").root == tmp_path / "env"
    assert "takes precedence over --store" in capsys.readouterr().err
    flag = resolve_store("flagdir", tracking_uri=f"sqlite:///{tmp_path}/flag/x.db")
    assert flag.root == tmp_path / "flag"
    assert flag.db_path == tmp_path / "flag" / "x.db"
    assert flag.optuna_url == f"sqlite:///{tmp_path}/flag/optuna.db"


def test_relative_sqlite_uri_is_made_absolute(tmp_path):
    store = resolve_store(tracking_uri="sqlite:///mlruns/mlflow.db")
    assert store.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert store == resolve_store("mlruns")


def test_server_uri_has_no_root(monkeypatch):
    store = resolve_store(tracking_uri="http://127.0.0.1:5000")
    assert store.root is None and store.optuna_url is None
    assert store.artifact_root is None  # the server's own default
    assert store.backend == "server" and not store.is_local
    monkeypatch.setenv(ENV_ARTIFACT_ROOT, "s3://bucket/clusterprobe")
    assert resolve_store(tracking_uri="https://x.org").artifact_root == "s3://bucket/clusterprobe"
    # the flag beats the environment
    assert resolve_store(tracking_uri="https://x.org", artifact_root="shared").artifact_root == str(
        Path.cwd() / "shared"
    )


def test_postgres_uri_names_the_installed_driver(tmp_path):
    store = resolve_store(tracking_uri="postgresql://postgres@127.0.0.1:5432/db")
    assert store.tracking_uri == "postgresql+psycopg2://postgres@127.0.0.1:5432/db"
    assert resolve_store(tracking_uri="postgres://u@h/db").tracking_uri.startswith(
        "postgresql+psycopg2://"
    )
    explicit = "postgresql+psycopg2://u@h/db"
    assert resolve_store(tracking_uri=explicit).tracking_uri == explicit
    # a bare database keeps artifacts in the local store folder unless told otherwise
    assert store.root is None and store.backend == "database"
    assert store.artifact_root == str(tmp_path / "mlruns" / "artifacts")


@pytest.mark.parametrize(
    "uri", ["file:///tmp/mlruns", "/tmp/mlruns", "ftp://h/x", "sqlite:///:memory:"]
)
def test_unsupported_uri_is_a_usage_error(uri):
    with pytest.raises(UsageError) as err:
        resolve_store(tracking_uri=uri)
    assert uri in str(err.value) and "\n" not in str(err.value)


def test_store_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        resolve_store("f")


def test_arguments_round_trip(tmp_path):
    parser = argparse.ArgumentParser()
    add_store_arguments(parser)
    args = parser.parse_args(["--store", "s"])
    assert store_from_args(args).root == tmp_path / "s"
    args = parser.parse_args(["--tracking-uri", "http://h:1", "--artifact-root", "/shared/a"])
    store = store_from_args(args)
    assert (store.tracking_uri, store.artifact_root) == ("http://h:1", "/shared/a")
    assert store_from_args(parser.parse_args([])).root == tmp_path / "mlruns"


def test_store_lock_is_exclusive_across_processes(tmp_path):
    store = resolve_store("locked")
    code = (
        "import fcntl,sys; f=open(sys.argv[1],'a+');"
        "fcntl.flock(f.fileno(), fcntl.LOCK_EX|fcntl.LOCK_NB)"
    )
    with store_lock(store):
        held = subprocess.run([sys.executable, "-c", code, str(store.root / ".lock")], check=False)
    free = subprocess.run([sys.executable, "-c", code, str(store.root / ".lock")], check=False)
    assert held.returncode != 0 and free.returncode == 0


def test_store_module_does_not_import_mlflow():
    code = (
        "import sys, clusterprobe.tracker, clusterprobe.tracker.store;"
        "clusterprobe.tracker.resolve_store('x');"
        "sys.exit('mlflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_passwords_stay_out_of_messages():
    store = resolve_store(tracking_uri="postgresql://me:s3cret@db.example:5432/mlflow")
    assert "s3cret" not in repr(store) and "s3cret" not in str(store.describe())
    assert "s3cret" in store.tracking_uri  # the real URI still connects
    assert redact_uri("http://h:5000/a@b") == "http://h:5000/a@b"
    with pytest.raises(UsageError) as err:
        resolve_store(tracking_uri="ftp://me:s3cret@h/x")
    assert "s3cret" not in str(err.value)
