"""Record runs in MLflow: the only module of clusterprobe that imports mlflow.

`Tracker` wraps one explicit `MlflowClient` (no fluent, process-global active run).
Opening it prepares the store once (`schema.prepare_store`: schema, upgrades,
relocation) and stamps every run with `provenance` tags. `Tracker.start_run` returns a `RunContext`, a context
manager that always ends its run: FINISHED, FAILED (exception, with a one-line
``clusterprobe.error`` tag) or KILLED (KeyboardInterrupt; SIGTERM too inside
`handle_sigterm()`). A run left RUNNING by a killed process is failed later by
`Tracker.reap_orphans`, which only touches runs of this host whose process is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clusterprobe.tracker.checksums import hash_logged
from clusterprobe.tracker.conventions import (
    ART_CHECKSUMS,
    TAG_ERROR,
    TAG_HOST,
    TAG_KIND,
    TAG_PARENT,
    TAG_PID,
)
from clusterprobe.tracker.errors import UsageError, error_line
from clusterprobe.tracker.provenance import (
    TAG_PROCESS,
    owner_gone,
    owner_tags,
    provenance_tags,
)
from clusterprobe.tracker.schema import prepare_store
from clusterprobe.tracker.store import Store, local_path, redact_uri
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

DEFAULT_EXPERIMENT = "clusterprobe"
ORPHAN_ERROR = "owner process gone"

_TERMINAL = ("FINISHED", "FAILED", "KILLED")
_SQLITE_RETRIES = 8  # attempts at a write that finds the SQLite database locked

_log = logging.getLogger(__name__)


# --- value checks -----------------------------------------------------------


def param_value(value: Any) -> str:
    """The string MLflow stores for a param: JSON for containers, str() otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _check_key(what: str, key: str) -> str:
    key = str(key)
    if not key or len(key) > MAX_ENTITY_KEY_LENGTH:
        raise UsageError(f"{what} name {key[:60]!r} must be 1..{MAX_ENTITY_KEY_LENGTH} characters")
    return key


def _check_params(params: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in params.items():
        key = _check_key("param", key)
        text = param_value(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            raise UsageError(
                f"param {key!r} is {len(text)} characters long; MLflow keeps at most "
                f"{MAX_PARAM_VAL_LENGTH} (log it as an artifact instead)"
            )
        out[key] = text
    return out


def _check_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in tags.items():
        key = _check_key("tag", key)
        text = value if isinstance(value, str) else param_value(value)
        if len(text) > MAX_TAG_VAL_LENGTH:
            raise UsageError(
                f"tag {key!r} is {len(text)} characters long; MLflow keeps at most "
                f"{MAX_TAG_VAL_LENGTH}"
            )
        out[key] = text
    return out


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


# --- SIGTERM ------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that runs end KILLED."""

    signum = signal.SIGTERM  # errors.interrupted_exit: exit 143


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` (a KeyboardInterrupt) while the block runs.

    Signal handlers can only be installed from the main thread; elsewhere this is a
    no-op. The previous handler is restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- runs -------------------------------------------------------------------


class RunContext:
    """One MLflow run, already created; ends it when the ``with`` block exits.

    FINISHED on success, FAILED on an exception (tag ``clusterprobe.error`` holds one
    line: type and message), KILLED on KeyboardInterrupt (and SIGTERM inside
    `handle_sigterm`). Usable without ``with``: call `end` yourself.
    """

    def __init__(self, tracker: Tracker, run: Run):
        self.tracker = tracker
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.status: str = "RUNNING"
        # What metrics logged with linked=True are attached to: the logged model this run
        # measures (logged_models.use_model) and its dataset input (datasets.log_dataset).
        self.model_id: str | None = None
        self.dataset: tuple[str, str] | None = None  # (name, digest)
        # {artifact path: sha256} of every file logged, written as checksums.json on FINISHED.
        self.checksums: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"RunContext(run_id={self.run_id!r}, status={self.status!r})"

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.status != "RUNNING":
            return False
        status, error = _outcome(exc)
        if exc is None:
            self.end(status, error)
            return False
        try:
            self.end(status, error)
        except Exception as end_err:
            # Keep the original exception; the run stays RUNNING until reap_orphans.
            print(
                f"clusterprobe: warning: could not mark run {self.run_id} {status}: "
                f"{error_line(end_err)}",
                file=sys.stderr,
            )
        return False

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Mark the run ended (once); ``error`` goes into the ``clusterprobe.error`` tag."""
        if status not in _TERMINAL:
            raise ValueError(f"status {status!r}: valid {_TERMINAL}")
        if self.status != "RUNNING":
            return
        if status == "FINISHED" and self.checksums:
            # Last artifact of a finished run: what every earlier one must still hash to.
            self.log_json(dict(sorted(self.checksums.items())), ART_CHECKSUMS)
        client = self.tracker.client
        # Ending must survive a Ctrl-C or SIGTERM arriving meanwhile, or the run stays RUNNING.
        with _deferred_signals():
            if error:
                self.tracker._retry(
                    client.set_tag, self.run_id, TAG_ERROR, error[:MAX_TAG_VAL_LENGTH]
                )
            # For servers MLflow writes "View run ... at: URL" to stdout; stdout belongs to
            # the command's own output (JSON), so that line goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                self.tracker._retry(client.set_terminated, self.run_id, status)
        self.status = status

    # logging -------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        checked = _check_params(params)
        items = [Param(k, v) for k, v in checked.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.tracker._retry(self.tracker.client.log_batch, self.run_id, params=list(chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        checked = _check_tags(tags)
        items = [RunTag(k, v) for k, v in checked.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.tracker._retry(self.tracker.client.log_batch, self.run_id, tags=list(chunk))

    def _log_metric_objects(self, metrics: list[Metric]) -> None:
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.tracker._retry(self.tracker.client.log_batch, self.run_id, metrics=list(chunk))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int = 0, *, linked: bool = False
    ) -> None:
        """All ``metrics`` at one ``step``, in one log_batch (chunked at MLflow's limit).

        ``linked``: also attach them to the logged model this run measures (with its
        dataset), so the model's page in the MLflow UI lists them; a no-op link where the
        run measures no logged model.
        """
        now = int(time.time() * 1000)
        link = {}
        if linked and self.model_id is not None:
            link["model_id"] = self.model_id
            if self.dataset is not None:
                link["dataset_name"], link["dataset_digest"] = self.dataset
        items = [
            Metric(_check_key("metric", k), float(v), now, int(step), **link)
            for k, v in metrics.items()
        ]
        self._log_metric_objects(items)

    def log_metric_steps(
        self, key: str, values: Iterable[float], steps: Iterable[int] | None = None
    ) -> None:
        """One metric over many steps (default 0..n-1), e.g. a value per layer index."""
        self.log_metric_table({key: values}, steps)

    def log_metric_table(
        self, series: dict[str, Iterable[float]], steps: Iterable[int] | None = None
    ) -> None:
        """Several metrics over the same steps (default 0..n-1) in one batched write.

        The per-layer metrics of an eval run (``ami_f1``.. ``probe_acc``, step =
        layer index) go through here, so a run's whole profile lands at once.
        """
        now = int(time.time() * 1000)
        metrics = []
        for key, values in series.items():
            key = _check_key("metric", key)
            values = [float(v) for v in values]
            at = list(range(len(values))) if steps is None else [int(s) for s in steps]
            if len(at) != len(values):
                raise ValueError(f"{key}: {len(values)} values but {len(at)} steps")
            metrics += [Metric(key, v, now, st) for v, st in zip(values, at, strict=True)]
        self._log_metric_objects(metrics)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder's contents) into the run's artifacts under ``artifact_path``."""
        local_path = Path(local_path)
        if local_path.exists():
            digests = hash_logged(local_path, artifact_path)
            digests.pop(ART_CHECKSUMS, None)
            self.checksums.update(digests)
        if local_path.is_dir():
            self.tracker._retry(
                self.tracker.client.log_artifacts, self.run_id, str(local_path), artifact_path
            )
        elif local_path.is_file():
            self.tracker._retry(
                self.tracker.client.log_artifact, self.run_id, str(local_path), artifact_path
            )
        else:
            raise FileNotFoundError(f"artifact to log does not exist: {local_path}")

    @contextlib.contextmanager
    def _staged(self, artifact_file: str) -> Iterator[Path]:
        # Write into a private temp folder under the artifact's own file name, then log it.
        artifact_file = artifact_file.strip("/")
        if not artifact_file or ".." in Path(artifact_file).parts:
            raise ValueError(f"artifact_file {artifact_file!r} must be a relative file path")
        parent, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory(prefix="clusterprobe-") as tmp:
            path = Path(tmp) / name
            yield path
            self.log_artifact(path, parent or None)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        with self._staged(artifact_file) as path:
            path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default))

    def log_parquet(self, df, artifact_file: str) -> None:
        with self._staged(artifact_file) as path:
            df.to_parquet(path, index=False)

    def log_numpy(self, array, artifact_file: str) -> None:
        import numpy as np

        with self._staged(artifact_file) as path, open(path, "wb") as fh:
            # Through a handle, so np.save keeps the given name (no ".npy" appended).
            np.save(fh, np.asarray(array), allow_pickle=False)

    def log_figure(self, fig, artifact_file: str, **savefig_kwargs) -> None:
        kwargs = {"dpi": 120, "bbox_inches": "tight", **savefig_kwargs}
        with self._staged(artifact_file) as path:
            fig.savefig(path, **kwargs)

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._staged(artifact_file) as path:
            path.write_text(text)

    def artifact_dir(self) -> Path | None:
        """Local folder of this run's artifacts (None when they live remotely)."""
        return local_path(self.artifact_uri)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths: what our artifacts contain besides plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _outcome(exc: BaseException | None) -> tuple[str, str | None]:
    """Final status and error line for a run whose block ended with ``exc``."""
    if exc is None:
        return "FINISHED", None
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", f"interrupted: {error_line(exc)}"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "FINISHED", None
    return "FAILED", error_line(exc)


@contextlib.contextmanager
def _deferred_signals(signums=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT/SIGTERM during a short critical section, then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(pending):
        signal.raise_signal(signum)  # now the restored handler (or the default) acts


class Tracker:
    """The store's runs through one explicit MlflowClient.

    Opening prepares the store (schema once under a lock, relocation) so that any
    number of processes may then write concurrently.
    """

    def __init__(self, store: Store):
        self.store = store
        prepare_store(store)
        self.client = MlflowClient(tracking_uri=store.tracking_uri)
        self._experiments: dict[str, str] = {}
        self._download_dir: Path | None = None

    def __repr__(self) -> str:
        return f"Tracker({redact_uri(self.store.tracking_uri)!r})"

    def _retry(self, fn, *args, **kwargs):
        """Call ``fn``, retrying when SQLite says the database is locked (busy writers)."""
        delay = 0.2
        for attempt in range(_SQLITE_RETRIES):
            try:
                return fn(*args, **kwargs)
            except MlflowException as err:
                if "database is locked" not in str(err) or attempt == _SQLITE_RETRIES - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    # experiments ---------------------------------------------------------------

    def experiment_id(self, name: str = DEFAULT_EXPERIMENT) -> str:
        """Id of experiment ``name``, created (with an explicit artifact location) if new."""
        if name in self._experiments:
            return self._experiments[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.store.artifact_root:
                location = self.store.artifact_root.rstrip("/") + "/" + _slug(name)
            try:
                exp_id = self.client.create_experiment(name, artifact_location=location)
            except MlflowException as err:
                # Another process created it between our look-up and create.
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise err
                exp_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                raise UsageError(
                    f"experiment {name!r} is deleted in {redact_uri(self.store.tracking_uri)}; "
                    f"restore it (mlflow experiments restore) or choose another name"
                )
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    # runs ----------------------------------------------------------------------

    def start_run(
        self,
        kind: str,
        *,
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> RunContext:
        """Create a RUNNING run now and return its context manager.

        Params and tags are validated before anything is written, so a bad value
        leaves no half-made run behind.
        """
        if not kind or not isinstance(kind, str):
            raise ValueError(f"run kind must be a non-empty string, got {kind!r}")
        checked_params = _check_params(params or {})
        all_tags = {
            "mlflow.user": _user(),
            "mlflow.source.name": _source_name(),
            "mlflow.source.type": "LOCAL",
            **provenance_tags(),
            **owner_tags(),
            TAG_KIND: kind,
        }
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        all_tags.update(tags or {})
        checked_tags = _check_tags(all_tags)
        experiment_id = self.experiment_id(experiment)
        if parent_run_id:
            self.get_run(parent_run_id)  # fail early (MlflowException) on an unknown parent
        run = self._retry(
            self.client.create_run, experiment_id, tags=checked_tags, run_name=run_name
        )
        ctx = RunContext(self, run)
        try:
            if checked_params:
                ctx.log_params(checked_params)
        except BaseException as exc:
            ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return ctx

    def reopen_run(self, run_id: str) -> RunContext:
        """An ended run RUNNING again, owned by this process (``run --resume``): its owner
        tags become ours and its error tag goes; the context ends it as ``start_run``'s."""
        self._retry(self.client.update_run, run_id, status="RUNNING")
        ctx = RunContext(self, self.get_run(run_id))
        try:
            ctx.set_tags(owner_tags())
            if TAG_ERROR in self.get_run(run_id).data.tags:
                self._retry(self.client.delete_tag, run_id, TAG_ERROR)
        except BaseException as exc:
            ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return ctx

    def get_run(self, run_id: str) -> Run:
        return self.client.get_run(run_id)

    def open_run(self, run_id: str) -> Run:
        """``get_run`` for an id a user typed: a UsageError naming it when it is unknown."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(
                f"RUN_ID {run_id!r}: no such run in {redact_uri(self.store.tracking_uri)} ({first})"
            ) from None

    def _all_experiment_ids(self) -> list[str]:
        ids, token = [], None
        while True:
            page = self.client.search_experiments(
                view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids

    def search_runs(
        self,
        kind: str | None = None,
        parent_run_id: str | None = None,
        status: str | None = None,
        *,
        experiment: str | None = None,
        filter_string: str = "",
        tags: Mapping[str, str] | None = None,
        order_by: list[str] | None = None,
    ) -> list[Run]:
        """Runs matching every given condition, from one experiment or all of them."""
        clauses = [filter_string] if filter_string else []
        wanted = dict(tags or {})
        if kind is not None:
            wanted[TAG_KIND] = kind
        if parent_run_id is not None:
            wanted[TAG_PARENT] = parent_run_id
        for key, value in wanted.items():
            clauses.append(f"tags.`{key}` = '{_quote(value)}'")
        if status is not None:
            if status not in ("RUNNING", "SCHEDULED", *_TERMINAL):
                raise UsageError(f"run status {status!r}: valid RUNNING, {', '.join(_TERMINAL)}")
            clauses.append(f"attributes.status = '{status}'")
        if experiment is not None:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                return []
            experiment_ids = [exp.experiment_id]
        else:
            experiment_ids = self._all_experiment_ids()
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                experiment_ids,
                filter_string=" and ".join(clauses),
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=10000,
                order_by=order_by or ["attributes.start_time ASC"],
                page_token=token,
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    # artifacts -----------------------------------------------------------------

    def artifact_dir(self, run_id: str) -> Path | None:
        """Local folder of a run's artifacts, None when they live in a remote store."""
        return local_path(self.get_run(run_id).info.artifact_uri)

    def artifact_path(self, run_id: str, path: str = "") -> Path:
        """Local file path of a run's artifact (downloaded first for remote artifact stores).

        ``path=""`` is the run's artifact folder (for local stores it may not exist yet,
        when nothing was logged). FileNotFoundError for a missing artifact.
        """
        local = self.artifact_dir(run_id)
        if local is not None:
            if not path:
                return local
            target = local / path
            if not target.exists():
                raise FileNotFoundError(f"run {run_id} has no artifact {path!r} ({target})")
            return target
        if self._download_dir is None:
            self._download_dir = Path(tempfile.mkdtemp(prefix="clusterprobe-artifacts-"))
            atexit.register(shutil.rmtree, self._download_dir, ignore_errors=True)
        # Mirror the artifact's folder: MLflow downloads "a/b.npy" as "<dst>/b.npy".
        dst = self._download_dir / run_id / os.path.dirname(path.strip("/"))
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, dst_path=str(dst)))
        except MlflowException as err:
            raise FileNotFoundError(f"run {run_id} has no artifact {path!r}: {err}") from err

    # orphans -------------------------------------------------------------------

    def orphan_runs(self) -> list[Run]:
        """RUNNING runs whose owner process on this host is gone (read-only).

        A run is an orphan when its host tag is this host and its pid is not alive, or
        the pid now belongs to another process (start time differs). Runs of other
        hosts, runs without owner tags and live owners are never listed.
        """
        host = socket.gethostname()
        out = []
        for run in self.search_runs(status="RUNNING", tags={TAG_HOST: host}):
            tags = run.data.tags
            try:
                pid = int(tags.get(TAG_PID, ""))
            except ValueError:
                continue
            if owner_gone(pid, tags.get(TAG_PROCESS)):
                out.append(run)
        return out

    def reap_orphans(self) -> list[str]:
        """Fail the `orphan_runs` (error tag ``owner process gone``); return their ids."""
        reaped = []
        for run in self.orphan_runs():
            # Re-read right before writing: the owner may have ended the run meanwhile.
            if self.get_run(run.info.run_id).info.status != "RUNNING":
                continue
            self._retry(self.client.set_tag, run.info.run_id, TAG_ERROR, ORPHAN_ERROR)
            self._retry(self.client.set_terminated, run.info.run_id, "FAILED")
            reaped.append(run.info.run_id)
        return reaped


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def _source_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    return os.path.basename(argv0)


__all__ = [
    "RunContext",
    "RunStatus",
    "Terminated",
    "Tracker",
    "handle_sigterm",
    "prepare_store",
    "provenance_tags",
]
