"""Check a store's runs: owners gone, artifacts missing or changed; repair what is safe.

``check_runs`` reads only. ``fix`` marks orphaned RUNNING runs FAILED (as the next
``run`` would) and never deletes or rewrites a finished run's data: a FINISHED run
whose artifacts are missing or changed is reported, for the user to rerun.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterprobe.tracker.checksums import check_folder
from clusterprobe.tracker.conventions import TAG_KIND

# Finding kinds, in the order they are reported.
ORPHAN = "orphan"  # RUNNING, owner process gone
ARTIFACT_MISSING = "artifact-missing"  # FINISHED, a file its checksums list is gone
ARTIFACT_CHANGED = "artifact-changed"  # FINISHED, a file no longer has its recorded sha256
STUDY_STATUS = "study-status"  # a study run's status disagrees with its trials
TRIAL_WITHOUT_RUN = "trial-without-run"  # a finished trial whose train run is not in the store
RUN_WITHOUT_TRIAL = "run-without-trial"  # a study's train run that no trial of it names


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str  # a run id, or "study NAME trial N"
    detail: str
    fixable: bool = False  # what --fix repairs (status changes only)
    new_status: str | None = None  # the status --fix sets on run ``subject``

    def line(self) -> str:
        fix = f" [--fix: {self.new_status}]" if self.fixable else ""
        return f"{self.kind:18s} {self.subject}: {self.detail}{fix}"


@dataclass
class RunsReport:
    findings: list[Finding]
    finished: int  # FINISHED runs looked at
    unverified: int  # of them, written before checksums existed (no checksums.json)
    remote: int  # of them, with artifacts not on a local disk (not checked)


def orphan_note(count: int) -> str | None:
    """The one line a read-only command prints about ``count`` orphaned runs."""
    if not count:
        return None
    return (
        f"{count} run(s) RUNNING whose process is gone (killed?); "
        "`clusterprobe doctor --fix` marks them FAILED"
    )


def check_runs(tracker) -> RunsReport:
    """Orphaned RUNNING runs of this host, and FINISHED runs whose local artifacts do not
    match the checksums recorded when they were written."""
    findings = [
        Finding(
            ORPHAN,
            run.info.run_id,
            f"{run.data.tags.get(TAG_KIND, 'run')} run RUNNING, its process is gone",
            fixable=True,
            new_status="FAILED",
        )
        for run in tracker.orphan_runs()
    ]
    finished = tracker.search_runs(status="FINISHED")
    unverified = remote = 0
    for run in finished:
        folder = tracker.artifact_dir(run.info.run_id)
        if folder is None:
            remote += 1
            continue
        check = check_folder(folder)
        if not check.verified:
            unverified += int(folder.is_dir() and any(folder.iterdir()))
            continue
        kind = run.data.tags.get(TAG_KIND, "run")
        for rel in check.missing:
            findings.append(Finding(ARTIFACT_MISSING, run.info.run_id, f"{kind} run: {rel}"))
        for rel in check.changed:
            findings.append(
                Finding(ARTIFACT_CHANGED, run.info.run_id, f"{kind} run: {rel} (sha256 differs)")
            )
    return RunsReport(findings, len(finished), unverified, remote)


def fix(tracker, findings: list[Finding]) -> list[Finding]:
    """Set the status each fixable finding names on its run (orphans: FAILED, with the
    tracker's orphan error tag); returns the findings repaired."""
    from clusterprobe.tracker.conventions import TAG_ERROR
    from clusterprobe.tracker.tracking import ORPHAN_ERROR

    done = []
    for f in findings:
        if not f.fixable or f.new_status is None:
            continue
        run = tracker.get_run(f.subject)
        if f.kind == ORPHAN:
            if run.info.status != "RUNNING":
                continue  # its owner (or another doctor) ended it meanwhile
            tracker.client.set_tag(f.subject, TAG_ERROR, ORPHAN_ERROR)
            tracker.client.set_terminated(f.subject, f.new_status)
        elif run.info.status != f.new_status:
            tracker.client.update_run(f.subject, status=f.new_status)
        done.append(f)
    return done
