"""`clusterprobe doctor`: check a store, and with ``--fix`` repair what is safe to repair.

Reports runs left RUNNING by a process that is gone, FINISHED runs whose artifacts are
missing or no longer match the sha256 recorded when they were written, studies whose
run status disagrees with their trials, finished trials without their train run and
study train runs without their trial. Exit 0 when clean, 1 when it found something
(after ``--fix``: something it may not repair). ``--fix`` only changes statuses: orphans
become FAILED, dead workers' trials FAIL, a study run whose trials all finished
FINISHED; it never deletes a finished run's data.
"""

from __future__ import annotations

import argparse
import os

from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.store import add_store_arguments, require_existing, store_from_args

EXIT_FOUND = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fix",
        action="store_true",
        help="mark orphaned runs FAILED, fail dead workers' trials, set study runs whose "
        "trials all finished FINISHED (never deletes data)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage to check studies in: a journal file path or a URL (default: "
        "the store's optuna.db, where it exists)",
    )
    add_store_arguments(parser, artifact_root=False)


def _study_storage(args, store) -> str | None:
    from clusterprobe.runners.study.storage import resolve_storage

    if args.storage is not None:
        spec = resolve_storage(args.storage, store)
        if "://" not in spec and not os.path.isfile(spec):
            raise UsageError(f"--storage {args.storage!r}: no such journal file")
        return spec
    if store.optuna_url is None:
        return None
    path = store.optuna_url.split(":///", 1)[1]
    return store.optuna_url if os.path.isfile(path) else None


def _check(tracker, spec: str | None):
    from clusterprobe.tracker import doctor

    report = doctor.check_runs(tracker)
    findings = list(report.findings)
    if spec is not None:
        from clusterprobe.runners.study.doctor import check_studies

        findings += check_studies(tracker, spec)
    return report, findings


def _fix(tracker, spec: str | None, findings) -> int:
    from clusterprobe.tracker import doctor

    fixed = doctor.fix(tracker, [f for f in findings if f.kind == doctor.ORPHAN])
    if spec is not None:
        from clusterprobe.runners.study.doctor import fix_studies

        fixed += fix_studies(tracker, spec, findings)
    return len(fixed)


def main(args: argparse.Namespace) -> int:
    store = require_existing(store_from_args(args))
    spec = _study_storage(args, store)
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(store)
    report, findings = _check(tracker, spec)
    for f in findings:
        print(f.line())
    notes = [f"{report.finished} finished run(s) checked"]
    if report.unverified:
        notes.append(f"{report.unverified} unverified (written before checksums)")
    if report.remote:
        notes.append(f"{report.remote} with remote artifacts (not checked)")
    if not findings:
        print(f"clean: {'; '.join(notes)}")
        return 0
    if not args.fix:
        fixable = sum(f.fixable for f in findings)
        hint = f"; {fixable} repairable with --fix" if fixable else ""
        print(f"found {len(findings)} problem(s){hint}; {'; '.join(notes)}")
        return EXIT_FOUND
    fixed = _fix(tracker, spec, findings)
    # A repair can reveal the next one: an orphaned study run, once FAILED, disagrees with
    # a study whose workers finished every trial, and is set FINISHED on this second pass.
    _, again = _check(tracker, spec)
    if any(f.fixable for f in again):
        fixed += _fix(tracker, spec, again)
        _, again = _check(tracker, spec)
    print(f"fixed {fixed} problem(s); {'; '.join(notes)}")
    for f in again:
        print(f"left: {f.line()}")
    if again:
        print(f"{len(again)} left: finished runs are never changed; rerun them")
        return EXIT_FOUND
    return 0
