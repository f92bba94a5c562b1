"""Any timm model, end to end: random-init weights of five families measured on the
built-in data (`eval --weights`), and one trained by `run`.

The tap counts are timm's feature_info (the README lists them); deit is a
VisionTransformer and keeps the paper's two taps per block.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.tracking import Tracker
from conftest import ONE_EPOCH_32PX_RUN
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = (
    "--classes 2 --subclasses 2 --train-per-subclass 4 --eval-per-subclass 6 "
    "--probe-per-subclass 2 --image-size 32 --batch-size 24 --save none --quiet"
).split()


@pytest.mark.parametrize(
    "arch,family,taps",
    [
        ("convnext_atto", "features", 4),
        ("efficientnet_b0", "features", 5),
        ("regnetx_002", "features", 5),
        ("swin_tiny_patch4_window7_224", "features", 4),
        ("deit_tiny_patch16_224", "vit", 24),
    ],
)
def test_random_weights_of_any_family_are_measured(store, tmp_path, capsys, arch, family, taps):
    # Swin and DeiT fix their input size at creation: the file is made for 32 px.
    sized = {"img_size": 32} if timm.models.get_pretrained_cfg(arch).fixed_input_size else {}
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=2, **sized)
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    capsys.readouterr()
    argv = ["eval", "--weights", str(path), "--arch", arch, *SMALL, "--store", str(store.root)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    run_id = next(line.split()[2] for line in out.splitlines() if line.startswith("eval run:"))

    tracker = Tracker(store)
    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["family"] == family and run.data.params[cv.PARAM_INPUT_SIZE] == "32"
    layers = json.loads(tracker.artifact_path(run_id, cv.ART_LAYERS).read_text())
    assert len(layers) == taps
    for key in ("ami_f1", cv.PROBE_METRIC):
        steps = sorted(m.step for m in tracker.client.get_metric_history(run_id, key))
        assert steps == list(range(taps)), key
    # the head's 2 outputs = the 2 superclasses: the model's own accuracy is measured too
    assert run.data.params[cv.PARAM_TEST_ACC_LABELS] == "superclass"
    assert 0 <= run.data.metrics[cv.TEST_ACC_METRIC] <= 1


def test_run_trains_a_model_outside_the_papers_families(store):
    """`run` trains what it can measure: convnext_atto, one epoch, its 4 stage taps."""
    from clusterprobe.runners import pipeline
    from clusterprobe.runners.config import RunConfig

    config = RunConfig(arch="convnext_atto", **ONE_EPOCH_32PX_RUN)
    result = pipeline.run(config, store, quiet=True)
    assert [row["name"] for row in result.layers] == [f"stages.{i}" for i in range(4)]
    assert "test_acc" in result.summary  # trained on the superclasses: its head predicts them
