"""sha256 of every artifact a run logs, recorded as it finishes and checked when read.

The run context hashes each file as it is logged (the local copy, so remote artifact
stores are covered too) and writes ``checksums.json`` ({artifact path: sha256}) when
the run ends FINISHED. Readers (rescore, export, eval --from, transfer) and
``clusterprobe doctor`` compare files against it. Runs written before checksums existed
have no manifest: they are *unverified*, not corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clusterprobe.tracker.conventions import ART_CHECKSUMS
from clusterprobe.tracker.errors import UsageError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_logged(local: Path, artifact_path: str | None) -> dict[str, str]:
    """{artifact path: sha256} of a file or folder about to be logged under ``artifact_path``
    (MLflow's layout: a file keeps its name, a folder's contents go under the path)."""
    prefix = (artifact_path or "").strip("/")
    if local.is_file():
        return {_join(prefix, local.name): sha256_file(local)}
    out = {}
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        out[_join(prefix, path.relative_to(local).as_posix())] = sha256_file(path)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def read_manifest(folder: Path) -> dict[str, str] | None:
    """The ``checksums.json`` of a run's local artifact folder; None where there is none."""
    path = folder / ART_CHECKSUMS
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except Exception:
        return {}  # unreadable: every listed file then counts as unverifiable below
    return {str(k): str(v) for k, v in manifest.items()} if isinstance(manifest, dict) else {}


@dataclass
class FolderCheck:
    """What a run's artifact folder holds against its manifest."""

    verified: bool  # a manifest exists
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed


def check_folder(folder: Path) -> FolderCheck:
    """Every file the manifest lists: present, and with the recorded sha256."""
    manifest = read_manifest(folder)
    if manifest is None:
        return FolderCheck(verified=False)
    out = FolderCheck(verified=True)
    if not manifest:
        out.changed.append(ART_CHECKSUMS)
    for rel, digest in sorted(manifest.items()):
        path = folder / rel
        if not path.is_file():
            out.missing.append(rel)
        elif sha256_file(path) != digest:
            out.changed.append(rel)
    return out


def verify_file(folder: Path, path: Path, run_id: str) -> None:
    """Refuse (one UsageError line) a file of run ``run_id`` whose sha256 differs from the
    one recorded when the run was written. Files not listed (or no manifest) pass."""
    manifest = read_manifest(folder)
    if not manifest:
        return
    try:
        rel = Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return
    digest = manifest.get(rel)
    if digest is not None and sha256_file(path) != digest:
        raise UsageError(
            f"{path}: sha256 differs from the one run {run_id} recorded when it was written "
            f"({ART_CHECKSUMS}); the file was changed or damaged, rerun the run"
        )


def verify_tree(folder: Path, sub: Path, run_id: str) -> None:
    """`verify_file` for every file under ``sub`` (a checkpoint folder)."""
    for path in sorted(p for p in Path(sub).rglob("*") if p.is_file()):
        verify_file(folder, path, run_id)
