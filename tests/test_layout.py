"""The house rules that keep one home per concept, checked on the source itself.

* Only ``runners/evalrun/record.py`` starts an eval run: every producer (run,
  rescore, transfer, ...) goes through ``evalrun.start_eval_run``.
* No command module imports another command module: shared code lives below them.
* The eval run's artifact file names are spelled only in ``tracker/conventions.py``.
* Only ``tracker/`` imports mlflow.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNERS = REPO / "runners"
# File names of the eval run's and train run's artifacts (not their folders' names, which
# double as words in messages).
ARTIFACT_NAMES = (
    "pooled_{",
    "gram_{",
    "pixel_{",
    "labels.parquet",
    "index.parquet",
    "model.safetensors",
    "model_config.json",
    "assignments.parquet",
    "layer_metrics.parquet",
    "cka.parquet",
)


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _calls_named(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                yield node


def test_only_the_evalrun_module_starts_eval_runs():
    starters = set()
    for path, tree in _modules(RUNNERS):
        for call in _calls_named(tree, "start_run"):
            first = call.args[0] if call.args else None
            if isinstance(first, ast.Constant) and first.value == "eval":
                starters.add(path.relative_to(REPO).as_posix())
    assert starters == {"runners/evalrun/record.py"}


def test_the_eval_run_writers_all_go_through_start_eval_run():
    users = {
        path.relative_to(REPO).as_posix()
        for path, tree in _modules(RUNNERS)
        if any(_calls_named(tree, "start_eval_run"))
    }
    producers = ("pipeline", "rescore", "transfer", "evaluate")
    assert {f"runners/{name}.py" for name in producers} <= users


def test_no_command_imports_another_command():
    offenders = []
    for path, tree in _modules(RUNNERS / "commands"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "clusterprobe.runners.commands"
            ):
                offenders.append(f"{path.name}: from {node.module} import ...")
    assert offenders == [], "\n".join(offenders)


def test_artifact_file_names_are_spelled_only_in_the_conventions():
    offenders = []
    for root in (RUNNERS, REPO / "queries", REPO / "tracker"):
        for path, tree in _modules(root):
            if path.name == "conventions.py":
                continue
            prose = {  # docstrings may name the files they describe
                id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
            }
            for node in ast.walk(tree):
                if id(node) in prose:
                    continue
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if any(name in node.value for name in ARTIFACT_NAMES):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert offenders == [], "\n".join(offenders)


def test_only_the_tracker_imports_mlflow():
    """The logged model's loader included: MLflow imports it by name, and it reaches the
    store through the tracker."""
    offenders = []
    for root in (RUNNERS, REPO / "queries"):
        for path, tree in _modules(root):
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], "\n".join(offenders)
