"""The `clusterprobe` command: parse, hand over to one function, set the exit code.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``. Modules are imported only when their subcommand runs, so
``clusterprobe --help`` and ``clusterprobe score`` never import torch or mlflow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clusterprobe.runners.allocator import keep_large_blocks
from clusterprobe.tracker.errors import UsageError

# name -> (module, one-line help). The module is imported for its own subcommand only.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("clusterprobe.runners.commands.run", "train a model, measure every layer, record it"),
    "eval": (
        "clusterprobe.runners.commands.eval",
        "measure a model you already have (stored checkpoint or weights file)",
    ),
    "score": ("clusterprobe.runners.commands.score", "cluster your own embeddings (.npz)"),
    "rescore": ("clusterprobe.runners.commands.rescore", "re-cluster a stored eval run"),
    "export": ("clusterprobe.runners.commands.export", "write a layer's pooled embeddings"),
    "transfer": (
        "clusterprobe.runners.commands.transfer",
        "cluster a transfer set with a stored model",
    ),
    "compare": (
        "clusterprobe.runners.commands.compare",
        "CKA and ARI between the layers of two eval runs",
    ),
    "register": (
        "clusterprobe.runners.commands.register",
        "register a run's model in the MLflow Model Registry",
    ),
    "datasets": ("clusterprobe.runners.commands.datasets", "list or show datasets"),
    "study": ("clusterprobe.runners.commands.study", "Optuna study over design choices"),
    "query": ("clusterprobe.queries.cli_query", "run a canned SQL query"),
    "sql": ("clusterprobe.queries.cli_sql", "run ad-hoc SQL over the stores"),
    "plot": ("clusterprobe.queries.cli_plot", "draw a canned query as a PNG/SVG"),
    "report": (
        "clusterprobe.runners.commands.report",
        "one self-contained HTML page of an eval run or a study",
    ),
    "ui": ("clusterprobe.runners.commands.ui", "open the MLflow UI on the store"),
    "dashboard": ("clusterprobe.runners.commands.dashboard", "open optuna-dashboard"),
    "doctor": (
        "clusterprobe.runners.commands.doctor",
        "check a store (orphaned runs, artifact checksums, studies); --fix repairs",
    ),
}

EXIT_BAD_INPUT = 2


def _parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(
        prog="clusterprobe",
        description="Probe how well each layer of a network clusters hidden subclasses.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (mod_name, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            module = importlib.import_module(mod_name)
            module.add_arguments(p)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, module = _parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else EXIT_BAD_INPUT
    keep_large_blocks()  # runners/allocator.py: 224 px tensors without fresh pages each time
    try:
        return int(module.main(args) or 0)
    except UsageError as err:
        print(f"clusterprobe {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        from clusterprobe.runners.threads import release

        release()  # the cores this command claimed (runners/threads.py) are free again


if __name__ == "__main__":
    sys.exit(main())
