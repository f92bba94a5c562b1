"""The CPU benchmarks that drive the runners' own loops still run against them: a
benchmark that stand-ins a dataset (``train_throughput.FixedBatches``) breaks silently
when the loop's contract moves, and the README's command with it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_train_throughput_runs_our_loop_and_the_bare_one():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_throughput.py"), "--steps", "2", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(
        r"ours ([\d.]+) img/s, bare timm loop ([\d.]+) img/s, ratio ([\d.]+)", proc.stdout
    )
    assert found, proc.stdout
    ours, bare, ratio = (float(v) for v in found.groups())
    assert ours > 0 and bare > 0
    assert abs(ratio - ours / bare) < 0.01
