"""`clusterprobe ui`: open the MLflow UI on the store.

Opens the store once through the Tracker (creates the schema, rewrites artifact
paths if the folder moved), then replaces this process with ``mlflow ui`` bound
to 127.0.0.1 unless ``--host`` says otherwise. The store URI reaches ``mlflow ui`` by
its environment (``MLFLOW_BACKEND_STORE_URI``), not its command line, where ``ps``
would show a database password. A server URI already is a UI: its address is
printed and nothing is started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import (
    Store,
    add_store_arguments,
    redact_uri,
    store_from_args,
    uri_without_password,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1, this machine only)",
    )
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (default: 1)"
    )
    parser.add_argument(
        "--print-command",
        action="store_true",
        help="print the mlflow command instead of starting it",
    )


ENV_BACKEND_STORE_URI = "MLFLOW_BACKEND_STORE_URI"  # mlflow ui's --backend-store-uri


def ui_argv(store: Store, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow ui`` command line for ``store``; the store URI goes in `ui_env`."""
    argv = [sys.executable, "-m", "mlflow", "ui"]
    if store.artifact_root:
        # Runs keep absolute artifact locations; the UI reads them directly, no proxy.
        argv += ["--default-artifact-root", store.artifact_root, "--no-serve-artifacts"]
    argv += ["--host", host, "--port", str(port), "--workers", str(workers)]
    return argv


def ui_env(store: Store) -> dict[str, str]:
    """The environment of ``mlflow ui``: ours plus the store URI (password included)."""
    return {**os.environ, ENV_BACKEND_STORE_URI: store.tracking_uri}


def main(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    if store.backend == "server":
        print(f"this store is an MLflow server; its UI is at {redact_uri(store.tracking_uri)}")
        return 0
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: use a port between 1 and 65535")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: use 1 or more")
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(store)  # schema once, relocation of a moved folder, before the server
    from clusterprobe.tracker.doctor import orphan_note

    note = orphan_note(len(tracker.orphan_runs()))  # read-only: said, never marked
    if note:
        print(f"clusterprobe ui: note: {note}", file=sys.stderr)
    argv = ui_argv(store, args.host, args.port, args.workers)
    if args.print_command:
        uri = shlex.quote(uri_without_password(store.tracking_uri))
        print(f"{ENV_BACKEND_STORE_URI}={uri} ", end="")
        print(shlex.join(argv))
        return 0
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    where = store.root if store.root is not None else redact_uri(store.tracking_uri)
    print(f"MLflow UI for {where}: http://{shown}:{args.port}  (Ctrl-C stops it)", flush=True)
    sys.stderr.flush()
    os.execve(argv[0], argv, ui_env(store))
    return 0  # not reached
