"""Read-only commands notice runs whose owner process is gone, without writing.

``query``, ``sql`` and ``ui`` never change the store, so a run killed with -9 stays
RUNNING there; they say so in one line and point at ``clusterprobe doctor --fix``,
which marks such runs FAILED (as the next ``run`` or ``study`` also does).
"""

from __future__ import annotations

import socket
import sys

from clusterprobe.tracker.conventions import TAG_HOST, TAG_PID
from clusterprobe.tracker.doctor import orphan_note
from clusterprobe.tracker.provenance import TAG_PROCESS, owner_gone


def count_orphans(con) -> int:
    """RUNNING runs in the snapshot whose owner on this host is gone (``snap`` tables)."""
    rows = con.execute(
        """SELECT max(CASE WHEN t.key = $host THEN t.value END),
       max(CASE WHEN t.key = $pid THEN t.value END),
       max(CASE WHEN t.key = $process THEN t.value END)
FROM snap.runs r JOIN snap.tags t USING (run_id)
WHERE r.status = 'RUNNING' GROUP BY r.run_id""",
        {"host": TAG_HOST, "pid": TAG_PID, "process": TAG_PROCESS},
    ).fetchall()
    here = socket.gethostname()
    return sum(
        1
        for host, pid, ident in rows
        if host == here and pid is not None and pid.isdigit() and owner_gone(int(pid), ident)
    )


def warn_orphans(analysis, command: str) -> None:
    """Print `orphan_note` for an open `connect.Analysis` (stderr; stdout may be JSON)."""
    line = orphan_note(count_orphans(analysis.con))
    if line:
        print(f"clusterprobe {command}: note: {line}", file=sys.stderr)
