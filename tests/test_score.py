"""`clusterprobe score`: sklearn parity, JSON format, factor specs, errors, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from clusterprobe.runners import cli
from clusterprobe.runners.engine.score import score_features
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score
from sklearn.preprocessing import normalize


def sklearn_scores(features, superclass, subclass, factors):
    x = normalize(features.reshape(len(features), -1).astype(np.float64))
    ami, pur = {}, {}
    for s in np.unique(superclass):
        rows = np.flatnonzero(superclass == s)
        y = subclass[rows]
        for f in factors:
            k = min(len(np.unique(y)) * f, len(rows))
            pred = (
                np.zeros(len(rows), int)
                if k == 1
                else AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x[rows])
            )
            ami[int(s), f] = adjusted_mutual_info_score(y, pred)
            _, yi = np.unique(y, return_inverse=True)
            pur[int(s), f] = sum(np.bincount(yi[pred == c]).max() for c in np.unique(pred)) / len(y)
    return ami, pur


def make_embeddings(seed, n=120, shape=(6, 4, 4), separated=False):
    rng = np.random.default_rng(seed)
    superclass = rng.integers(0, 3, n) + 5  # arbitrary label values
    subclass = superclass * 10 + rng.integers(0, 4, n)
    d = int(np.prod(shape))
    centres = rng.normal(size=(100, d))
    if separated:
        features = np.eye(d)[subclass % d] * 5.0
    else:
        features = centres[subclass % 100] * rng.uniform(0.3, 2.0) + rng.normal(size=(n, d))
        features[rng.integers(0, n, 4)] = features[rng.integers(0, n, 4)]  # duplicates
    return features.reshape((n,) + shape).astype(np.float32), superclass, subclass


@pytest.mark.parametrize("seed", range(4))
def test_score_features_equals_sklearn(seed):
    features, sup, sub = make_embeddings(seed)
    out = score_features(features, sup, sub, (1, 2, 5))
    ref_ami, ref_pur = sklearn_scores(features, sup, sub, (1, 2, 5))
    for row in out["per_superclass"]:
        key = (row["superclass"], row["factor"])
        assert row["ami"] == pytest.approx(ref_ami[key], abs=1e-9)
        assert row["purity"] == pytest.approx(ref_pur[key], abs=1e-9)
    for f in (1, 2, 5):
        mean = np.mean([ref_ami[s, f] for s in (5, 6, 7)])
        assert out["ami"][str(f)] == pytest.approx(mean, abs=1e-9)


def test_separated_features_score_one():
    features, sup, sub = make_embeddings(0, separated=True)
    out = score_features(features, sup, sub, (1,))
    assert out["ami"]["1"] == pytest.approx(1.0, abs=1e-12)
    assert out["purity"]["1"] == pytest.approx(1.0, abs=1e-12)


def _write(tmp_path, name="emb.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_cli_json_format_and_factor_spec(tmp_path, capsys):
    features, sup, sub = make_embeddings(1)
    path = _write(tmp_path, features=features, superclass=sup, subclass=sub)
    out_file = tmp_path / "out.json"
    assert cli.main(["score", path, "--factors", "1-3", "--json", str(out_file), "--quiet"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout is only the JSON
    assert captured.err == ""
    assert printed == json.loads(out_file.read_text())
    assert list(printed["ami"]) == ["1", "2", "3"] and list(printed["purity"]) == ["1", "2", "3"]
    assert len(printed["per_superclass"]) == 3 * 3
    assert set(printed["per_superclass"][0]) == {"superclass", "factor", "ami", "purity"}
    assert printed["params"]["algorithm"] == "ward"
    assert cli.main(["score", path, "--factors", "1,3"]) == 0
    captured = capsys.readouterr()
    assert list(json.loads(captured.out)["ami"]) == ["1", "3"]
    assert "factor" in captured.err  # the human summary goes to stderr


def test_cli_whole(tmp_path, capsys):
    from clusterprobe.runners.engine.whole import score_whole

    features, sup, sub = make_embeddings(2, n=90)
    path = _write(tmp_path, features=features, subclass=sub)  # no superclass needed
    assert (
        cli.main(["score", path, "--whole", "--factors", "1,2", "--method", "exact", "--quiet"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["per_superclass"] == []
    ref = score_whole(normalize(features.reshape(90, -1)), sub, (1, 2), method="exact")
    assert printed["ami"]["2"] == pytest.approx(ref.ami[2], abs=1e-9)
    assert printed["params"]["algorithm"] == "exact"


BAD_CASES = {
    "not an npz": ("text", "not a readable .npz"),
    "missing subclass": ({"features": np.ones((4, 2)), "superclass": np.zeros(4, int)}, "missing"),
    "1-D features": (
        {"features": np.ones(4), "superclass": np.zeros(4, int), "subclass": np.zeros(4, int)},
        "shape",
    ),
    "short labels": (
        {"features": np.ones((4, 2)), "superclass": np.zeros(3, int), "subclass": np.zeros(4, int)},
        "superclass has shape",
    ),
    "nan": (
        {
            "features": np.array([[1.0, 0], [np.nan, 1], [1, 1], [0, 1]]),
            "superclass": np.zeros(4, int),
            "subclass": np.arange(4),
        },
        "row 1 holds NaN or Inf",
    ),
    "inf": (
        {
            "features": np.array([[1.0, 0], [1, 1], [1, np.inf], [0, 1]]),
            "superclass": np.zeros(4, int),
            "subclass": np.arange(4),
        },
        "row 2 holds NaN or Inf",
    ),
    "nan in a later, interleaved superclass": (
        {
            "features": np.array([[1.0, 0], [0, 1], [1, 1], [0, 2], [2, 1], [np.nan, 0]]),
            "superclass": np.array([0, 1, 0, 1, 0, 1]),
            "subclass": np.arange(6),
        },
        "row 5 holds NaN or Inf",
    ),
    "overflowing norm": (
        {
            "features": np.array([[1.0, 0], [1e300, 1e300], [1, 1], [0, 1]]),
            "superclass": np.zeros(4, int),
            "subclass": np.arange(4),
        },
        "row 1 is too large",
    ),
    "float labels": (
        {"features": np.ones((4, 2)), "superclass": np.zeros(4), "subclass": np.zeros(4, int)},
        "labels must be integers",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_cli_bad_files_exit_2_with_one_line(tmp_path, capsys, recwarn, case):
    content, message = BAD_CASES[case]
    if isinstance(content, str):
        path = tmp_path / "emb.npz"
        path.write_text(content)
        path = str(path)
    else:
        path = _write(tmp_path, **content)
    assert cli.main(["score", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    # progress may come first (NaN/Inf are found while the Grams are formed); the error
    # is one line, the last
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], captured.err
    assert captured.err.strip().splitlines()[-1] == errors[0]
    # and no numpy warning about the bad values before it
    assert not [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_cli_whole_needs_two_rows_exit_2(tmp_path, capsys):
    path = _write(tmp_path, features=np.ones((1, 3)), subclass=np.zeros(1, int))
    assert cli.main(["score", path, "--whole", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clusterprobe score: error: ") and "N >= 2" in err[0]


@pytest.mark.parametrize("whole", [False, True])
def test_cli_engine_failure_after_checks_is_a_crash_not_a_usage_error(
    tmp_path, capsys, monkeypatch, whole
):
    """The file passed every check, so an error of the clustering itself is ours: exit 1."""
    from clusterprobe.runners.engine import cluster
    from clusterprobe.runners.engine import whole as whole_module

    def boom(*args, **kwargs):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(cluster, "cluster_protocol", boom)
    monkeypatch.setattr(whole_module, "score_whole", boom)
    features, sup, sub = make_embeddings(6, n=30)
    path = _write(tmp_path, features=features, superclass=sup, subclass=sub)
    # factor 1 only: 5 rows per superclass hold more clusters at higher factors (a warning)
    argv = ["score", path, "--quiet", "--factors", "1"] + (["--whole"] if whole else [])
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["clusterprobe score: failed: ValueError: boom second line"]


def test_superclass_grams_are_the_checked_input_of_the_protocol():
    from clusterprobe.runners.engine.cluster import cluster_protocol
    from clusterprobe.runners.engine.score import protocol, superclass_grams

    features, sup, sub = make_embeddings(7, n=60)
    grams, subs = superclass_grams(features, sup, sub)
    assert sorted(grams) == [5, 6, 7]
    for s in grams:
        rows = sup == s
        x = normalize(features[rows].reshape(rows.sum(), -1).astype(np.float64))
        np.testing.assert_allclose(grams[s], x @ x.T, atol=1e-12)
        np.testing.assert_array_equal(subs[s], sub[rows])
    direct = protocol(features, sup, sub, (1, 2))
    np.testing.assert_array_equal(cluster_protocol(grams, subs, (1, 2)).ami, direct.ami)
    bad = features.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="row 3 holds NaN or Inf"):
        superclass_grams(bad, sup, sub)
    with pytest.raises(TypeError, match="labels must be integers"):
        superclass_grams(features, sup.astype(float), sub)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--factors", "0"], ">= 1"),
        (["--factors", "a-b"], "--factors 'a-b'"),
        (["--method", "kmeans"], "--whole"),
    ],
)
def test_cli_bad_options(tmp_path, capsys, argv, message):
    features, sup, sub = make_embeddings(3, n=30)
    path = _write(tmp_path, features=features, superclass=sup, subclass=sub)
    assert cli.main(["score", path, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert cli.main(["score", str(tmp_path / "absent.npz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_imports_neither_torch_nor_mlflow(tmp_path):
    features, sup, sub = make_embeddings(4, n=40)
    path = _write(tmp_path, features=features, superclass=sup, subclass=sub)
    code = (
        "import sys, json\n"
        "from clusterprobe.runners import cli\n"
        f"rc = cli.main(['score', {path!r}, '--quiet'])\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'sklearn', 'optuna', 'duckdb', 'scipy.spatial') if m in sys.modules)\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"rc": 0, "heavy": []}
    assert set(json.loads(proc.stdout)) >= {"ami", "purity", "per_superclass"}


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_npz_stored_or_compressed_read_alike(tmp_path, saver):
    """Uncompressed members are memory-mapped, compressed ones read: same arrays either way."""
    from clusterprobe.runners.engine.score import load_npz

    features, sup, sub = make_embeddings(5, n=40)
    path = tmp_path / "emb.npz"
    saver(path, features=features, superclass=sup, subclass=sub)
    x, s, y = load_npz(path)
    np.testing.assert_array_equal(x, features.reshape(40, -1))
    np.testing.assert_array_equal(s, sup)
    np.testing.assert_array_equal(y, sub)


def test_constant_features_warn_and_still_score(tmp_path, capsys):
    from clusterprobe.runners.engine.cluster import DeadLayerWarning

    features = np.zeros((12, 5), dtype=np.float32)  # every row zero: a dead layer
    sup = np.repeat([0, 1], 6)
    sub = np.tile([0, 1, 2], 4) + 3 * sup
    with pytest.warns(DeadLayerWarning, match="constant"):
        out = score_features(features, sup, sub, (1, 2))
    assert set(out["ami"]) == {"1", "2"}
    assert all(np.isfinite(r["ami"]) and np.isfinite(r["purity"]) for r in out["per_superclass"])
