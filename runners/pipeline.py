"""The main job: train a model, measure every layer of its checkpoints, record it all.

``run(config, store)`` is the one function behind ``clusterprobe run`` and every
Optuna trial. It owns the I/O; the science lives in the stages it calls::

    data   registry.load_dataset      -> HierarchicalData
    model  models.create_model        -> timm model, layer_taps -> [Tap]
    train  train.train                -> per-epoch metrics (train run, step = epoch)
    embed  embed.embed_eval           -> per-superclass Gram matrices + pooled vectors
    ward   cluster.cluster_protocol   -> AMI / purity per (layer, superclass, factor)
    probe  probe.probe_layers         -> linear-probe accuracy per layer

Every eval run also logs its cluster assignments and ARI tables (runners.stability):
layer x layer; the final checkpoint against each earlier one; and the final
checkpoint against up to MAX_SEED_RUNS earlier runs that differ only in the seed.

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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.record import dataset_params, dataset_record
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.conventions import PARAM_DEAD_LAYERS, PARAM_PROTOCOL, TAG_DEAD_LAYERS
from clusterprobe.tracker.errors import UsageError

EVAL_SPLIT = "eval"
# RunConfig fields that do not change what a final checkpoint's clustering measures
# (besides the seed, which is what a seed comparison varies): where and how fast it
# ran, what else was saved, which intermediate checkpoints were also measured.
NON_DESIGN_PARAMS = frozenset(
    {"seed", "device", "workers", "save", "eval_epochs", "data_dir", "breeds_info", "download"}
)
MAX_SEED_RUNS = 5  # seed ARI against at most this many (most recent) matching runs


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


@dataclass
class Measurement:
    """One checkpoint measured on the eval split (pure results, nothing stored yet)."""

    layer_names: list[str]
    factors: tuple[int, ...]
    ami: np.ndarray  # [L, S, F]
    purity: np.ndarray  # [L, S, F]
    superclasses: list[int]
    probe_acc: list[float]  # per layer
    pixel_ami_f1: float
    embedding: object  # runners.embed.Embedding
    protocol: object  # runners.cluster.ProtocolResult
    cluster_params: dict
    seconds: dict[str, float]

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def mean_ami(self) -> np.ndarray:
        return self.ami.mean(axis=1)  # [L, F]

    def mean_purity(self) -> np.ndarray:
        return self.purity.mean(axis=1)

    def summary(self) -> dict[str, float]:
        return summarise(
            self.mean_ami()[:, self.factors.index(1)], self.probe_acc, self.pixel_ami_f1
        )

    def layers(self) -> list[dict]:
        f1 = self.factors.index(1)
        ami, pur = self.mean_ami(), self.mean_purity()
        return [
            {
                "index": i,
                "name": name,
                "relative_depth": relative_depth(i, self.num_layers),
                "ami_f1": float(ami[i, f1]),
                "purity_f1": float(pur[i, f1]),
                "probe_acc": float(self.probe_acc[i]) if self.probe_acc else float("nan"),
            }
            for i, name in enumerate(self.layer_names)
        ]


def relative_depth(index: int, num_layers: int) -> float:
    return (index + 1) / num_layers


def summarise(ami_f1: np.ndarray, probe_acc, pixel_ami_f1: float | None) -> dict[str, float]:
    """The eval run's summary metrics (tracker.conventions.SUMMARY_METRICS)."""
    ami_f1 = np.asarray(ami_f1, dtype=float)
    best = int(np.nanargmax(ami_f1))
    out = {"best_ami": float(ami_f1[best]), "best_layer": float(best)}
    if probe_acc is not None and len(probe_acc):
        out["best_probe_acc"] = float(np.nanmax(probe_acc))
    if pixel_ami_f1 is not None:
        out["pixel_ami_f1"] = float(pixel_ami_f1)
    return out


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


def probe_indices(labels, per_subclass: int, seed: int) -> np.ndarray:
    """Up to ``per_subclass`` train images of every subclass, seeded, in index order."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in np.unique(labels.subclass):
        idx = np.flatnonzero(labels.subclass == k)
        picks.append(rng.permutation(idx)[:per_subclass])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


# --- measurement: one checkpoint, pure results ------------------------------------------


def measure(
    model, config: RunConfig, data, device, *, probe_index: np.ndarray, quiet: bool = False
) -> Measurement:
    """Embed the eval split, cluster every layer per superclass, probe every layer."""
    from clusterprobe.runners.cluster import cluster_protocol
    from clusterprobe.runners.embed import embed_eval, pooled_features
    from clusterprobe.runners.models import layer_taps
    from clusterprobe.runners.probe import probe_layers

    factors = tuple(sorted(set(config.factors) | {1}))  # f1 always: best_ami is defined on it
    model.eval()
    taps = layer_taps(model, config)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    emb = embed_eval(
        model,
        taps,
        data.eval,
        data.eval_labels,
        device=device,
        precision=config.precision,
        batch_size=config.batch_size,
        quiet=quiet,
    )
    seconds["embed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sub = {s: data.eval_labels.subclass[idx] for s, idx in emb.eval_index.items()}
    result = cluster_protocol(emb.grams, sub, factors)
    pixels = cluster_protocol(emb.pixel_grams, sub, (1,))
    pixel_ami = float(np.mean(pixels.ami))  # [1, S, 1]: one "layer", factor 1
    seconds["cluster"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probe_acc: list[float] = []
    if len(probe_index):
        train_pooled = pooled_features(
            model,
            taps,
            data.train_plain,
            probe_index,
            device=device,
            precision=config.precision,
            batch_size=config.batch_size,
        )
        probe_acc = [
            float(a)
            for a in probe_layers(
                train_pooled,
                data.train_labels.subclass[probe_index],
                emb.pooled,
                data.eval_labels.subclass,
                seed=config.seed,
            )
        ]
    seconds["probe"] = time.perf_counter() - t0

    return Measurement(
        layer_names=list(emb.layer_names),
        factors=factors,
        ami=np.asarray(result.ami, dtype=float),
        purity=np.asarray(result.purity, dtype=float),
        superclasses=list(result.superclasses),
        probe_acc=probe_acc,
        pixel_ami_f1=pixel_ami,
        embedding=emb,
        protocol=result,
        cluster_params=dict(getattr(result, "params", {}) or {}),
        seconds=seconds,
    )


# --- tables written as artifacts ----------------------------------------------------------


def layer_metrics_table(
    run_id: str,
    layer_names: list[str],
    superclasses: list[int],
    factors: tuple[int, ...],
    ami: np.ndarray,
    purity: np.ndarray,
    probe_acc: list[float] | None,
) -> pd.DataFrame:
    """Tidy rows (LAYER_METRICS_COLUMNS): per (layer, superclass, factor) ami and purity,
    then per layer probe_acc with superclass and factor NULL. Means are left to SQL."""
    n = len(layer_names)
    rows = []
    for i, name in enumerate(layer_names):
        depth = relative_depth(i, n)
        for j, s in enumerate(superclasses):
            for k, f in enumerate(factors):
                rows.append((run_id, i, name, depth, s, f, "ami", float(ami[i, j, k])))
                rows.append((run_id, i, name, depth, s, f, "purity", float(purity[i, j, k])))
        if probe_acc:
            rows.append((run_id, i, name, depth, None, None, cv.PROBE_METRIC, float(probe_acc[i])))
    df = pd.DataFrame(rows, columns=list(cv.LAYER_METRICS_COLUMNS))
    df["layer_index"] = df["layer_index"].astype("int64")
    df["superclass"] = df["superclass"].astype("Int64")  # nullable: NULL in SQL
    df["factor"] = df["factor"].astype("Int64")
    df["value"] = df["value"].astype("float64")
    return df


def layers_json(layer_names: list[str], kinds: list[str] | None = None) -> list[dict]:
    n = len(layer_names)
    out = [
        {"index": i, "name": name, "relative_depth": relative_depth(i, n)}
        for i, name in enumerate(layer_names)
    ]
    if kinds:
        for entry, kind in zip(out, kinds, strict=True):
            entry["kind"] = kind
    return out


def per_layer_metric_series(
    factors, mean_ami: np.ndarray, mean_purity: np.ndarray, probe_acc
) -> dict[str, list[float]]:
    """metric name -> value per layer (step = layer index)."""
    series: dict[str, list[float]] = {}
    for k, f in enumerate(factors):
        series[cv.ami_metric(f)] = [float(v) for v in mean_ami[:, k]]
        series[cv.purity_metric(f)] = [float(v) for v in mean_purity[:, k]]
    if probe_acc:
        series[cv.PROBE_METRIC] = [float(v) for v in probe_acc]
    return series


def log_layer_series(ctx, series: dict[str, list[float]]) -> None:
    """Every per-layer metric, step = layer index, in one batched call."""
    ctx.log_metric_table(series)


# --- recording ----------------------------------------------------------------------------


def record_measurement(
    ctx, meas: Measurement, data, config: RunConfig, *, probe_index: np.ndarray | None = None
) -> dict[str, float]:
    """Log one Measurement into the open eval run ``ctx``; returns its summary."""
    emb = meas.embedding
    params = {f"cluster.{k}": str(v) for k, v in meas.cluster_params.items()}
    params.update({f"embed.{k}": str(v) for k, v in (getattr(emb, "params", {}) or {}).items()})
    params["eval_factors"] = ",".join(map(str, meas.factors))
    params[PARAM_PROTOCOL] = "per_superclass"
    if probe_index is not None:
        params["probe_train_images"] = str(len(probe_index))
    dead: dict[int, set[int]] = {}
    for source in (emb.dead or {}, getattr(meas.protocol, "dead", {}) or {}):
        for layer, sups in source.items():
            dead.setdefault(int(layer), set()).update(int(s) for s in sups)
    dead = {k: sorted(v) for k, v in dead.items() if v}
    if dead:
        names = ", ".join(f"{i} ({meas.layer_names[i]})" for i in sorted(dead))
        warnings.warn(
            f"dead layers (all-zero activations for some images): {names}",
            RuntimeWarning,
            stacklevel=2,
        )
        params[PARAM_DEAD_LAYERS] = ",".join(map(str, sorted(dead)))
        ctx.set_tags({TAG_DEAD_LAYERS: _json({str(k): v for k, v in dead.items()})})
    ctx.log_params(params)

    series = per_layer_metric_series(
        meas.factors, meas.mean_ami(), meas.mean_purity(), meas.probe_acc
    )
    log_layer_series(ctx, series)
    summary = meas.summary()
    ctx.log_metrics({**summary, **{f"seconds_{k}": v for k, v in meas.seconds.items()}})

    ctx.log_parquet(
        layer_metrics_table(
            ctx.run_id,
            meas.layer_names,
            meas.superclasses,
            meas.factors,
            meas.ami,
            meas.purity,
            meas.probe_acc,
        ),
        cv.ART_LAYER_METRICS,
    )
    ctx.log_json(layers_json(meas.layer_names), cv.ART_LAYERS)
    ctx.log_json(dataset_record(data), cv.ART_DATASET_RECORD)
    if "embeddings" in config.save:
        for i, pooled in enumerate(emb.pooled):
            ctx.log_numpy(
                np.ascontiguousarray(pooled, dtype=np.float32),
                f"{cv.ART_EMBED_DIR}/pooled_{i:02d}.npy",
            )
        ctx.log_parquet(eval_labels_frame(data), f"{cv.ART_EMBED_DIR}/labels.parquet")
    if "distances" in config.save:
        for s in sorted(emb.grams):
            ctx.log_numpy(
                np.asarray(emb.grams[s], dtype=np.float32), f"{cv.ART_DIST_DIR}/gram_{s:03d}.npy"
            )
            if s in emb.pixel_grams:
                ctx.log_numpy(
                    np.asarray(emb.pixel_grams[s], dtype=np.float32),
                    f"{cv.ART_DIST_DIR}/pixel_{s:03d}.npy",
                )
        ctx.log_parquet(distance_index_frame(emb, data), f"{cv.ART_DIST_DIR}/index.parquet")
    if "plots" in config.save:
        from clusterprobe.runners.plots import layer_profile

        fig = layer_profile(
            meas.layer_names,
            meas.mean_ami(),
            meas.factors,
            meas.probe_acc,
            pixel_ami=meas.pixel_ami_f1,
            title=_plot_title(config, data),
        )
        ctx.log_figure(fig, cv.ART_PLOT)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return summary


def eval_labels_frame(data) -> pd.DataFrame:
    n = len(data.eval_labels.superclass)
    return pd.DataFrame(
        {
            "eval_index": np.arange(n, dtype=np.int64),
            "superclass": np.asarray(data.eval_labels.superclass, dtype=np.int64),
            "subclass": np.asarray(data.eval_labels.subclass, dtype=np.int64),
        }
    )


def distance_index_frame(emb, data) -> pd.DataFrame:
    """Which eval image each row of gram_{s}.npy is: (superclass, row, eval_index, subclass)."""
    parts = []
    for s in sorted(emb.eval_index):
        idx = np.asarray(emb.eval_index[s], dtype=np.int64)
        parts.append(
            pd.DataFrame(
                {
                    "superclass": np.full(len(idx), s, dtype=np.int64),
                    "row": np.arange(len(idx), dtype=np.int64),
                    "eval_index": idx,
                    "subclass": np.asarray(data.eval_labels.subclass, dtype=np.int64)[idx],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _plot_title(config: RunConfig, data) -> str:
    variant = "shuffled" if data.shuffled else "natural"
    return f"{config.arch} on {data.name} ({variant}), seed {config.seed}"


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


# --- stability: ARI between cluster assignments ----------------------------------------


def record_stability(ctx, meas: Measurement, *, earlier: dict | None = None, seed_runs=()) -> int:
    """Log assignments.parquet and ari.parquet on the open eval run ``ctx``.

    ari.parquet holds the layer x layer rows, 'checkpoint' rows against each of
    ``earlier`` (eval run id -> (assignments, factors), kept in memory by ``run``)
    and 'seed' rows against each of ``seed_runs`` (run id -> (assignments, factors),
    see :func:`find_seed_runs`). Returns the number of ARI rows.
    """
    from clusterprobe.runners import stability

    t0 = time.perf_counter()
    assignments = meas.protocol.assignments
    eval_index = meas.embedding.eval_index
    ctx.log_parquet(
        stability.assignments_frame(assignments, meas.factors, eval_index), cv.ART_ASSIGNMENTS
    )
    tables = [stability.layer_ari_rows(ctx.run_id, assignments, meas.factors)]
    for kind, others in (("checkpoint", earlier or {}), ("seed", dict(seed_runs or {}))):
        for other_id, (other_assign, other_factors) in others.items():
            try:
                tables.append(
                    stability.cross_ari_rows(
                        ctx.run_id,
                        other_id,
                        kind,
                        assignments,
                        other_assign,
                        meas.factors,
                        other_factors,
                    )
                )
            except (KeyError, ValueError, UsageError) as err:
                # Another run's stored assignments that do not line up with ours (other
                # layers or superclasses): a warning, never a failed run.
                warnings.warn(
                    f"{kind} ARI: skipped run {other_id}: {type(err).__name__}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
    table = pd.concat(tables, ignore_index=True)
    ctx.log_parquet(table, cv.ART_ARI)
    ctx.log_metrics({"seconds_ari": time.perf_counter() - t0})
    return len(table)


def design_keys(params: dict[str, str]) -> list[str]:
    """The params two eval runs must share for their clusterings to differ only by the
    seed: the run's params (RunConfig fields and what data went in) less
    NON_DESIGN_PARAMS, plus which checkpoint, evaluation set and protocol."""
    keys = set(params) - NON_DESIGN_PARAMS
    keys |= {cv.PARAM_CHECKPOINT_EPOCH, cv.PARAM_EVAL_SET, PARAM_PROTOCOL, "cluster.algorithm"}
    return sorted(keys)


def find_seed_runs(tracker, run_id: str, params: dict[str, str], eval_index: dict) -> dict:
    """Earlier FINISHED eval runs of the same design (``design_keys``) with another seed.

    ``params`` are the eval run ``run_id``'s params as logged. Returns run id ->
    (assignments, factors) for at most MAX_SEED_RUNS of them, most recent first, that
    stored assignments of the same eval images (``eval_index``). A run whose artifact
    cannot be read is skipped with a warning: this never fails the run.
    """
    from clusterprobe.runners import stability

    keys = design_keys(params)
    narrow = ("arch", "epochs", "dataset_digest", cv.PARAM_CHECKPOINT_EPOCH)
    try:
        candidates = tracker.search_runs(
            kind="eval",
            status="FINISHED",
            filter_string=" and ".join(
                f"params.{k} = '{params[k]}'" for k in narrow if "'" not in params.get(k, "'")
            ),
            order_by=["attributes.start_time DESC"],
        )
    except Exception as err:  # a store hiccup must not fail a finished measurement
        warnings.warn(
            f"seed ARI skipped: cannot search the store: {err}", RuntimeWarning, stacklevel=2
        )
        return {}
    out: dict = {}
    for run in candidates:
        if len(out) >= MAX_SEED_RUNS:
            break
        other = run.data.params
        if (
            run.info.run_id == run_id
            or cv.TAG_SOURCE_RUN in run.data.tags
            or other.get("seed") == params.get("seed")
            or any(other.get(k) != params.get(k) for k in keys)
        ):
            continue
        loaded = _load_assignments(tracker, run.info.run_id)
        if loaded is None:
            continue
        assignments, factors, index = loaded
        if not stability.same_images(eval_index, index):
            continue  # other eval images (e.g. another eval subset): not comparable
        out[run.info.run_id] = assignments, factors
    return out


def _load_assignments(tracker, run_id: str):
    from clusterprobe.runners import stability

    try:
        path = tracker.artifact_path(run_id, cv.ART_ASSIGNMENTS)
        assignments, factors, index = stability.assignments_from_frame(pd.read_parquet(path))
    except FileNotFoundError:
        return None  # a run logged before assignments were recorded: nothing to compare
    except Exception as err:
        warnings.warn(
            f"seed ARI: skipped run {run_id}: cannot read its {cv.ART_ASSIGNMENTS}: {err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return assignments, factors, index


# --- the main job ------------------------------------------------------------------------


def run(
    config: RunConfig,
    store,
    *,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train, measure and record one model; see the module docstring.

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
