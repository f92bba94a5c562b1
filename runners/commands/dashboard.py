"""`clusterprobe dashboard`: optuna-dashboard on the study storage of a store.

Binds to 127.0.0.1 unless ``--host`` says otherwise: the dashboard can edit studies
and has no authentication.
"""

from __future__ import annotations

import argparse
import sys

from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import add_store_arguments, store_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: journal file path, sqlite:///FILE or postgresql://... "
        "(default: DIR/optuna.db of --store)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.study import storage as study_storage

    store = store_from_args(args)
    spec = study_storage.existing_storage(args.storage, store)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be 1..65535")
    from optuna_dashboard import run_server

    storage = study_storage.open_storage(spec)
    print(
        f"clusterprobe dashboard: optuna-dashboard on http://{args.host}:{args.port}/dashboard "
        f"(storage {study_storage.redact(spec)}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0
