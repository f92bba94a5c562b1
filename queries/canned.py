"""The canned queries: the ``queries/*.sql`` files, their declared parameters, and
running one by name over a connection (`clusterprobe.queries.connect.connect`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import duckdb
from clusterprobe.tracker.errors import UsageError


class Session(Protocol):
    """What a canned query needs of a connection (`connect.Analysis` is one); named
    here so this module need not import the module that re-exports it."""

    def sql(self, text: str, variables: Mapping[str, object] | None = None): ...


QUERY_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # DuckDB type the value is cast to
    default: str | None  # None: unset (the query covers everything)
    help: str


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    params: tuple[Param, ...]
    description: str


_PARAM_RE = re.compile(
    r"^--\s*param\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<type>[A-Z]+)"
    r"(?:\s*=\s*(?P<default>\S+))?\s*(?::\s*(?P<help>.*))?$"
)


def query_names() -> list[str]:
    return sorted(p.stem for p in QUERY_DIR.glob("*.sql"))


def load_query(name: str) -> Query:
    """Read ``queries/<name>.sql``; its header declares the parameters.

    Header lines ``-- param NAME TYPE [= DEFAULT] : help`` declare a parameter; in the
    SQL it is ``getvariable('NAME')`` (NULL when unset: no filter), so the file pastes
    into a DuckDB shell as it is, with ``SET VARIABLE NAME = ...`` to filter.
    """
    names = query_names()
    if name not in names:
        raise UsageError(f"unknown query {name!r}; choose one of: {', '.join(names)}")
    text = (QUERY_DIR / f"{name}.sql").read_text()
    params = []
    description = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _PARAM_RE.match(line.strip())
        if match:
            default = match["default"]
            params.append(
                Param(
                    match["name"],
                    match["type"],
                    None if default in (None, "NULL") else default.strip("'"),
                    (match["help"] or "").strip(),
                )
            )
        else:
            description.append(line[2:].strip())
    return Query(name, text, tuple(params), "\n".join(description).strip())


def parse_params(query: Query, pairs: Iterable[str]) -> dict[str, object]:
    """``["factor=2", ...]`` -> typed values for the query's declared parameters."""
    declared = {p.name: p for p in query.params}
    values: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in declared:
            valid = ", ".join(declared) or "(none)"
            raise UsageError(
                f"--param {pair!r}: {query.name} takes NAME=VALUE with NAME one of: {valid}"
            )
        values[key] = value
    out: dict[str, object] = {}
    for p in query.params:
        raw = values.get(p.name, p.default)
        out[p.name] = None if raw is None else _cast(p, raw, query.name)
    return out


def _cast(param: Param, raw: str, query: str) -> object:
    try:
        value = duckdb.execute(f"SELECT CAST(? AS {param.type})", [raw]).fetchone()[0]
    except duckdb.Error:
        value = None
    if value is None and raw.strip().upper() not in ("", "NULL"):
        raise UsageError(
            f"--param {param.name}={raw!r}: {query} expects a {param.type.lower()} ({param.help})"
        )
    return value


def run_query(analysis: Session, name: str, params: Mapping[str, object] | None = None):
    """Run canned query ``name`` with typed ``params``; returns a DuckDB relation."""
    query = load_query(name)
    values = parse_params(query, [])
    for key, value in (params or {}).items():
        if key not in values:
            raise UsageError(
                f"{name} has no parameter {key!r}; valid: {', '.join(values) or '(none)'}"
            )
        values[key] = value
    return analysis.sql(query.sql, values)


def query_df(analysis: Session, name: str, **params):
    """Canned query ``name`` as a pandas DataFrame (for Python users and plots)."""
    return run_query(analysis, name, params).df()
