"""The engine is pure: no module of clusterprobe.runners.engine imports the tracker, mlflow
or optuna, at import time or lazily inside a function (DESIGN.md, "the data flow").

Two checks per module: a static scan of its source (every ``import``, ``from ... import``,
``importlib.import_module("...")`` and ``__import__("...")``, wherever it sits), and a
fresh interpreter that imports every engine module and records which engine module
pulled in each forbidden one.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import clusterprobe.runners.engine as engine
import pytest

FORBIDDEN = ("clusterprobe.tracker", "mlflow", "optuna")
PACKAGE = engine.__name__
FOLDER = Path(engine.__file__).parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(FOLDER)]))
SOURCES = ["__init__", *MODULES]  # the package's own file is scanned too


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def _imported_names(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``source``, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x / from ..x: relative to this module's package
                parts = f"{PACKAGE}.{module}".split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_engine_has_modules():
    assert {"cluster", "embed", "metrics", "score", "ward", "whole"} <= set(MODULES)


def test_the_scan_sees_every_kind_of_import():
    source = (
        "import mlflow.tracking\n"
        "def f():\n"
        "    from ...tracker import errors\n"
        "    importlib.import_module('optuna')\n"
    )
    names = {name for _, name in _imported_names(source, "score")}
    assert {"mlflow.tracking", "clusterprobe.tracker", "clusterprobe.tracker.errors"} <= names
    assert "optuna" in names


@pytest.mark.parametrize("module", SOURCES)
def test_source_imports_no_tracker_mlflow_or_optuna(module):
    path = FOLDER / f"{module}.py"
    bad = [
        f"{path.name}:{line} imports {name}"
        for line, name in _imported_names(path.read_text(), module)
        if _forbidden(name)
    ]
    assert not bad, "; ".join(bad)


# Imports every engine module in one fresh interpreter. A meta-path spy blames each
# forbidden import on the innermost engine module on the stack when it happens.
_PROBE = r"""
import importlib, json, sys, traceback
FORBIDDEN, PACKAGE, FOLDER, MODULES = json.loads(sys.argv[1])
files = {f"{FOLDER}/{m}.py": m for m in ["__init__", *MODULES]}
blame = {}

def forbidden(name):
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)

class Spy:
    def find_spec(self, name, path=None, target=None):
        if forbidden(name):
            for frame in reversed(traceback.extract_stack()):
                if frame.filename in files:
                    blame.setdefault(files[frame.filename], set()).add(name)
                    break
        return None

before = sorted(m for m in sys.modules if forbidden(m))
sys.meta_path.insert(0, Spy())
for m in MODULES:
    importlib.import_module(f"{PACKAGE}.{m}")
loaded = sorted(m for m in sys.modules if forbidden(m))
print(json.dumps({"before": before, "loaded": loaded,
                  "blame": {m: sorted(v) for m, v in blame.items()}}))
"""


@pytest.fixture(scope="module")
def imported():
    arg = json.dumps([FORBIDDEN, PACKAGE, str(FOLDER), MODULES])
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, arg], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", SOURCES)
def test_importing_loads_no_tracker_mlflow_or_optuna(imported, module):
    assert imported["blame"].get(module, []) == []


def test_every_forbidden_module_loaded_is_blamed_on_an_engine_module(imported):
    """Nothing forbidden is loaded before the engine, or by a route the spy cannot see."""
    assert imported["before"] == []
    blamed = {name for names in imported["blame"].values() for name in names}
    assert set(imported["loaded"]) <= blamed
