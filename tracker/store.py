"""Where runs are recorded: resolve ``--store`` / ``--tracking-uri`` into one `Store`.

This module never imports mlflow, so commands can resolve (and validate) the store
before paying for the import.

A local store is one folder (default ``./mlruns``, always made absolute)::

    DIR/mlflow.db     MLflow tracking database  -> sqlite:////abs/DIR/mlflow.db
    DIR/optuna.db     default Optuna storage     -> sqlite:////abs/DIR/optuna.db
    DIR/artifacts/    artifact root of every experiment created by clusterprobe
    DIR/store.json    {"schema": STORE_SCHEMA, "root": "/abs/DIR"}, to notice a moved folder
    DIR/.lock         fcntl lock taken while the schema is created or paths are rewritten

Precedence: ``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > ``--store DIR`` > ``./mlruns``.
A ``sqlite:///.../X.db`` URI is a local store rooted at the folder holding X.db. Server
(``http(s)://``) and database (``postgresql://``, ``mysql://``) URIs have no root; their
artifacts go to ``--artifact-root`` / ``CLUSTERPROBE_ARTIFACT_ROOT`` when given (a shared
folder or object store), else to the server's default (``http``) or, for a bare database,
to the artifacts folder of the local store folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from clusterprobe.tracker.errors import UsageError

DEFAULT_STORE = "mlruns"
DB_NAME = "mlflow.db"
OPTUNA_DB_NAME = "optuna.db"
ARTIFACTS_DIR = "artifacts"
STORE_JSON = "store.json"
LOCK_NAME = ".lock"

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_ARTIFACT_ROOT = "CLUSTERPROBE_ARTIFACT_ROOT"

# URI scheme (before any "+driver") -> kind of backend. Anything else is refused.
SCHEMES: dict[str, str] = {
    "sqlite": "sqlite",
    "postgresql": "database",
    "postgres": "database",
    "mysql": "database",
    "mssql": "database",
    "http": "server",
    "https": "server",
}


@dataclass(frozen=True, repr=False)
class Store:
    """One resolved MLflow store (plus the default Optuna storage beside it).

    tracking_uri: any MLflow tracking URI; ``sqlite:////abs/DIR/mlflow.db`` for local stores.
    root: the store folder for local stores, None for servers and databases.
    artifact_root: where new experiments put their artifacts (a local path for local
        stores, a URI or path for shared storage); None means the server's own default.
    optuna_url: default Optuna storage URL (``sqlite:////abs/DIR/optuna.db``), None when
        there is no local folder to put it in.
    """

    tracking_uri: str
    root: Path | None
    artifact_root: str | None
    optuna_url: str | None

    @property
    def backend(self) -> str:
        """ "sqlite", "database" or "server"."""
        return SCHEMES[_scheme(self.tracking_uri)]

    @property
    def is_local(self) -> bool:
        return self.root is not None

    @property
    def db_path(self) -> Path | None:
        return sqlite_path(self.tracking_uri) if self.backend == "sqlite" else None

    @property
    def store_json(self) -> Path | None:
        return None if self.root is None else self.root / STORE_JSON

    def __repr__(self) -> str:
        return (
            f"Store(tracking_uri={redact_uri(self.tracking_uri)!r}, root={self.root!r}, "
            f"artifact_root={self.artifact_root!r}, optuna_url={self.optuna_url!r})"
        )

    def describe(self) -> dict:
        """JSON-able summary (password redacted), for logs and ``--json`` outputs."""
        return {
            "tracking_uri": redact_uri(self.tracking_uri),
            "root": None if self.root is None else str(self.root),
            "artifact_root": self.artifact_root,
            "optuna_url": self.optuna_url,
        }


# user:password@ of a URL anywhere in a text (a message, a SQL statement).
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/:@\s'\"]*):[^@/\s'\"]*@", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` (or any text holding URLs) with each password replaced by ``***``, for
    messages and logs."""
    return _URL_PASSWORD.sub(r"\1:***@", uri)


def uri_without_password(uri: str) -> str:
    """``uri`` (or any text holding URLs) with each password dropped (``user@host``), for
    commands printed for the user to run: libpq then takes it from ``~/.pgpass`` or
    ``PGPASSWORD``, where ``***`` would fail."""
    return _URL_PASSWORD.sub(r"\1@", uri)


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.split("+", 1)[0].lower()


def sqlite_path(uri: str) -> Path:
    """The file of a SQLAlchemy SQLite URL: ``sqlite:///relative/x.db`` or
    ``sqlite:////abs/x.db``, made absolute. UsageError for anything else."""
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///") or rest in ("///", "///:memory:"):
        raise UsageError(
            f"{uri!r} is not a SQLite file URL; use sqlite:///path/to/file.db "
            "(four slashes for an absolute path)"
        )
    return Path(unquote(rest[3:].split("?", 1)[0])).expanduser().absolute()


def local_path(uri: str | None) -> Path | None:
    """Local filesystem path of a ``file:`` URI or a plain absolute path; None for
    remote URIs (object stores, an MLflow server's artifact proxy)."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def run_artifact_dir(uri: str | None, run_id: str, root: Path | None = None) -> Path | None:
    """Local folder of a run's artifacts (``uri``: its artifact URI), None when remote.

    Follows a moved store folder ``root`` whose database still names the old place
    (readers open it read-only, so nobody has rewritten the locations yet):
    ``<old root>/artifacts/<experiment>/<run_id>/artifacts`` -> ``<root>/artifacts/...``.
    """
    path = local_path(uri)
    if path is None or path.is_dir() or root is None:
        return path
    parts = path.parts
    if run_id in parts:
        i = parts.index(run_id)
        if i >= 1:
            return root.joinpath("artifacts", *parts[i - 1 :])
    return path


def sqlite_url(path: Path) -> str:
    """SQLAlchemy URL of a SQLite file: ``sqlite:////abs/path``."""
    return "sqlite:///" + str(Path(path).absolute())


def local_store(root: str | os.PathLike) -> Store:
    """The store in folder ``root`` (made absolute; created lazily by the Tracker)."""
    root = Path(os.path.abspath(Path(root).expanduser()))
    if root.exists() and not root.is_dir():
        raise UsageError(f"--store {str(root)!r} is a file; give a folder (default ./mlruns)")
    return Store(
        tracking_uri=sqlite_url(root / DB_NAME),
        root=root,
        artifact_root=str(root / ARTIFACTS_DIR),
        optuna_url=sqlite_url(root / OPTUNA_DB_NAME),
    )


def _normalise_artifact_root(value: str | None) -> str | None:
    if not value:
        return None
    if "://" in value or value.startswith(("file:", "s3:", "gs:", "wasbs:", "hdfs:")):
        return value
    return os.path.abspath(os.path.expanduser(value))


def resolve_store(
    store: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    artifact_root: str | None = None,
) -> Store:
    """Resolve the flags (and environment) into a `Store`.

    Precedence: ``tracking_uri`` > ``$MLFLOW_TRACKING_URI`` > ``store`` > ``./mlruns``.
    ``artifact_root`` (else ``$CLUSTERPROBE_ARTIFACT_ROOT``) matters for non-local URIs only.
    Raises UsageError for an unsupported URI scheme.
    """
    env_uri = os.environ.get(ENV_TRACKING_URI) or None
    uri = tracking_uri or env_uri
    if uri is None:
        return local_store(store if store is not None else DEFAULT_STORE)
    if tracking_uri is None and store is not None:
        print(
            f"clusterprobe: note: {ENV_TRACKING_URI}={redact_uri(env_uri)} "
            f"takes precedence over --store {store}",
            file=sys.stderr,
        )
    where = "--tracking-uri" if tracking_uri else ENV_TRACKING_URI
    scheme = _scheme(uri)
    if scheme not in SCHEMES:
        hint = " (for a folder, use --store DIR)" if scheme in ("", "file") else ""
        raise UsageError(
            f"{where} {redact_uri(uri)!r}: unsupported scheme {scheme or '(none)'!r}; "
            f"valid: {', '.join(sorted(SCHEMES))}{hint}"
        )
    kind = SCHEMES[scheme]
    if kind == "sqlite":
        db = sqlite_path(uri)
        root = db.parent
        return Store(
            tracking_uri=sqlite_url(db),
            root=root,
            artifact_root=str(root / ARTIFACTS_DIR),
            optuna_url=sqlite_url(root / OPTUNA_DB_NAME),
        )
    if scheme in ("postgresql", "postgres"):
        uri = postgres_driver(uri)
    art = _normalise_artifact_root(artifact_root or os.environ.get(ENV_ARTIFACT_ROOT))
    if art is None and kind == "database":
        # A bare database has no server to hold artifacts: keep them in the local folder.
        art = str(Path(os.path.abspath(store or DEFAULT_STORE)) / ARTIFACTS_DIR)
    return Store(tracking_uri=uri, root=None, artifact_root=art, optuna_url=None)


def postgres_driver(uri: str) -> str:
    """Name the installed driver: SQLAlchemy 2.1 means psycopg 3 by ``postgresql://``.

    The project installs psycopg2-binary; a bare ``postgresql://`` (or ``postgres://``,
    which SQLAlchemy refuses) would otherwise fail with "No module named 'psycopg'".
    """
    head, rest = uri.split("://", 1)
    if "+" in head:
        return uri
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def add_store_arguments(parser: argparse.ArgumentParser, *, artifact_root: bool = True):
    """Add ``--store``, ``--tracking-uri`` (and ``--artifact-root``) to a subcommand.

    Returns the argument group, so read-only commands can add their own store
    options (the query commands add ``--storage``) and leave ``--artifact-root`` out.
    """
    group = parser.add_argument_group("store")
    group.add_argument(
        "--store",
        metavar="DIR",
        default=None,
        help="store folder holding mlflow.db, optuna.db and artifacts/ (default: ./mlruns)",
    )
    group.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=None,
        help=f"any MLflow tracking URI instead of --store (default: ${ENV_TRACKING_URI})",
    )
    if artifact_root:
        group.add_argument(
            "--artifact-root",
            metavar="URI",
            default=None,
            help=f"artifact root for server/database URIs (default: ${ENV_ARTIFACT_ROOT} "
            "or the server's own)",
        )
    return group


def store_from_args(args: argparse.Namespace) -> Store:
    """`resolve_store` from the arguments added by `add_store_arguments`."""
    return resolve_store(
        getattr(args, "store", None),
        getattr(args, "tracking_uri", None),
        getattr(args, "artifact_root", None),
    )


def require_existing(store: Store) -> Store:
    """``store`` for a command that only reads it: a SQLite store must exist already
    (opening one creates it). UsageError naming the folder otherwise."""
    if store.db_path is not None and not store.db_path.is_file():
        where = store.root if store.root is not None else store.db_path.parent
        raise UsageError(
            f"--store {where}: no store there (no {store.db_path.name}); give --store DIR"
        )
    return store


@contextlib.contextmanager
def store_lock(store: Store) -> Iterator[None]:
    """Exclusive lock on a local store folder (``DIR/.lock``); no-op for remote stores.

    Held while a database schema is created or upgraded, so parallel first users of a
    fresh store wait instead of racing (e.g. before creating ``optuna.db``).
    """
    if store.root is None:
        yield
        return
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / LOCK_NAME, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
