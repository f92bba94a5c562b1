"""Bad input, as a table: each case is one stderr line naming the bad value, exit 2, and
the store byte for byte as it was (npz files, space files, data folders, CLI values,
store paths, SQL writes)."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from clusterprobe.runners.cli import main as cli_main
from PIL import Image

TINY = ["--classes", "2", "--subclasses", "2", "--epochs", "1", "--image-size", "16"]


def _fingerprint(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tiny_run, tmp_path_factory):
    """A store holding the tiny run (opened once, so relocation is done) and input files."""
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    shared, _, result = tiny_run
    root = tmp_path_factory.mktemp("bad")
    store = root / "mlruns"
    shutil.copytree(shared.root, store)
    Tracker(local_store(store))
    files = root / "in"
    files.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    sup, sub = np.repeat([0, 1], 4), np.tile([0, 1], 4)
    np.savez(files / "nofeat.npz", superclass=sup, subclass=sub)
    np.savez(files / "nan.npz", features=np.where(x > 1, np.nan, x), superclass=sup, subclass=sub)
    np.savez(files / "short.npz", features=x[:5], superclass=sup, subclass=sub)
    np.savez(files / "flat.npz", features=x[:, 0], superclass=sup, subclass=sub)
    (files / "text.npz").write_text("not a zip")
    (files / "bad.toml").write_text("[fixed\narch = ")
    (files / "unknown.toml").write_text("[fixed]\nepoch = 3\n")
    (files / "dataset.toml").write_text("[fixed]\ndataset = 'synthetc'\n")
    (files / "range.toml").write_text("[params.lr]\ntype = 'float'\nlow = 1\nhigh = 0.1\n")
    (files / "afile").write_text("x")
    for name, tree in {
        "one": {"a": ["x", "y"]},
        "nosub": {"a": ["x"], "b": []},
        "single": {"a": ["x", "y"], "b": ["z", "w"]},
        "corrupt": {"a": ["x", "y"], "b": ["z", "w"]},
    }.items():
        for sup_name, subs in tree.items():
            (files / name / sup_name).mkdir(parents=True)
            for sub_name in subs:
                folder = files / name / sup_name / sub_name
                folder.mkdir()
                n = 1 if (name == "single" and sub_name == "w") else 3
                for i in range(n):
                    Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    (files / "corrupt" / "b" / "w" / "1.png").write_bytes(buf.getvalue()[:300])
    return store, files, result


S, F = "{store}", "{files}"  # filled in per case
CASES = [
    # --- npz (score) ---
    (["score", f"{F}/missing.npz"], "missing.npz"),
    (["score", f"{F}/nofeat.npz"], "features"),
    (["score", f"{F}/nan.npz", "--quiet"], "NaN"),
    (["score", f"{F}/short.npz"], "5"),
    (["score", f"{F}/flat.npz"], "shape (8,)"),
    (["score", f"{F}/text.npz"], "text.npz"),
    (["score", f"{F}/nofeat.npz", "--factors", "0"], "--factors"),
    # --- space files (study) ---
    (["study", "--space", f"{F}/none.toml", "--store", S], "none.toml"),
    (["study", "--space", f"{F}/bad.toml", "--store", S], "bad.toml"),
    (["study", "--space", f"{F}/unknown.toml", "--store", S], "epoch"),
    (["study", "--space", f"{F}/dataset.toml", "--store", S], "synthetc"),
    (["study", "--space", f"{F}/range.toml", "--store", S], "lr"),
    (["study", "--trials", "0", "--store", S], "--trials 0"),
    (["study", "--workers", "2", "--store", S], "--workers 2"),
    (["study", "--storage", "redis://h/0", "--store", S], "redis"),
    (["study", "--resume", "nosuchstudy", "--store", S], "nosuchstudy"),
    # --- data folders (run --dataset folder) ---
    (["run", "--dataset", "folder", "--data-dir", f"{F}/absent", "--store", S], "absent"),
    (["run", "--dataset", "folder", "--store", S], "--data-dir"),
    (["run", "--dataset", "folder", "--data-dir", f"{F}/one", "--store", S], "1 superclass"),
    (["run", "--dataset", "folder", "--data-dir", f"{F}/nosub", "--store", S], "b"),
    (["run", "--dataset", "folder", "--data-dir", f"{F}/single", "--store", S], "b/w"),
    (["run", "--dataset", "folder", "--data-dir", f"{F}/corrupt", "--store", S], "b/w/1.png"),
    (
        ["run", "--dataset", "folder", "--data-dir", f"{F}/corrupt", "--skip-corrupt"]
        + ["--cache", f"{F}/afile", "--store", S],
        "afile: cannot hold the image cache",
    ),
    # --- CLI values (run) ---
    (["run", *TINY, "--epochs", "0", "--store", S], "--epochs 0"),
    (["run", *TINY, "--lr", "-1", "--store", S], "--lr -1"),
    (["run", *TINY, "--factors", "0", "--store", S], "--factors"),
    (["run", *TINY, "--factors", "abc", "--store", S], "abc"),
    (["run", *TINY, "--save", "bogus", "--store", S], "bogus"),
    (["run", *TINY, "--dataset", "synthetik", "--store", S], "synthetik"),
    (["run", *TINY, "--arch", "resnet9000", "--store", S], "resnet9000"),
    (["run", *TINY, "--threads", "0", "--store", S], "--threads 0"),
    (["run", *TINY, "--mean", "1,2", "--store", S], "--mean"),
    (["run", *TINY, "--crop-pct", "2", "--store", S], "--crop-pct 2"),
    (["run", *TINY, "--eval-epochs", "5", "--store", S], "--eval-epochs 5"),
    (["run", *TINY, "--image-size", "0", "--store", S], "--image-size 0"),
    # --- store paths and stored runs ---
    (["run", *TINY, "--store", f"{F}/afile"], "afile"),
    (["run", *TINY, "--tracking-uri", "ftp://host/x"], "ftp"),
    (["run", *TINY, "--tracking-uri", "sqlite:///:memory:"], ":memory:"),
    (["rescore", "0123abcd", "--store", S], "0123abcd"),
    (["export", "{eval_id}", "--layer", "0", "--out", f"{F}/x.txt", "--store", S], "x.txt"),
    (["export", "{eval_id}", "--layer", "99", "--out", f"{F}/x.npz", "--store", S], "99"),
    (["eval", "--from", "feedbeef", "--store", S], "feedbeef"),
    (["doctor", "--storage", f"{F}/no.journal", "--store", S], "no.journal"),
    (["report", "--study", "x", "--store", f"{F}/nostore"], "nostore"),  # reading makes none
    (["report", "--study", "x", "--store", S], "optuna.db"),
    (["dashboard", "--store", S], "optuna.db"),
    # --- SQL writes and queries ---
    (["sql", "DELETE FROM runs", "--store", S], "DELETE"),
    (["sql", "CREATE TABLE t (a INT)", "--store", S], "CREATE"),
    (["sql", "DROP VIEW runs", "--store", S], "DROP"),
    (["sql", "UPDATE runs SET status = 'X'", "--store", S], "UPDATE"),
    (["sql", "INSERT INTO runs VALUES (1)", "--store", S], "INSERT"),
    # a misspelt table or column: DuckDB's hint (what would be valid) kept on the line
    (
        ["sql", "SELECT * FROM eval_runs", "--store", S],
        'eval_runs does not exist! Did you mean "evals"',
    ),
    (
        ["sql", "SELECT runid FROM runs", "--store", S],
        '"runid" not found in FROM clause! Candidate bindings: "run_id"',
    ),
    (["sql", "SELEC 1", "--store", S], 'near "SELEC"'),
    (["query", "no_such_query", "--store", S], "no_such_query"),
    (["query", "layer_profile", "--param", "nonsense", "--store", S], "nonsense"),
]


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_input_is_one_line_exit_2_store_unchanged(world, capsys, monkeypatch, argv, named):
    store, files, result = world
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fill = {"store": str(store), "files": str(files), "eval_id": result.eval_run_ids[-1]}
    argv = [a.format(**fill) for a in argv]
    before = _fingerprint(store)
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert named in err[0], err[0]
    assert _fingerprint(store) == before  # byte for byte
