"""BREEDS: class lists reproduce the published/derived ones; images load by wnid from an
ImageNet-style tree; missing files and folders give one clear error.

The class-list fixture and the hierarchy files are read from ../shared/breeds
(never copied into the repository); those tests skip where it is absent, and FAIL
instead when ``CLUSTERPROBE_REQUIRE_SHARED=1`` (CI sets it, so they cannot silently
go untested).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import breeds
from clusterprobe.runners.data.record import dataset_params, dataset_record
from clusterprobe.tracker.errors import UsageError
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "breeds"
FIXTURE = SHARED / "breeds_splits_derived.json"

needs_shared = pytest.mark.usefixtures("shared_breeds")


@pytest.fixture(scope="module")
def derived(shared_breeds) -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def hierarchy(shared_breeds):
    return breeds.load_hierarchy(SHARED)


def _show(capsys, *argv) -> dict:
    code = cli_main(["datasets", "show", *argv, "--breeds-info", str(SHARED), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # only JSON on stdout


# The parametrised tests read their cases from the fixture; without it they get one
# placeholder case, so they still run and `shared_breeds` skips or fails them (an empty
# parameter set would skip whatever CLUSTERPROBE_REQUIRE_SHARED says).
def _cases():
    if not FIXTURE.is_file():
        return [pytest.param(None, None, id="breeds-fixture-absent")]
    d = json.loads(FIXTURE.read_text())
    cases = [(name, split) for name in d["datasets"] for split in ("none", "rand", "good")]
    return cases


def _variants():
    if not FIXTURE.is_file():
        return [pytest.param(None, id="breeds-fixture-absent")]
    d = json.loads(FIXTURE.read_text())["nguyen_kornblith_variants"]
    return sorted(k for k in d if not k.startswith("_"))


@needs_shared
@pytest.mark.parametrize("name,split", _cases())
def test_show_json_reproduces_every_split_list(capsys, derived, name, split):
    expected = derived["datasets"][name][f"split_{split}"]
    got = _show(capsys, name, "--split", split)
    if split == "none":
        assert got == {"groups": expected["subclasses"]}
    else:
        assert got == {"source": expected["source"], "target": expected["target"]}


@needs_shared
@pytest.mark.parametrize("variant", _variants())
def test_show_json_reproduces_every_paper_variant(capsys, derived, variant):
    v = derived["nguyen_kornblith_variants"][variant]
    argv = [v["base"], "--subclasses", str(v["num_subclasses"])]
    if v["shuffled"]:
        argv.append("--shuffle")
    assert _show(capsys, *argv) == {"groups": v["groups"]}


@needs_shared
def test_superclasses_and_names_match(hierarchy, derived):
    for name, d in derived["datasets"].items():
        cls = breeds.breeds_classes(hierarchy, name)
        assert cls.superclasses == [s["wnid"] for s in d["superclasses"]]
        assert cls.superclass_names == [s["name"] for s in d["superclasses"]]
        assert len(cls.source) == d["n_superclasses"] == breeds.BREEDS[name].superclasses
        assert {len(g) for g in cls.source} == {d["subclasses_per_superclass"]}


@needs_shared
def test_bad_split_is_two_disjoint_halves_of_each_superclass(hierarchy):
    for name, spec in breeds.BREEDS.items():
        cls = breeds.breeds_classes(hierarchy, name, split="bad")
        for sc, src, tgt in zip(cls.superclasses, cls.source, cls.target, strict=True):
            assert len(src) == len(tgt) == spec.subclasses // 2
            assert not set(src) & set(tgt)
            assert set(src) | set(tgt) <= set(hierarchy.leaves_under(sc))
        # "bad" puts similar subclasses together; it differs from "good" somewhere.
        good = breeds.breeds_classes(hierarchy, name, split="good")
        assert cls.source != good.source


@needs_shared
def test_classes_draw_superclasses_then_subclasses_on_one_generator(hierarchy, derived):
    """Independent reference: networkx leaves + a hand-written RandomState(2) sequence."""
    nx = pytest.importorskip("networkx")
    graph = nx.DiGraph(
        [line.split() for line in (SHARED / "class_hierarchy.txt").read_text().splitlines()]
    )
    imagenet = {c[1] for c in json.loads((SHARED / "dataset_class_info.json").read_text())}
    supers = [s["wnid"] for s in derived["datasets"]["living17"]["superclasses"]]
    rng = np.random.RandomState(2)
    picked = rng.choice(len(supers), 5, replace=False)  # all 17 are eligible
    expected = []
    for i in picked:
        leaves = sorted(nx.descendants(graph, supers[i]) & imagenet)
        expected.append([str(w) for w in rng.choice(leaves, 3, replace=False)])

    cls = breeds.breeds_classes(hierarchy, "living17", classes=5, subclasses=3)
    assert cls.superclasses == [supers[i] for i in picked]  # labels in draw order
    assert cls.source == expected


@needs_shared
def test_subclasses_keep_eligibility_and_are_prefixes_of_the_full_draw(hierarchy):
    full = breeds.breeds_classes(hierarchy, "entity13")
    four = breeds.breeds_classes(hierarchy, "entity13", subclasses=4)
    assert len(four.source) == 13  # eligibility stays at 20 subclasses
    assert four.source == [g[:4] for g in full.source]


@needs_shared
def test_refused_combinations_and_ranges(hierarchy, capsys):
    for extra in (["--subclasses", "2"], ["--classes", "3"], ["--shuffle"]):
        code = cli_main(
            [
                "datasets",
                "show",
                "living17",
                "--split",
                "rand",
                *extra,
                "--breeds-info",
                str(SHARED),
            ]
        )
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert "--split rand cannot be combined with " + extra[0] in captured.err
    with pytest.raises(UsageError, match="--classes 18: living17 has 17 superclasses"):
        breeds.breeds_classes(hierarchy, "living17", classes=18)
    with pytest.raises(UsageError, match="--subclasses 5"):
        breeds.breeds_classes(hierarchy, "living17", subclasses=5)


# --- finding the hierarchy files ---------------------------------------------------


def test_missing_hierarchy_names_both_options(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(breeds, "INFO_URL", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(UsageError) as err:
        breeds.find_info_dir(None)
    msg = str(err.value)
    assert "--breeds-info DIR" in msg and str(tmp_path / "cache" / "breeds") in msg
    assert "\n" not in msg
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "node_names.txt").write_text("")
    with pytest.raises(UsageError, match="missing class_hierarchy.txt, dataset_class_info.json"):
        breeds.find_info_dir(tmp_path / "partial")


@needs_shared
def test_download_once_into_the_cache_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(breeds, "INFO_URL", SHARED.as_uri() + "/")  # a local mirror
    path = breeds.find_info_dir(None)
    assert path == tmp_path / "cache" / "breeds"
    assert sorted(p.name for p in path.iterdir()) == sorted(breeds.INFO_FILES)
    monkeypatch.setattr(breeds, "INFO_URL", (tmp_path / "gone").as_uri() + "/")
    assert breeds.find_info_dir(None) == path  # cached: no second download

    mirror = tmp_path / "tampered"
    mirror.mkdir()
    for name in breeds.INFO_FILES:
        (mirror / name).write_bytes((SHARED / name).read_bytes() + b"\n")
    monkeypatch.setenv("CLUSTERPROBE_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(breeds, "INFO_URL", mirror.as_uri() + "/")
    with pytest.raises(UsageError, match="sha256"):
        breeds.find_info_dir(None)


# --- images from an ImageNet-style tree ---------------------------------------------


def make_imagenet(root: Path, wnids, n_train: int = 4, n_val: int = 3, seed: int = 0) -> Path:
    """A tiny ImageNet layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    rng = np.random.default_rng(seed)
    for w in wnids:
        for split, n in (("train", n_train), ("val", n_val)):
            d = root / split / w
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (18 + i, 22, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{w}_{i}.JPEG", quality=80)
    return root


@needs_shared
def test_loads_the_present_subset_by_wnid(tmp_path, hierarchy):
    cls = breeds.breeds_classes(hierarchy, "living17", classes=2, subclasses=2)
    wnids = [w for g in cls.source for w in g]
    # Decoys: other classes and a stray file must not shift labels (mapping is by wnid).
    make_imagenet(tmp_path / "imagenet", [*wnids, "n09999999", "n00000001"])
    (tmp_path / "imagenet" / "train" / "README.txt").write_text("not a class")
    config = RunConfig(
        dataset="living17",
        classes=2,
        subclasses=2,
        data_dir=str(tmp_path / "imagenet"),
        breeds_info=str(SHARED),
        image_size=32,
        train_per_subclass=3,
    )
    data = breeds.load(config)
    assert data.subclass_names == wnids
    assert data.superclass_names == cls.superclass_names
    assert data.groups() == [[0, 1], [2, 3]]
    assert len(data.train) == 4 * 3 and len(data.eval) == 4 * 3
    image, sup, sub = data.eval[5]
    assert image.shape == (3, 32, 32) and (sup, sub) == (data.eval_labels.superclass[5], 1)
    assert Path(data.eval.paths[5]).parent.name == wnids[1]
    for ds in (data.train, data.train_plain):
        for i in range(len(ds)):
            assert Path(ds.paths[i]).parent.name == wnids[ds.subclass[i]]
    record = dataset_record(data)
    assert record["digest"] == data.digest()
    assert [s["train_images"] for g in record["superclasses"] for s in g["subclasses"]] == [3] * 4
    assert record["options"]["groups"] == cls.source
    params = dataset_params(data)
    assert params["dataset"] == "living17" and params["num_subclasses"] == "4"


@needs_shared
def test_missing_wnids_are_listed_with_a_count(tmp_path, hierarchy):
    cls = breeds.breeds_classes(hierarchy, "living17")
    wnids = [w for g in cls.source for w in g]
    make_imagenet(tmp_path / "imagenet", wnids[:3], n_train=1, n_val=1)
    config = RunConfig(dataset="living17", data_dir=str(tmp_path / "imagenet"))
    with pytest.raises(UsageError) as err:
        breeds.load(config.replace(breeds_info=str(SHARED)))
    msg = str(err.value)
    assert (
        f"lacks 65 of the 68 classes living17 needs (130 folders missing: train/{wnids[3]}" in msg
    )
    assert msg.count("/n0") == 5 and ", ..." in msg and "--imagenet-root" in msg
    with pytest.raises(UsageError, match="needs --imagenet-root DIR"):
        breeds.load(RunConfig(dataset="living17", breeds_info=str(SHARED)))
    with pytest.raises(UsageError, match="no val/ folder"):
        (tmp_path / "only_train" / "train").mkdir(parents=True)
        breeds.load(config.replace(data_dir=str(tmp_path / "only_train"), breeds_info=str(SHARED)))


@needs_shared
def test_run_end_to_end_on_a_fake_imagenet(tmp_path, hierarchy, store, capsys):
    """`clusterprobe run --dataset living17 --imagenet-root ... --breeds-info ...` (tiny)."""
    from clusterprobe.tracker.tracking import Tracker

    cls = breeds.breeds_classes(hierarchy, "living17", classes=2, subclasses=2)
    root = make_imagenet(tmp_path / "imagenet", [w for g in cls.source for w in g], 6, 4)
    common = ["--dataset", "living17", "--imagenet-root", str(root), "--breeds-info", str(SHARED)]
    tiny = ["--epochs", "1", "--batch-size", "8", "--image-size", "16", "--device", "cpu"]
    tiny += ["--taps", "stages", "--factors", "1"]
    argv = ["run", *common, "--classes", "2", "--subclasses", "2", *tiny, "--quiet"]
    code = cli_main([*argv, "--save", "none", "--store", str(store.root)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "best layer" in out.out

    train = Tracker(store).search_runs(kind="train")
    assert len(train) == 1
    params = train[0].data.params
    assert params["dataset"] == "living17" and params["shuffled"] == "False"
    assert params["classes"] == "2" and params["subclasses"] == "2"

    # Asking for classes the tree lacks: one line, exit 2, nothing recorded.
    code = cli_main(
        [
            "run",
            *common,
            "--classes",
            "3",
            "--subclasses",
            "2",
            *tiny,
            "--quiet",
            "--store",
            str(store.root),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "lacks 2 of the 6 classes living17 needs" in err
    assert len(Tracker(store).search_runs(kind="train")) == 1
