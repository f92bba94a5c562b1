"""sha256 per artifact: recorded as a run finishes, checked by every reader of stored runs;
a run without checksums.json (written before them) is read unverified, never refused."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv


@pytest.fixture
def copied_run(tiny_run, tmp_path):
    """A copy of the tiny run's store (the session's one is shared read-only)."""
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    shared, config, result = tiny_run
    shutil.copytree(shared.root, tmp_path / "mlruns")
    store = local_store(tmp_path / "mlruns")
    return store, Tracker(store), result


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_artifact_of_a_finished_run_is_listed_with_its_sha256(copied_run):
    store, tracker, result = copied_run
    for run_id in (result.train_run_id, *result.eval_run_ids):
        root = tracker.artifact_dir(run_id)
        manifest = json.loads((root / cv.ART_CHECKSUMS).read_text())
        files = {
            p.relative_to(root).as_posix(): _sha256(p)
            for p in root.rglob("*")
            if p.is_file() and p.name != cv.ART_CHECKSUMS
        }
        assert manifest == files  # every file, each with hashlib's digest of its bytes
    assert cv.ART_WEIGHTS in json.loads(
        (tracker.artifact_dir(result.train_run_id) / cv.ART_CHECKSUMS).read_text()
    )


def test_a_changed_artifact_is_refused_by_each_reader(copied_run, tmp_path, capsys):
    store, tracker, result = copied_run
    eval_id, train_id = result.eval_run_ids[-1], result.train_run_id
    n_runs = len(tracker.search_runs())
    pooled = tracker.artifact_dir(eval_id) / cv.ART_EMBED_DIR / cv.EMBED_POOLED.format(layer=0)
    data = bytearray(pooled.read_bytes())
    data[-1] ^= 1  # one bit of one value: still a valid array, a different number
    pooled.write_bytes(bytes(data))
    argv = ["export", eval_id, "--layer", "0", "--out", str(tmp_path / "x.npz")]
    assert cli_main([*argv, "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pooled_00.npy" in err[0] and "sha256 differs" in err[0]
    assert not (tmp_path / "x.npz").exists()

    weights = tracker.artifact_dir(train_id) / cv.ART_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    argv = ["eval", "--from", train_id, "--factors", "1", "--save", "none", "--quiet"]
    assert cli_main([*argv, "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors" in err[0] and "sha256 differs" in err[0]
    assert len(tracker.search_runs()) == n_runs  # nothing stored


def test_a_run_without_checksums_is_read_unverified(copied_run, tmp_path, capsys):
    store, tracker, result = copied_run
    eval_id = result.eval_run_ids[-1]
    (tracker.artifact_dir(eval_id) / cv.ART_CHECKSUMS).unlink()
    out = tmp_path / "x.npz"
    argv = ["export", eval_id, "--layer", "0", "--out", str(out), "--store", str(store.root)]
    assert cli_main(argv) == 0 and out.is_file()
