"""The GPU benchmarks start on the lent GPU machine: torch, timm, numpy, scipy and
scikit-learn, but neither mlflow, optuna, duckdb nor faiss, and no pip install of this
repo (each script maps the checkout onto ``clusterprobe``, ``benchmarks/checkout.py``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
ABSENT = ("mlflow", "optuna", "duckdb", "faiss")

# Runs a script as `python benchmarks/NAME.py ARGS` would on that machine: the absent
# packages, and clusterprobe's own distribution, cannot be found.
RUN_AS_ON_THE_GPU_MACHINE = """
import importlib.abc, runpy, sys
absent = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in absent or name == "clusterprobe":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Absent())
script = sys.argv[2]
sys.path.insert(0, script.rsplit("/", 1)[0])
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def _session_scripts() -> list[str]:
    """The scripts gpu_session.sh runs (its `step LIMIT NAME SCRIPT ...` lines)."""
    text = (BENCHMARKS / "gpu_session.sh").read_text()
    return re.findall(r"^step \d+ \S+ (\S+\.py)", text, flags=re.M)


def _run(script: str | Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_AS_ON_THE_GPU_MACHINE, ",".join(ABSENT)]
        + [str(BENCHMARKS / script), *args],  # an absolute path stays itself
        capture_output=True,
        text=True,
        timeout=180,
        cwd=BENCHMARKS.parent.parent,  # not the repo: nothing found by the working directory
    )


def test_the_session_runs_every_gpu_benchmark():
    scripts = _session_scripts()
    assert {"eval_model.py", "gpu_protocol.py", "gpu_paths.py", "probe.py", "loader.py"} <= set(
        scripts
    )
    assert all((BENCHMARKS / s).exists() for s in scripts)


@pytest.mark.parametrize("script", _session_scripts())
def test_each_session_script_imports_without_the_absent_packages(script):
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")


def test_the_shim_maps_the_checkout_onto_clusterprobe():
    proc = _run("gpu_protocol.py", "--check-imports")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["embed"] == str(REPO / "runners" / "engine" / "embed.py")
    assert not set(ABSENT) & {m.split(".")[0] for m in report["modules"]}


@pytest.mark.parametrize("module", [*ABSENT, "clusterprobe"])
def test_the_harness_hides_what_the_gpu_machine_lacks(tmp_path, module):
    script = tmp_path / "needs.py"
    script.write_text(f"import {module}\n")
    proc = _run(script)
    assert proc.returncode != 0
    assert f"ModuleNotFoundError: {module}" in proc.stderr
