"""A password in the tracking URI is never printed or stored; a run through a real
`mlflow server` on PostgreSQL, then SQL over that server's backend database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SECRET = "S3cretPw-not-for-logs"
TINY = (
    "--arch resnet10t --classes 2 --subclasses 2 --train-per-subclass 6 --eval-per-subclass 4 "
    "--image-size 16 --epochs 1 --batch-size 24 --factors 1 --threads 1 --device cpu --quiet "
    "--save embeddings,distances"
).split()
ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clusterprobe.runners.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_password(url: str) -> str:
    # The test server trusts local connections, so any password connects: a real one
    # would be read from ~/.pgpass or PGPASSWORD by the commands printed for the user.
    head, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{head}://{user}:{SECRET}@{host}"


def test_a_password_in_the_uri_is_never_printed_or_stored(postgres_url, tmp_path):
    url = with_password(postgres_url)
    store = tmp_path / "mlruns"  # a bare database keeps its artifacts in the local folder
    run = cli("run", *TINY, "--tracking-uri", url, "--store", str(store))
    assert run.returncode == 0, run.stderr
    ui_line = run.stdout.strip().splitlines()[-1]
    assert ui_line.startswith("open the MLflow UI: mlflow ui --backend-store-uri")
    assert postgres_url.split("://", 1)[1] in ui_line  # user@host, the password dropped
    outputs = [run.stdout, run.stderr]
    for argv in (
        ["ui", "--print-command"],
        ["query", "layer_profile", "--format", "csv"],
        ["sql", "--setup"],
        ["rescore", "0123abcd"],  # an error message naming the store
    ):
        got = cli(*argv, "--tracking-uri", url, timeout=300)
        outputs += [got.stdout, got.stderr]
    assert "0123abcd" in outputs[-1] and "***" in outputs[-1]
    for text in outputs:
        assert SECRET not in text
    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs(client.search_experiments()[0].experiment_id.split())
    assert len(runs) == 2
    for r in runs:
        for value in [*r.data.params.values(), *r.data.tags.values()]:
            assert SECRET not in value
    files = [p for p in Path(store).rglob("*") if p.is_file()]
    assert files and not any(SECRET.encode() in p.read_bytes() for p in files)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_through_an_mlflow_server_on_postgresql_then_query_its_backend(postgres_url, tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres_url]
        + ["--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped with its workers below
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not answer on port {port}")
                time.sleep(1)
        run = cli("run", *TINY, "--tracking-uri", f"http://127.0.0.1:{port}")
        assert run.returncode == 0, run.stderr
        train_id = next(ln.split()[-1] for ln in run.stdout.splitlines() if "train run:" in ln)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    # The server is gone: SQL reads its backend database directly.
    got = cli("query", "layer_profile", "--tracking-uri", postgres_url, "--format", "csv")
    assert got.returncode == 0, got.stderr
    assert "resnet10t" in got.stdout  # per-layer rows, read from the artifacts the run wrote
    runs = cli(
        "sql",
        "SELECT run_id, kind, status FROM runs ORDER BY kind",
        "--tracking-uri",
        postgres_url,
        "--format",
        "csv",
    )
    assert runs.returncode == 0, runs.stderr
    lines = runs.stdout.strip().splitlines()
    assert lines[1:] and all(ln.endswith(",FINISHED") for ln in lines[1:])
    assert any(ln.startswith(f"{train_id},train") for ln in lines)
