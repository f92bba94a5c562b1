"""The main job: train a model, measure every layer of its checkpoints, record it all.

``run(config, store)`` is the one function behind ``clusterprobe run`` and every
Optuna trial. It owns the I/O; the science lives in the stages it calls::

    data   registry.load_dataset      -> HierarchicalData
    model  models.create_model        -> timm model, layer_taps -> [Tap]
    train  train.train                -> per-epoch metrics (train run, step = epoch)
    embed  embed.embed_eval           -> per-superclass Gram matrices + pooled vectors
    ward   cluster.cluster_protocol   -> AMI / purity per (layer, superclass, factor)
    probe  probe.probe_layers         -> linear-probe accuracy per layer

One checkpoint is measured by ``measure.measure`` (pure results) and written into
its eval run by ``recording.record_measurement``; ``stability_runs.record_stability``
adds its cluster assignments and ARI tables: layer x layer; the final checkpoint
against each earlier one; and against up to MAX_SEED_RUNS earlier runs that differ
only in the seed.

Runs (tracker.conventions): one ``train`` run; per evaluated checkpoint
(``config.eval_epochs`` plus the final one) one ``eval`` run nested under it that
repeats the train run's params. Everything happens inside the Tracker's run
contexts, so an exception ends the open runs FAILED (error tag) and Ctrl-C/SIGTERM
ends them KILLED; nothing is left RUNNING.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.record import dataset_params
from clusterprobe.runners.measure import measure, probe_indices
from clusterprobe.runners.recording import record_measurement
from clusterprobe.runners.stability_runs import find_seed_runs, record_stability
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.conventions import PARAM_PROTOCOL
from clusterprobe.tracker.errors import UsageError

EVAL_SPLIT = "eval"


@dataclass
class RunResult:
    """What one ``run`` produced; ``summary`` and ``layers`` are the final checkpoint's."""

    train_run_id: str
    eval_run_ids: list[str]
    summary: dict[str, float]
    layers: list[dict]  # per layer: index, name, relative_depth, ami_f1, purity_f1, probe_acc
    bytes_stored: int | None = None  # artifacts of all runs; None when the store is remote
    evaluations: dict[int, dict] = field(default_factory=dict)  # epoch -> summary
    history: list[dict] = field(default_factory=list)  # per-epoch training metrics
    seconds: dict[str, float] = field(default_factory=dict)  # train (incl. intermediate evals),
    # then the final checkpoint's embed, cluster, probe


# --- preparation: everything that can fail before a run is started -----------------------


def prepare(config: RunConfig):
    """Validate ``config`` and load its dataset; raises UsageError before anything is stored."""
    from clusterprobe.runners import models
    from clusterprobe.runners.data import registry

    config = config.validate()
    config = registry.canonical(config)
    models.model_config(config, num_classes=2)  # arch, stem and norm: UsageError if unknown
    _check_eval_epochs(config)
    data = registry.load_dataset(config)
    return config, data


def _check_eval_epochs(config: RunConfig) -> None:
    bad = [e for e in config.eval_epochs if not 1 <= e <= config.epochs]
    if bad:
        raise UsageError(
            f"--eval-epochs {','.join(map(str, bad))}: epochs must lie in 1..{config.epochs}"
        )


# --- the main job ------------------------------------------------------------------------


def run(
    config: RunConfig,
    store,
    *,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    on_start: Callable[[str], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train, measure and record one model; see the module docstring.

    ``on_start(train_run_id)`` is called as soon as the train run exists, before any
    training, so a caller (an Optuna trial) is linked to its run even if the run dies.
    ``on_eval(epoch, summary)`` is called inside each eval run after it is recorded
    (``config.eval_epochs`` and the final epoch); an exception from it (e.g.
    ``optuna.TrialPruned``) ends the eval and train runs FAILED and propagates.
    """
    from clusterprobe.runners import models
    from clusterprobe.runners.device import resolve_device
    from clusterprobe.runners.train import train
    from clusterprobe.tracker.tracking import Tracker

    config, data = prepare(config)
    device = resolve_device(config.device)
    tracker = Tracker(store)
    reaped = tracker.reap_orphans()
    if reaped and not quiet:
        _say(f"marked {len(reaped)} orphaned run(s) FAILED (their process is gone)")

    params = {**config.to_params(), **dataset_params(data)}
    num_classes = data.num_superclasses if config.labels == "superclass" else data.num_subclasses
    probe_index = probe_indices(data.train_labels, config.probe_per_subclass, config.seed)
    eval_set = f"{data.name}:{EVAL_SPLIT}"
    run_tags = {cv.TAG_DEVICE: str(device), **(tags or {})}
    eval_run_ids: list[str] = []
    evaluations: dict[int, dict] = {}
    seconds: dict[str, float] = {}
    final: dict = {}
    checkpoints: dict[str, tuple] = {}  # eval run id -> (assignments, factors), earlier epochs

    with tracker.start_run(
        "train",
        params=params,
        parent_run_id=parent_run_id,
        tags=run_tags,
        run_name=_run_name(config, data),
    ) as train_ctx:
        if on_start is not None:
            on_start(train_ctx.run_id)
        if not quiet:
            _say(
                f"train run {train_ctx.run_id}: {config.arch} on {data.name}"
                f"{' (shuffled)' if data.shuffled else ''}, {len(data.train_labels.superclass)}"
                f" train / {len(data.eval_labels.superclass)} eval images, device {device}"
            )
        model = models.create_model(config, num_classes, data.image_size).to(device)

        def evaluate(net, epoch: int) -> None:
            eval_params = {
                **params,
                cv.PARAM_CHECKPOINT_EPOCH: str(epoch),
                cv.PARAM_EVAL_SET: eval_set,
            }
            with tracker.start_run(
                "eval",
                params=eval_params,
                parent_run_id=train_ctx.run_id,
                tags=run_tags,
                run_name=f"eval e{epoch} {eval_set}",
            ) as eval_ctx:
                eval_run_ids.append(eval_ctx.run_id)
                if not quiet:
                    _say(f"eval run {eval_ctx.run_id}: checkpoint epoch {epoch}")
                meas = measure(net, config, data, device, probe_index=probe_index, quiet=quiet)
                summary = record_measurement(eval_ctx, meas, data, config, probe_index=probe_index)
                seed_runs = {}
                if epoch == config.epochs:
                    logged = {
                        **eval_params,
                        PARAM_PROTOCOL: "per_superclass",
                        "cluster.algorithm": str(meas.cluster_params.get("algorithm", "")),
                    }
                    seed_runs = find_seed_runs(
                        tracker, eval_ctx.run_id, logged, meas.embedding.eval_index
                    )
                record_stability(eval_ctx, meas, earlier=checkpoints, seed_runs=seed_runs)
                if epoch < config.epochs:
                    checkpoints[eval_ctx.run_id] = meas.protocol.assignments, meas.factors
                evaluations[epoch] = summary
                final.update(layers=meas.layers(), summary=summary, seconds=meas.seconds)
                if on_eval is not None:
                    on_eval(epoch, summary)

        def on_epoch(epoch: int, metrics: dict) -> None:
            train_ctx.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
            if epoch in config.eval_epochs and epoch < config.epochs:
                # Measure a frozen copy so the training loop's model and mode stay untouched.
                snapshot = copy.deepcopy(model)
                if "checkpoint" in config.save:
                    _log_checkpoint(
                        train_ctx,
                        models,
                        snapshot,
                        config,
                        num_classes,
                        data.image_size,
                        f"checkpoints/epoch_{epoch:03d}",
                    )
                evaluate(snapshot, epoch)
                del snapshot

        t0 = time.perf_counter()
        history = train(model, data, config, device, on_epoch=on_epoch, quiet=quiet)
        seconds["train"] = time.perf_counter() - t0
        train_ctx.log_metrics({"seconds_train": seconds["train"]}, step=config.epochs)
        if "checkpoint" in config.save:
            _log_checkpoint(
                train_ctx,
                models,
                model,
                config,
                num_classes,
                data.image_size,
                cv.ART_CHECKPOINT_DIR,
            )
        evaluate(model, config.epochs)

    return RunResult(
        train_run_id=train_ctx.run_id,
        eval_run_ids=eval_run_ids,
        summary=dict(final["summary"]),
        layers=final["layers"],
        bytes_stored=bytes_stored(tracker, [train_ctx.run_id, *eval_run_ids]),
        evaluations=evaluations,
        history=list(history or []),
        seconds={**seconds, **final["seconds"]},
    )


def _log_checkpoint(ctx, models, model, config, num_classes, image_size, artifact_dir: str) -> None:
    cfg = models.model_config(config, num_classes, image_size)
    with tempfile.TemporaryDirectory(prefix="clusterprobe-ckpt-") as tmp:
        paths = models.save_checkpoint(model, cfg, tmp)
        for path in paths:
            ctx.log_artifact(str(path), artifact_dir)


def _run_name(config: RunConfig, data) -> str:
    variant = "-shuffled" if data.shuffled else ""
    return f"{config.arch} {data.name}{variant} s{config.seed}"


def bytes_stored(tracker, run_ids: list[str]) -> int | None:
    """Total size of the runs' artifact folders, or None when they are not local files
    (never downloads a remote artifact store just to count bytes)."""
    total = 0
    for run_id in run_ids:
        root = tracker.artifact_dir(run_id)
        if root is None:
            return None
        if root.exists():
            total += sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return total


def _say(message: str) -> None:
    print(f"clusterprobe: {message}", file=sys.stderr, flush=True)
