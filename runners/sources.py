"""Where a measured model comes from: a train run of this store, a weights file, or
timm's pretrained weights.

``clusterprobe eval`` (and ``transfer``) measures one model from one source. Every
source answers the same questions, in this order, all but the last before anything
is stored:

* ``base_config()``: the RunConfig it implies, which the command's flags then
  override (``evaluate.eval_config``): a train run's own config, rebuilt from its
  params; for a weights file or pretrained weights, the defaults, its architecture
  and ``preprocess="model"`` (images prepared as the weights expect, timm's data
  config);
* ``load(config, data, device)``: a :class:`SourceModel`, the model in eval mode
  with what its head predicts on ``data`` (an eval set; a transfer set has no
  labels a head predicts) and the params that describe it;
* ``parent_run_id(tracker)``: the run its eval runs nest under: the train run, or
  the weights' ``model`` run (found by sha256, else created: the first write).

``kind`` is the eval run's ``model_source`` param (``tracker.conventions.MODEL_SOURCES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from clusterprobe.runners import models
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.measure import head_labels
from clusterprobe.runners.weights import WeightsFile
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError


@dataclass
class SourceModel:
    """A model ready to measure, and what its eval runs record about it."""

    model: torch.nn.Module  # eval mode, on the device
    cfg: dict  # models.model_config of it (num_classes = its head's width)
    head: str | None  # the labels of the eval set its head predicts (test_acc), or None
    params: dict[str, str]  # params of its eval runs, before the eval's own config
    checkpoint_epoch: str  # '' where it has none
    label: str  # a few words for run names and plot titles
    notes: list[str] = field(default_factory=list)  # what the user should be told


def _labelled(data) -> bool:
    """An eval set with superclass and subclass labels (a transfer set has neither)."""
    return hasattr(data, "eval_labels")


def _head_note(width: int, data, head: str | None, why_not: str = "") -> list[str]:
    if not _labelled(data):
        return []
    have = (
        f"the eval set has {data.num_superclasses} superclasses, {data.num_subclasses} subclasses"
    )
    if head is not None:
        return [f"classifier head: {width} outputs = {head} labels: test_acc on {head} labels"]
    return [f"classifier head: {width} outputs; {why_not or have}: no test_acc"]


def _check_size(cfg: dict, image_size: int, what: str) -> None:
    """A model built for one input size (ViT, Swin: ``models.sized_at_creation``) takes no
    other."""
    if models.sized_at_creation(cfg) and cfg.get("image_size") != image_size:
        raise UsageError(
            f"--image-size {image_size}: the {cfg['arch']} of {what} takes "
            f"{cfg.get('image_size')} px images"
        )


class TrainRunSource:
    """A stored train run's checkpoint: the final one, or the one saved at ``epoch``."""

    kind = "trained"

    def __init__(self, tracker, run_id: str, epoch: int | None = None):
        """Open the run and find the checkpoint; UsageError for anything amiss."""
        from clusterprobe.runners.checkpoints import saved_epochs, stored_checkpoint

        run = tracker.open_run(run_id)
        kind = run.data.tags.get(cv.TAG_KIND)
        if kind != "train":
            hint = {
                "eval": f"; give its train run, {run.data.tags.get(cv.TAG_PARENT)}",
                "model": "; measure its weights file with --weights",
            }.get(kind, "")
            raise UsageError(
                f"--from {run_id}: not a train run (kind {kind or 'none: not clusterprobe'}){hint}"
            )
        self.tracker, self.run_id, self.params = tracker, run_id, dict(run.data.params)
        self.epochs = int(self.params.get("epochs") or 0)
        self.epoch = None if epoch in (None, self.epochs) else epoch  # None: the final one
        if self.epoch is not None:
            saved = saved_epochs(tracker, run_id, self.epochs)  # None: remote, not listed
            if saved is not None and self.epoch not in saved:
                raise UsageError(
                    f"--epoch {epoch}: train run {run_id} stored no checkpoint at epoch {epoch}; "
                    f"saved: {', '.join(map(str, saved)) or 'none'} (run --eval-epochs saves more)"
                )
        self.folder = stored_checkpoint(tracker, run_id, self.epoch)
        self.run_name = run.info.run_name or run_id

    def base_config(self) -> RunConfig:
        return RunConfig.from_params(self.params)

    def image_size(self) -> int | None:
        """The image size the checkpoint's model was trained at."""
        return models.checkpoint_config(self.folder).get("image_size")

    def load(self, config: RunConfig, data, device) -> SourceModel:
        from clusterprobe.runners.checkpoints import load_stored_model

        model, cfg = load_stored_model(self.tracker, self.run_id, device, self.epoch)
        _check_size(cfg, data.image_size, f"train run {self.run_id}")
        width = int(cfg["num_classes"])
        # Its head's labels mean what they meant in training only on the same class lists.
        same_classes = _labelled(data) and data.digest() == self.params.get("dataset_digest")
        trained_on = self.params.get("labels") or "superclass"
        head = head_labels(width, data, trained_on) if same_classes else None
        why = "" if same_classes else "the eval set has other classes than it was trained on"
        epoch = self.epoch or self.epochs
        return SourceModel(
            model=model,
            cfg=cfg,
            head=head,
            params=self.params,
            checkpoint_epoch=str(epoch),
            label=f"e{epoch} of {self.run_name}",
            notes=_head_note(width, data, head, why),
        )

    def parent_run_id(self, tracker) -> str:
        return self.run_id


def _model_run(tracker, params: dict[str, str], match: tuple[str, ...], name: str) -> str:
    """The FINISHED ``model`` run whose params equal ``params`` on ``match`` (sha256 among
    them), created where none exists yet."""
    sha = params[cv.PARAM_WEIGHTS_SHA256]
    for run in tracker.search_runs(
        kind="model",
        status="FINISHED",
        filter_string=f"params.{cv.PARAM_WEIGHTS_SHA256} = '{sha}'",
    ):
        if all(run.data.params.get(k) == params[k] for k in match):
            return run.info.run_id
    with tracker.start_run("model", params=params, run_name=name) as ctx:
        pass  # a record of the weights; their measurements nest under it
    return ctx.run_id


def _model_params(cfg: dict, width: int) -> dict[str, str]:
    return {
        "arch": cfg["arch"],
        "stem": cfg["stem"],
        "norm": cfg["norm"],
        "pool": cfg.get("pool", "default"),
        "timm_name": cfg["timm_name"],
        "family": cfg["family"],
        "head_classes": str(width),
        "timm_version": cfg["timm_version"],
    }


def _file_params(path, sha256: str, size: int, fmt: str) -> dict[str, str]:
    return {
        cv.PARAM_WEIGHTS_PATH: str(path),
        cv.PARAM_WEIGHTS_SHA256: sha256,
        "weights_bytes": str(size),
        "weights_format": fmt,
    }


class WeightsSource:
    """A weights file (state dict) for a timm architecture, measured as it is."""

    kind = "weights"

    def __init__(
        self,
        weights: WeightsFile,
        arch: str,
        stem: str = "standard",
        norm: str = "default",
        pool: str = "default",
    ):
        self.weights, self.arch, self.stem, self.norm = weights, arch, stem, norm
        self.pool = pool
        self.model_params: dict[str, str] = {}

    def base_config(self) -> RunConfig:
        return RunConfig(
            arch=self.arch, stem=self.stem, norm=self.norm, pool=self.pool, preprocess="model"
        )

    def image_size(self) -> int | None:
        return None  # a state dict does not say; the preprocessing decides

    def load(self, config: RunConfig, data, device) -> SourceModel:
        """The model built with the file's own head width, so every tensor loads and the
        head is the file's (measured, and used for test_acc where it fits the labels);
        a file without a head gives a headless model."""
        from clusterprobe.runners import weights as wf

        probe = models.model_config(config, 0, data.image_size)  # UsageError: unknown arch
        classifier = models.classifier_name(probe)
        width = wf.head_width(self.weights.state, classifier)
        cfg = models.model_config(config, width, data.image_size)
        model = models.create_model(config, width, data.image_size)
        wf.load_into(model, self.weights, config.arch)
        head = head_labels(width, data) if width and _labelled(data) else None
        w = self.weights
        self.model_params = {
            **_model_params(cfg, width),
            **_file_params(w.path, w.sha256, w.size, w.format),
        }
        params = {**self.model_params, cv.PARAM_MODEL_SOURCE: self.kind}
        if head is not None:
            params["labels"] = head  # the labels its head predicts, as a train run's param
        why = f"the file holds no {classifier} tensors" if not width else ""
        return SourceModel(
            model=model.to(device).eval(),
            cfg=cfg,
            head=head,
            params=params,
            checkpoint_epoch="",
            label=f"{self.weights.path.name}",
            notes=_head_note(width, data, head, why),
        )

    def parent_run_id(self, tracker) -> str:
        """The model run of these weights (same sha256, arch, stem, norm and pool), created
        FINISHED where none exists yet. Call after :meth:`load`."""
        match = ("arch", "stem", "norm", "pool", cv.PARAM_WEIGHTS_SHA256)
        name = f"{self.arch} {self.weights.path.name}"
        return _model_run(tracker, self.model_params, match, name)


class PretrainedSource:
    """timm's pretrained weights for ``name`` (``arch.tag``), from the local Hugging Face
    cache (``runners.pretrained``); fetched first only with ``download``."""

    kind = "pretrained"

    def __init__(self, name: str, download: bool = False):
        """Find the cached file now: a missing one is bad input, found before any store."""
        from clusterprobe.runners import pretrained

        self.weights = pretrained.locate(name, download=download)
        self.model_params: dict[str, str] = {}

    def base_config(self) -> RunConfig:
        return RunConfig(arch=self.weights.name, preprocess="model")

    def image_size(self) -> int | None:
        return None  # timm's data config of the weights decides (preprocess "model")

    def load(self, config: RunConfig, data, device) -> SourceModel:
        """The model as timm builds it with these weights (its own head), read from the
        cached file with the network switched off; a model of a fixed input size built
        for the eval set's, its position embeddings resampled by timm."""
        from clusterprobe.runners import pretrained
        from clusterprobe.runners.weights import file_sha256

        w = self.weights
        cfg = models.model_config(config, w.num_classes, data.image_size)
        try:
            with pretrained.offline():
                model = models.build_model(cfg, pretrained_file=w.path)
        except UsageError:
            raise
        except Exception as err:
            raise UsageError(
                f"--pretrained {w.name}: timm could not load {w.path} at {data.image_size} px "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"
            ) from None
        fmt = "safetensors" if w.path.suffix == ".safetensors" else "torch"
        self.model_params = {
            **_model_params(cfg, w.num_classes),
            **_file_params(w.path, file_sha256(w.path), w.path.stat().st_size, fmt),
            cv.PARAM_PRETRAINED: w.name,
            cv.PARAM_HF_HUB_ID: w.hf_hub_id,
        }
        head = head_labels(w.num_classes, data) if w.num_classes and _labelled(data) else None
        params = {**self.model_params, cv.PARAM_MODEL_SOURCE: self.kind}
        if head is not None:
            params["labels"] = head
        return SourceModel(
            model=model.to(device).eval(),
            cfg=cfg,
            head=head,
            params=params,
            checkpoint_epoch="",
            label=w.name,
            notes=_head_note(w.num_classes, data, head),
        )

    def parent_run_id(self, tracker) -> str:
        """The model run of these weights (same sha256 and name), created FINISHED where
        none exists yet. Call after :meth:`load`."""
        match = ("arch", cv.PARAM_PRETRAINED, cv.PARAM_WEIGHTS_SHA256)
        return _model_run(tracker, self.model_params, match, f"{self.weights.name} (pretrained)")
