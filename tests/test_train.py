"""Training loop: schedule, seeding, loss going down, both label levels, both batch paths."""

from __future__ import annotations

import math

import pytest
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import synthetic
from clusterprobe.runners.device import resolve_device
from clusterprobe.runners.models import create_model
from clusterprobe.runners.train import lr_at, seed_everything, train
from clusterprobe.tracker.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CFG = RunConfig(
    classes=2, subclasses=2, train_per_subclass=16, eval_per_subclass=2, image_size=16,
    epochs=4, batch_size=16, lr=0.4, warmup_epochs=1, seed=3,
)  # fmt: skip


def _run(cfg, data=None, **kw):
    data = data or synthetic.load(cfg)
    seed_everything(cfg.seed)
    n = data.num_superclasses if cfg.labels == "superclass" else data.num_subclasses
    model = create_model(cfg, n, data.image_size)
    return model, train(model, data, cfg, torch.device("cpu"), quiet=True, **kw)


def test_lr_schedule_warmup_then_cosine():
    total, warmup, peak = 100, 10, 0.2
    lrs = [lr_at(s, total, warmup, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(0.02) and lrs[9] == pytest.approx(0.2)
    assert lrs[10] == pytest.approx(0.2)
    assert lrs[55] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.5 * peak * (1 + math.cos(math.pi * 89 / 90)))


def test_training_reduces_loss_and_reports_every_epoch():
    seen = []
    model, history = _run(CFG, on_epoch=lambda e, s: seen.append((e, s)))
    assert [e for e, _ in seen] == [1, 2, 3, 4] and [s for _, s in seen] == history
    assert set(history[0]) == {"train_loss", "train_acc", "lr"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[0]["lr"] == pytest.approx(0.4 * 16 / 256)  # end of warm-up: the peak
    assert history[-1]["lr"] < history[0]["lr"]
    assert not model.training


def test_same_seed_same_weights():
    cfg = CFG.replace(epochs=1)
    data = synthetic.load(cfg)
    m1, h1 = _run(cfg, data)
    m2, h2 = _run(cfg, data)
    assert h1 == h2
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_subclass_labels_and_dataloader_path():
    cfg = CFG.replace(epochs=1, labels="subclass")
    data = synthetic.load(cfg)

    class Plain(torch.utils.data.Dataset):  # no .batch(): the generic DataLoader path
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    data.train = Plain(data.train)
    model, history = _run(cfg, data)
    assert model.get_classifier().out_features == 4 and len(history) == 1
    assert 0.0 <= history[0]["train_acc"] <= 1.0


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UsageError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")
