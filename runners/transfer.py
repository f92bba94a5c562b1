"""Transfer clustering: how a trained model's layers cluster an out-of-distribution set.

The paper's transfer protocol (finding 5): images of another dataset go through the
model, every tapped layer is reduced to pooled features (global average
pool; token mean for ViTs), L2-normalised, and clustered as one whole dataset
(no superclasses) into #classes x factor clusters, factors 1..10 by default; each
partition is scored against the transfer set's class labels (AMI, purity) with
:func:`clusterprobe.runners.engine.whole.score_layers`. Beside the clustering, the
linear and k-NN probes of ``run``'s evals (``engine.probe``) are fitted per layer on
one part of a seeded stratified split of the set and scored on the other
(``probe_acc``, ``knn_acc``: the paper's transfer accuracy, finding 6).

:func:`transfer_scores` is the measurement (pure results); :func:`transfer_run`
loads a model from a source (``runners.sources``: a train run's checkpoint, a weights
file, timm's pretrained weights), measures and records a new eval run nested under
the source's run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
from clusterprobe.runners import evalrun
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

DEFAULT_FACTORS = tuple(range(1, 11))
PROBE_TEST_FRACTION = 0.5  # of each class: the probes train on the other half


@dataclass
class TransferResult:
    """Scores of every layer on one transfer set."""

    scores: evalrun.LayerScores  # one "superclass" (None): the whole set
    num_images: int
    num_classes: int
    params: dict[str, str] = field(default_factory=dict)  # how the clustering was made
    seconds: dict[str, float] = field(default_factory=dict)
    pooled: list[np.ndarray] = field(default_factory=list)  # per layer float32 [N, C_l]


def transfer_scores(
    model,
    taps,
    data,
    factors=DEFAULT_FACTORS,
    *,
    device,
    method: str = "auto",
    precision: str = "fp32",
    batch_size: int = 256,
    seed: int = 0,
    probe_split: tuple[np.ndarray, np.ndarray] | None = None,
    quiet: bool = True,
) -> TransferResult:
    """Pooled features of every tap on ``data`` (a TransferData), clustered whole per layer;
    with ``probe_split`` (train rows, test rows), probe and k-NN accuracy per layer too."""
    from clusterprobe.runners.engine.embed import pooled_features
    from clusterprobe.runners.engine.whole import score_layers

    factors = tuple(sorted({int(f) for f in factors}))
    t0 = time.perf_counter()
    pooled = pooled_features(
        model,
        taps,
        data.images,
        device=device,
        precision=precision,
        batch_size=batch_size,
        quiet=quiet,
    )
    seconds = {"embed": time.perf_counter() - t0}
    _say(quiet, f"pooled features of {len(data.labels)} images: {seconds['embed']:.1f} s")
    t0 = time.perf_counter()
    ami, purity, params = score_layers(
        pooled,
        data.labels,
        factors,
        method=method,
        seed=seed,
        on_layer=lambda li, row: _say(quiet, f"layer {li} ({taps[li].name}): AMI f1 {row[0]:.3f}"),
    )
    seconds["cluster"] = time.perf_counter() - t0
    probe_acc, knn_acc = [], []
    if probe_split is not None:
        t0 = time.perf_counter()
        probe_acc, knn_acc = transfer_probes(
            pooled, data.labels, probe_split, seed=seed, device=device
        )
        seconds["probe"] = time.perf_counter() - t0
    scores = evalrun.LayerScores(
        layer_names=[t.name for t in taps],
        superclasses=[None],
        factors=factors,
        ami=ami[:, None, :],
        purity=purity[:, None, :],
        probe_acc=probe_acc,
        knn_acc=knn_acc,
    )
    return TransferResult(
        scores=scores,
        num_images=int(len(data.labels)),
        num_classes=int(len(np.unique(data.labels))),
        params=params,
        seconds=seconds,
        pooled=[np.ascontiguousarray(x, dtype=np.float32) for x in pooled],
    )


def transfer_probes(
    pooled, labels, split, *, seed: int = 0, device="cpu"
) -> tuple[list[float], list[float]]:
    """Linear-probe and k-NN accuracy per layer: fitted on the pooled features of the
    ``split[0]`` rows, scored on the ``split[1]`` rows (class labels), on ``device`` (the
    run's, as `measure` fits them)."""
    from clusterprobe.runners.engine.probe import knn_layers, probe_layers

    labels = np.asarray(labels)
    train, test = split
    train_x = [np.asarray(x)[train] for x in pooled]
    test_x = [np.asarray(x)[test] for x in pooled]
    probe = probe_layers(train_x, labels[train], test_x, labels[test], seed=seed, device=device)
    knn = knn_layers(train_x, labels[train], test_x, labels[test], device=device)
    return [float(a) for a in probe], [float(a) for a in knn]


@dataclass(frozen=True)
class TransferRequest:
    """Which transfer set, and how to embed and cluster it."""

    source: str  # a folder root/<class>/<images>, or a torchvision dataset name
    data_dir: str | None = None
    download: bool = False
    per_class: int | None = None  # images per class (None: all)
    factors: tuple[int, ...] = DEFAULT_FACTORS
    method: str = "auto"
    device: str = "auto"
    batch_size: int = 256
    image_size: int | None = None  # None: the model's (a train run's, or its data config's)


def transfer_run(tracker, source, request: TransferRequest, *, quiet: bool = True):
    """Measure the transfer set with ``source``'s model (``runners.sources``: a train run's
    final checkpoint, a weights file, timm's pretrained weights) and record a new eval run
    nested under the source's run. Images are prepared as the source's config says: a
    train run's image size with timm's normalisation of its arch; weights made elsewhere
    with timm's data config (``data.preprocess``). Everything is read and checked before
    the eval run exists: bad input stores nothing (weights get their model run first, as
    in ``eval``). Returns ``(TransferResult, new eval run id, parent run id)``."""
    from clusterprobe.runners import models
    from clusterprobe.runners.data.preprocess import resolve
    from clusterprobe.runners.data.transfer import load_transfer
    from clusterprobe.runners.device import resolve_device

    config = source.base_config().replace(device=request.device)
    if request.image_size is not None:
        config = config.replace(image_size=request.image_size)
    config = config.validate()
    seed = config.seed
    device = resolve_device(config.device)
    pre = resolve(config, native_size=source.image_size() or 224)
    data = load_transfer(
        request.source,
        data_dir=request.data_dir,
        per_class=request.per_class,
        seed=config.seed,
        download=request.download,
        preprocess=pre,
    )
    loaded = source.load(config, data, device)
    factors = tuple(sorted(set(request.factors) | {1}))
    split = _probe_split(data, seed)
    _say(
        quiet,
        f"{loaded.label} ({config.arch}) on {data.name}: {len(data.labels)} images, "
        f"{data.num_classes} classes, factors {','.join(map(str, factors))}",
    )
    result = transfer_scores(
        loaded.model,
        models.layer_taps(loaded.model, config),
        data,
        factors,
        device=device,
        method=request.method,
        batch_size=request.batch_size,
        seed=seed,
        probe_split=split,
        quiet=quiet,
    )
    tracker.reap_orphans()
    parent = source.parent_run_id(tracker)
    spec = evalrun.EvalSpec(
        parent_run_id=parent,
        # the model's design; the images' preparation is the transfer set's own
        design={**evalrun.design_params(loaded.params), "taps": config.taps, **pre.params()},
        checkpoint_epoch=loaded.checkpoint_epoch,
        eval_set=data.name,
        protocol="whole",
        run_name=f"transfer {data.name} {loaded.label}",
        tags={cv.TAG_DEVICE: str(device)},
        extra={
            "factors": ",".join(map(str, factors)),
            "transfer.source": request.source,
            "transfer.images": str(result.num_images),
            "transfer.classes": str(result.num_classes),
            "probe_train_images": str(len(split[0])),
            "transfer.probe_test_images": str(len(split[1])),
            "transfer.probe_split": f"stratified test_fraction={PROBE_TEST_FRACTION} seed={seed}",
        },
        dataset=_dataset_record(data),
    )
    with evalrun.start_eval_run(tracker, spec) as ctx:
        evalrun.record_scores(
            ctx, result.scores, {f"whole.{k}": v for k, v in result.params.items()}
        )
        # one "superclass", the whole set: export and rescore --method read these
        evalrun.log_embeddings(ctx, result.pooled, np.zeros_like(data.labels), data.labels)
    return result, ctx.run_id, parent


def _probe_split(data, seed: int):
    """The probes' seeded stratified split of the transfer set; a set it cannot split
    is bad input (one line, nothing stored)."""
    from clusterprobe.runners.engine.probe import stratified_split

    try:
        return stratified_split(data.labels, PROBE_TEST_FRACTION, seed)
    except ValueError as err:
        raise UsageError(f"transfer set {data.name}: {err} (the transfer probes)") from None


def _dataset_record(data) -> dict:
    return {
        **data.record,
        "name": data.name,
        "classes": data.class_names,
        "images_per_class": np.bincount(data.labels).tolist(),
    }


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[transfer] {message}", file=sys.stderr, flush=True)
