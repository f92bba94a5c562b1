"""A test-only hook: the process kills itself at a named point of its work.

``CLUSTERPROBE_TEST_KILL_AT=POINT`` makes the process SIGKILL itself when it reaches
``kill_point(POINT)``; ``POINT@N`` only where the point is reached with ``at=N`` (the
N-th training step, say); ``POINT:TERM`` sends SIGTERM instead (the handled stop). With
``CLUSTERPROBE_KILL_ONCE=FILE`` only the first process to get there does (it creates
FILE), so one of several workers dies and the others go on. This reaches a point of a
run exactly, where a kill timed from outside would land anywhere on a busy machine.
Unset (always, outside tests), ``kill_point`` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV_KILL_AT = "CLUSTERPROBE_TEST_KILL_AT"
ENV_KILL_ONCE = "CLUSTERPROBE_KILL_ONCE"

# Where the hook is placed, in the order a run reaches them.
POINTS = (
    "run-start",  # the train run exists, nothing trained yet
    "train_step",  # before optimiser step N (``train_step@N``), inside an epoch
    "train",  # the first epoch's metrics are logged
    "embed",  # an eval run is open, nothing measured yet
    "artifacts",  # an eval run's metrics and tables are written, its embeddings are not
    "study-workers",  # a study's main process has started its worker processes
)


def kill_point(name: str, at: int | None = None) -> None:
    """Kill this process here if ``$CLUSTERPROBE_TEST_KILL_AT`` names ``name`` (module docstring)."""
    wanted = os.environ.get(ENV_KILL_AT)
    if not wanted:
        return
    point, _, how = wanted.partition(":")
    point, _, count = point.partition("@")
    if point != name or (count and (at is None or int(count) != at)):
        return
    once = os.environ.get(ENV_KILL_ONCE)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGTERM if how.upper() == "TERM" else signal.SIGKILL)
