"""Who made a run and with what: provenance tags and owner-process identity.

Every run records package versions, the git commit of the working directory,
the device (and torch's CPU threads where torch is in use), and its owner
process (host, pid, and the process's boot-time identity so that a recycled pid
is never mistaken for a live owner; see ``Tracker.reap_orphans``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from clusterprobe.tracker.conventions import (
    STORE_SCHEMA,
    TAG_DEVICE,
    TAG_GIT,
    TAG_HOST,
    TAG_PID,
    TAG_SCHEMA,
    TAG_THREADS,
    TAG_VERSIONS,
)

# Identity of the owner process beyond its pid: "<boot id>:<start time in clock ticks>"
# (Linux /proc), so a recycled pid is not mistaken for the run's owner.
TAG_PROCESS = "clusterprobe.process"

# Packages whose versions go into the provenance tag (read from metadata, not imported).
PROVENANCE_PACKAGES = (
    "clusterprobe",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "scipy",
    "scikit-learn",
    "mlflow",
    "optuna",
    "faiss-cpu",
    "faiss-gpu",
    "duckdb",
    "pandas",
    "pyarrow",
)


def process_identity(pid: int) -> str | None:
    """ "<boot id>:<start ticks>" of a live process, None when unknown or gone."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{boot}:{fields[19]}"


def owner_gone(pid: int, identity: str | None) -> bool:
    """Whether the process that owned a run (``pid``, its ``process_identity`` when tagged)
    is gone: dead, or the pid recycled by another process (other boot or start time)."""
    if pid == os.getpid():
        return False
    if not pid_alive(pid):
        return True
    if identity:
        now = process_identity(pid)
        return now is not None and now != identity
    return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (killed, not yet waited for) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PROVENANCE_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _device() -> str:
    # Never imports torch: a runner that uses a device passes tags={TAG_DEVICE: ...};
    # otherwise report what an already-imported torch can see.
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except Exception:  # a broken CUDA setup must not stop the recording
        pass
    return "cpu"


_PROVENANCE: dict[str, str] | None = None


def provenance_tags() -> dict[str, str]:
    """Tags recorded on every run: versions, git commit of the cwd, device, schema."""
    global _PROVENANCE
    if _PROVENANCE is None:
        tags = {
            TAG_VERSIONS: json.dumps(_versions(), sort_keys=True),
            TAG_SCHEMA: str(STORE_SCHEMA),
        }
        commit = _git_commit()
        if commit:
            tags[TAG_GIT] = commit
            tags["mlflow.source.git.commit"] = commit
        _PROVENANCE = tags
    tags = {**_PROVENANCE, TAG_DEVICE: _device()}
    torch = sys.modules.get("torch")  # never imported here: only a runner that uses it has threads
    if torch is not None:
        tags[TAG_THREADS] = str(torch.get_num_threads())
    return tags


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(pid)}
    ident = process_identity(pid)
    if ident:
        tags[TAG_PROCESS] = ident
    return tags
