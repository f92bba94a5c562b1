"""EMA of the weights: the debiased average after a few steps, and runs evaluate and save it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clusterprobe.runners import pipeline
from clusterprobe.runners.ema import Ema
from clusterprobe.runners.models import create_model, load_checkpoint
from clusterprobe.runners.train import train
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.tracking import Tracker

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net():
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))


def test_debiased_average_after_a_few_steps():
    net, d = _net(), 0.9
    ema = Ema(net, d)
    rng = np.random.default_rng(0)
    seen: dict[str, list[np.ndarray]] = {}
    for _ in range(4):
        with torch.no_grad():
            for tensor in net.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.from_numpy(rng.normal(size=tuple(tensor.shape))))
        net.state_dict()["1.num_batches_tracked"].add_(1)
        for name, tensor in net.state_dict().items():
            seen.setdefault(name, []).append(tensor.detach().numpy().copy())
        ema.update(net)
    got = ema.averaged_state(net)
    t = 4
    for name, values in seen.items():
        if name.endswith("num_batches_tracked"):  # integer buffer: the model's own
            assert int(got[name]) == 4
            continue
        # weights proportional to d^(t - i), i = 1..t: the zero-started average / (1 - d^t)
        ref = sum((1 - d) * d ** (t - i) * w for i, w in enumerate(values, 1)) / (1 - d**t)
        np.testing.assert_allclose(got[name].numpy(), ref, rtol=1e-6, atol=1e-7)
    assert {"1.running_mean", "1.running_var"} <= set(ema.shadow)  # BatchNorm buffers too
    # one step: the average is that step's weights, not (1 - d) of them
    fresh = Ema(net, d)
    fresh.update(net)
    for name, tensor in fresh.averaged_state(net).items():
        torch.testing.assert_close(tensor, net.state_dict()[name])


def test_state_dict_round_trip_and_the_raw_model_untouched():
    net = _net()
    ema = Ema(net, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ema.update(net)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    again = Ema(_net(), 0.99)
    again.load_state_dict(ema.state_dict())
    for name, tensor in ema.averaged_state(net).items():
        torch.testing.assert_close(again.averaged_state(net)[name], tensor)
    averaged = ema.averaged_model(net)
    assert not torch.equal(averaged[0].weight, net[0].weight)
    torch.testing.assert_close(net[0].weight, before["0.weight"] + 1.0)
    with pytest.raises(ValueError, match="EMA decay 1.0: must be in"):
        Ema(net, 1.0)


def test_a_run_measures_and_saves_the_ema_weights(store, tiny_config):
    """The stored embeddings and checkpoint are the EMA model's, not the raw model's."""
    config = tiny_config.replace(ema=0.9, eval_epochs=(), epochs=2)
    result = pipeline.run(config, store, quiet=True)
    tracker = Tracker(store)
    # the same training, again, by hand: the raw model and its EMA
    resolved, data = pipeline.prepare(config)
    model = create_model(resolved, data.num_superclasses, data.image_size)
    ema = Ema(model, 0.9)
    train(model, data, resolved, torch.device("cpu"), quiet=True, ema=ema)
    averaged = ema.averaged_model(model).eval()
    images = torch.stack([data.eval[i][0] for i in range(len(data.eval))])

    def last_block_pooled(net):
        feats: dict = {}
        handle = net.layer4.register_forward_hook(lambda m, i, o: feats.update(x=o))
        with torch.no_grad():
            net(images)
        handle.remove()
        return feats["x"].mean(dim=(2, 3)).numpy()

    eval_run = result.eval_run_ids[-1]
    last = len(result.layers) - 1
    stored = np.load(
        Path(tracker.artifact_path(eval_run, f"{cv.ART_EMBED_DIR}/pooled_{last:02d}.npy"))
    )
    np.testing.assert_allclose(stored, last_block_pooled(averaged), rtol=1e-4, atol=1e-5)
    assert np.abs(stored - last_block_pooled(model)).max() > 1e-3  # not the raw weights
    saved = load_checkpoint(Path(tracker.artifact_path(result.train_run_id, cv.ART_CHECKPOINT_DIR)))
    for name, tensor in averaged.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor)
    params = tracker.client.get_run(result.train_run_id).data.params
    assert params["ema"] == "0.9" and params["optimizer"] == "sgd" and params["lr"] == "0.4"
