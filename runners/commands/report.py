"""`clusterprobe report RUN_ID | --study NAME [--out FILE]`: one self-contained HTML page.

An eval run's report (a train run's: its final checkpoint's eval run) or a study's
(``runners.report``); written to ``--out`` (default ``report_<run id>.html`` or
``report_<study>.html`` in the current folder) through a temporary file, so a failure
leaves no half-written page.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from clusterprobe.runners.report import DEFAULT_UI_URL
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import (
    add_store_arguments,
    redact_uri,
    require_existing,
    store_from_args,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_id",
        nargs="?",
        metavar="RUN_ID",
        help="an eval run, or a train run (its final checkpoint's eval run)",
    )
    parser.add_argument("--study", metavar="NAME", help="report an Optuna study instead")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="--study's Optuna storage: journal file path, sqlite:///FILE or postgresql://... "
        "(default: DIR/optuna.db of --store)",
    )
    parser.add_argument(
        "--ui-url",
        default=DEFAULT_UI_URL,
        metavar="URL",
        help=f"--study: the MLflow UI its trial links point at (default {DEFAULT_UI_URL}, "
        "where `clusterprobe ui` serves)",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="where to write the page (default report_<ID>.html)"
    )
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if (args.run_id is None) == (args.study is None):
        raise UsageError("give either RUN_ID or --study NAME (one of them)")
    if args.run_id is not None and args.storage is not None:
        raise UsageError("--storage names a study's storage: use it with --study")
    # A study name may hold any character: the default file name keeps the safe ones.
    default = "report_" + re.sub(r"[^A-Za-z0-9_.-]", "_", args.run_id or args.study) + ".html"
    out = Path(args.out or default)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {str(out)!r}: give a file name ending in .html")
    if not out.parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    store = require_existing(store_from_args(args))
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(store)
    if args.study is not None:
        html, what = _study(tracker, store, args), f"study {args.study}"
    else:
        from clusterprobe.runners.report.run_report import eval_run_report, resolve_eval_run

        run_id = resolve_eval_run(tracker, args.run_id)
        html, what = eval_run_report(tracker, run_id), f"eval run {run_id}"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)  # never a half-written page under the asked name
    print(f"report of {what}: {out} ({len(html.encode()) / 1024:.0f} KB)")
    return 0


def _study(tracker, store, args) -> str:
    from clusterprobe.runners.report import study_report as sr
    from clusterprobe.runners.study import storage as study_storage

    spec = study_storage.existing_storage(args.storage, store)
    if not args.ui_url.startswith(("http://", "https://")):
        raise UsageError(f"--ui-url {args.ui_url!r}: give the UI's address, http://HOST:PORT")
    study = sr.load_study(args.study, study_storage.open_storage(spec))
    links = sr.run_links(tracker, args.study, args.ui_url)
    return sr.study_report(study, links, redact_uri(study_storage.redact(spec)))
