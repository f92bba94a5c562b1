"""CIFAR-100 from the official python pickles: coarse labels, names, variants, errors.

The test writes a tiny CIFAR-100 in the official format (``cifar-100-python/train``,
``test``, ``meta``; ``data`` uint8 [N, 3072] as R, G, B planes; ``fine_labels``,
``coarse_labels``). Class names and the coarse/fine pairing come from
../shared/cifar100_hierarchy.json when present, else from made-up names.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import cifar100
from clusterprobe.runners.data.groups import shuffle_groups
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.tracker.errors import UsageError

HIERARCHY = Path(__file__).resolve().parents[2] / "shared" / "cifar100_hierarchy.json"


def hierarchy() -> dict[str, list[str]]:
    if HIERARCHY.is_file():
        return json.loads(HIERARCHY.read_text())["superclasses"]
    return {f"coarse{c:02d}": [f"fine{c:02d}_{k}" for k in range(5)] for c in range(20)}


def make_cifar100(root: Path, n_train: int = 3, n_test: int = 2) -> Path:
    """Official layout and keys; every image encodes its fine label in its red plane."""
    tree = hierarchy()
    coarse_names = sorted(tree)
    fine_names = sorted(f for subs in tree.values() for f in subs)  # official: alphabetical
    coarse_of = {f: coarse_names.index(c) for c, subs in tree.items() for f in subs}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = np.repeat(np.arange(100), n)
        rng.shuffle(fine)  # the official files are not sorted by class
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        data[:, :1024] = fine[:, None]  # red plane = fine label
        payload = {
            "filenames": [f"img_{i}.png" for i in range(len(fine))],
            "batch_label": f"{split} batch",
            "fine_labels": fine.tolist(),
            "coarse_labels": [coarse_of[fine_names[f]] for f in fine],
            "data": data,
        }
        (folder / split).write_bytes(pickle.dumps(payload, protocol=2))
    # The meta file as Python 2 wrote it, read back with bytes keys and values.
    meta = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return make_cifar100(tmp_path_factory.mktemp("cifar"))


def test_coarse_labels_and_names_from_the_pickles(cifar_root):
    data = load_dataset(RunConfig(dataset="cifar100", data_dir=str(cifar_root)))
    tree = hierarchy()
    assert data.superclass_names == sorted(tree)
    groups = [[data.subclass_names[k] for k in g] for g in data.groups()]
    assert groups == [sorted(tree[c]) for c in sorted(tree)]
    assert len(data.train) == 100 * 3 and len(data.eval) == 100 * 2
    fine_names = sorted(f for subs in tree.values() for f in subs)
    for ds, labels in ((data.train_plain, data.train_labels), (data.eval, data.eval_labels)):
        for i in range(0, len(ds), 37):
            image, sup, sub = ds[i]
            assert image.shape == (3, 32, 32)
            assert (sup, sub) == (labels.superclass[i], labels.subclass[i])
            # The red plane still says which fine class this image is.
            fine = int(round(float(ds.images[i][0, 0, 0])))
            name = data.subclass_names[sub]
            assert fine_names[fine] == name
            assert name in tree[data.superclass_names[sup]]
    assert data.record["coarse_labels"] == sorted(tree)


def test_variants_and_subsampling(cifar_root):
    base = RunConfig(dataset="cifar100", data_dir=str(cifar_root / "cifar-100-python"))
    natural = load_dataset(base)
    names = [[natural.subclass_names[k] for k in g] for g in natural.groups()]
    shuffled = load_dataset(base.replace(shuffled=True))
    assert shuffled.shuffled and shuffled.superclass_names[0] == "group-00"
    got = [[shuffled.subclass_names[k] for k in g] for g in shuffled.groups()]
    assert got == shuffle_groups(names)

    small = load_dataset(
        base.replace(classes=3, subclasses=2, train_per_subclass=2, eval_per_subclass=1)
    )
    rng = np.random.RandomState(2)  # classes first, then subclasses, one generator
    picked = rng.choice(20, 3, replace=False)
    expected = [[names[i][j] for j in rng.choice(5, 2, replace=False)] for i in picked]
    assert [[small.subclass_names[k] for k in g] for g in small.groups()] == expected
    assert small.superclass_names == [natural.superclass_names[i] for i in picked]
    assert len(small.train) == 12 and len(small.eval) == 6


def test_missing_data_names_data_dir_and_download(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERPROBE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UsageError) as err:
        load_dataset(RunConfig(dataset="cifar100", data_dir=str(tmp_path)))
    assert "--data-dir DIR" in str(err.value) and "--download" in str(err.value)
    with pytest.raises(UsageError, match=str(tmp_path / "cache" / "cifar100")):
        cifar100.find_folder(None, download=False)
    with pytest.raises(UsageError, match="--subclasses 6"):
        load_dataset(
            RunConfig(dataset="cifar100", data_dir=str(make_cifar100(tmp_path / "c")), subclasses=6)
        )


def test_run_with_coarse_labels(tmp_path, store):
    """A tiny run on the fake pickles trains and clusters on the coarse labels."""
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker import conventions as cv
    from clusterprobe.tracker.tracking import Tracker

    config = RunConfig(
        dataset="cifar100",
        data_dir=str(make_cifar100(tmp_path, n_train=8, n_test=4)),
        classes=2,
        subclasses=2,
        image_size=16,
        epochs=1,
        batch_size=8,
        taps="stages",
        factors=(1,),
        probe_per_subclass=8,
        device="cpu",
        save=(),
    )
    result = pipeline.run(config, store, quiet=True)
    assert len(result.layers) > 0
    tracker = Tracker(store)
    params = tracker.get_run(result.train_run_id).data.params
    assert (params["dataset"], params["classes"], params["subclasses"]) == ("cifar100", "2", "2")
    record = json.loads(
        Path(tracker.artifact_path(result.eval_run_ids[-1], cv.ART_DATASET_RECORD)).read_text()
    )
    tree = hierarchy()
    picked = [sorted(tree)[i] for i in np.random.RandomState(2).choice(20, 2, replace=False)]
    assert [s["name"] for s in record["superclasses"]] == picked  # coarse labels, draw order
    for s in record["superclasses"]:
        assert {c["name"] for c in s["subclasses"]} <= set(tree[s["name"]])
