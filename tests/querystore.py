"""A small store with known numbers for the query tests, written through the real Tracker.

Every run follows tracker/conventions.py as the pipeline does: train runs with
per-epoch metrics, eval runs nested under them with per-layer metrics (step =
layer index), summaries, layer_metrics.parquet (per superclass, written by the
eval run's own `layer_metrics_table`; the logged metric is the mean over
superclasses) and, on some runs, ari.parquet. Beside the store,
`truth` holds the per-layer values actually logged, so the tests compute every
canned query's answer independently with pandas.

Also in the store, to be excluded or handled by the views: a deleted eval run, a
RUNNING eval run, a rescored eval run, a re-logged metric (the later value wins),
a NaN metric, and an Optuna study whose trials point at train runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from clusterprobe.runners import recipes
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.engine.cka import CkaMatrices
from clusterprobe.runners.evalrun import LayerScores
from clusterprobe.runners.evalrun.tables import cka_frame, layer_metrics_table
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.store import Store
from clusterprobe.tracker.tracking import Tracker
from mlflow.entities import Metric

# arch -> (layers, seeds, hierarchies, evaluated epochs). vgg16_bn has one seed: its
# groups have n = 1 (std NULL). Only resnet18 has shuffled runs and an intermediate
# checkpoint (epoch 1), to keep the store small.
ARCHS = {
    "resnet18": (6, 2, (False, True), (1, 2)),
    "vgg16": (5, 2, (False,), (2,)),
    "vgg16_bn": (5, 1, (False,), (2,)),
    "vit_tiny_patch16_224": (4, 2, (False,), (2,)),
}
# resnet18 natural runs are also made with this learning rate (2 seeds, final checkpoint
# and a transfer set, ARI tables): a design that differs from the default one in one
# param alone, lr.
LR_VARIANT = 0.1


def _config(**fields) -> RunConfig:
    """A config with the optimiser values a run records, resolved as for a ResNet whatever
    the arch, so the runs here differ only in the params each test varies."""
    return recipes.resolve(RunConfig(**fields), "resnet")


DEFAULT_LR = _config().lr
FACTORS = (1, 2)
SUPERCLASSES = 2
EPOCHS = 2  # eval at epoch 1 (intermediate) and 2 (final)
TRANSFER_SET = "flowers:test"


@dataclass
class QueryStore:
    store: Store
    truth: pd.DataFrame  # one row per (eval run, layer, metric, factor): logged value
    evals: pd.DataFrame  # one row per eval run: design (arch, shuffled, labels, lr) + flags
    ari: pd.DataFrame  # rows of the ari.parquet files
    trials: pd.DataFrame  # study, number, state, value, run_id
    deleted_run: str
    running_run: str
    rescored_run: str
    repeated_run: str  # a second eval of a final checkpoint already evaluated
    relogged: tuple[str, float]  # (run_id, value that must win) for ami_f1 at layer 0


def _eval_values(rng, n_layers: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-superclass ami and purity, each [L, S, F] (layer, superclass, factor)."""
    ami = np.empty((n_layers, SUPERCLASSES, len(FACTORS)))
    purity = np.empty_like(ami)
    for k, _ in enumerate(FACTORS):
        ami[:, :, k] = np.clip(rng.random((SUPERCLASSES, n_layers)) * 0.5 + shift, 0, 1).T
        purity[:, :, k] = (rng.random((SUPERCLASSES, n_layers)) * 0.4 + 0.5).T
    return ami, purity


def build(store: Store) -> QueryStore:
    rng = np.random.default_rng(7)
    tracker = Tracker(store)
    truth, evals, ari_rows = [], [], []
    train_ids: dict[tuple, str] = {}

    def record_eval(train_id, params, names, *, shift, epoch, eval_set, tags=None, end=True):
        n = len(names)
        ami, purity = _eval_values(rng, n, shift)
        probe = rng.random(n) * 0.5 + 0.4
        ctx = tracker.start_run(
            "eval",
            params={**params, cv.PARAM_CHECKPOINT_EPOCH: str(epoch), cv.PARAM_EVAL_SET: eval_set},
            parent_run_id=train_id,
            tags=tags,
        )
        means = {}
        for k, f in enumerate(FACTORS):
            means[cv.ami_metric(f)] = ami[:, :, k].mean(axis=1)
            means[cv.purity_metric(f)] = purity[:, :, k].mean(axis=1)
        means[cv.PROBE_METRIC] = probe
        # One batch for every per-layer metric, as the pipeline logs them.
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(v), now, i)
            for key, series in means.items()
            for i, v in enumerate(series)
        ]
        tracker.client.log_batch(ctx.run_id, metrics=batch)
        best = int(np.argmax(means["ami_f1"]))
        ctx.log_metrics({"best_ami": means["ami_f1"][best], "best_layer": best})
        scores = LayerScores(names, list(range(SUPERCLASSES)), FACTORS, ami, purity, list(probe))
        ctx.log_parquet(layer_metrics_table(ctx.run_id, scores), cv.ART_LAYER_METRICS)
        if end:
            ctx.end("FINISHED")
        for key, series in means.items():
            metric, _, factor = key.partition("_f")
            for i, v in enumerate(series):
                truth.append((ctx.run_id, i, n, metric, int(factor) if factor else None, float(v)))
        return ctx, means

    for arch, (n_layers, seeds, hierarchies, epochs) in ARCHS.items():
        names = [f"{arch}.layer{i}" for i in range(n_layers)]
        for shuffled in hierarchies:
            for seed in range(seeds):
                config = _config(arch=arch, shuffled=shuffled, seed=seed, epochs=EPOCHS)
                params = {**config.to_params(), cv.PARAM_DATASET: "synthetic"}
                with tracker.start_run("train", params=params) as train:
                    for epoch in range(1, EPOCHS + 1):
                        train.log_metrics(
                            {"train_loss": 1.0 / epoch, "train_acc": 0.5 + 0.1 * epoch, "lr": 0.1},
                            step=epoch,
                        )
                    train_ids[(arch, shuffled, seed)] = train.run_id
                    shift = 0.3 if shuffled else 0.0  # finding 1, built in
                    for epoch in epochs:
                        ctx, means = record_eval(
                            train.run_id,
                            params,
                            names,
                            shift=shift,
                            epoch=epoch,
                            eval_set="synthetic:eval",
                        )
                        evals.append(
                            dict(
                                run_id=ctx.run_id,
                                train_run_id=train.run_id,
                                arch=arch,
                                shuffled=shuffled,
                                seed=seed,
                                labels="superclass",
                                checkpoint_epoch=epoch,
                                eval_set="synthetic:eval",
                                n_layers=n_layers,
                            )
                        )
                    train.log_metrics({"best_ami": 0.5}, step=EPOCHS)
        # ARI tables on the final natural eval runs of the two seeds (if there are two)
        pair = [
            e["run_id"]
            for e in evals
            if e["arch"] == arch and not e["shuffled"] and e["checkpoint_epoch"] == EPOCHS
        ]
        if len(pair) == 2:
            ari_rows.append(_write_ari(tracker, rng, pair, n_layers))

    variant = []
    for seed in range(2):
        config = _config(arch="resnet18", seed=seed, epochs=EPOCHS, lr=LR_VARIANT)
        params = {**config.to_params(), cv.PARAM_DATASET: "synthetic"}
        with tracker.start_run("train", params=params) as train:
            ctx, _ = record_eval(
                train.run_id,
                params,
                [f"resnet18.layer{i}" for i in range(6)],
                shift=0.1,
                epoch=EPOCHS,
                eval_set="synthetic:eval",
            )
        evals.append(
            dict(
                run_id=ctx.run_id,
                train_run_id=train.run_id,
                arch="resnet18",
                shuffled=False,
                seed=seed,
                labels="superclass",
                checkpoint_epoch=EPOCHS,
                eval_set="synthetic:eval",
                n_layers=6,
                lr=LR_VARIANT,
            )
        )
        variant.append(ctx.run_id)
        ctx, _ = record_eval(
            train.run_id,
            params,
            [f"resnet18.layer{i}" for i in range(6)],
            shift=0.1,
            epoch=EPOCHS,
            eval_set=TRANSFER_SET,
        )
        evals.append(
            dict(
                run_id=ctx.run_id,
                train_run_id=train.run_id,
                arch="resnet18",
                shuffled=False,
                seed=seed,
                labels="superclass",
                checkpoint_epoch=EPOCHS,
                eval_set=TRANSFER_SET,
                n_layers=6,
                lr=LR_VARIANT,
            )
        )
    ari_rows.append(_write_ari(tracker, rng, variant, 6))

    # transfer: resnet18 pre-trained on superclass labels (the train runs above) vs on
    # subclass labels (two new train runs), evaluated on another dataset
    for labels in ("superclass", "subclass"):
        for seed in range(2):
            config = _config(arch="resnet18", labels=labels, seed=seed, epochs=EPOCHS)
            params = {**config.to_params(), cv.PARAM_DATASET: "synthetic"}
            names = [f"resnet18.layer{i}" for i in range(6)]
            if labels == "superclass":
                train_id = train_ids[("resnet18", False, seed)]
            else:
                with tracker.start_run("train", params=params) as train:
                    train_id = train.run_id
            ctx, _ = record_eval(
                train_id,
                params,
                names,
                shift=0.2 if labels == "subclass" else 0.0,
                epoch=EPOCHS,
                eval_set=TRANSFER_SET,
            )
            evals.append(
                dict(
                    run_id=ctx.run_id,
                    train_run_id=train_id,
                    arch="resnet18",
                    shuffled=False,
                    seed=seed,
                    labels=labels,
                    checkpoint_epoch=EPOCHS,
                    eval_set=TRANSFER_SET,
                    n_layers=6,
                )
            )

    # the odd ones: deleted, still RUNNING, rescored, re-logged, NaN
    base = _config(arch="resnet18", epochs=EPOCHS)
    params = {**base.to_params(), cv.PARAM_DATASET: "synthetic"}
    names = [f"resnet18.layer{i}" for i in range(6)]
    parent = train_ids[("resnet18", False, 0)]
    deleted, _ = record_eval(
        parent, params, names, shift=5.0, epoch=EPOCHS, eval_set="synthetic:eval"
    )
    tracker.client.delete_run(deleted.run_id)
    running, _ = record_eval(
        parent, params, names, shift=5.0, epoch=EPOCHS, eval_set="synthetic:eval", end=False
    )
    rescored, _ = record_eval(
        parent,
        {**params, "protocol": "whole"},
        names,
        shift=5.0,
        epoch=EPOCHS,
        eval_set="synthetic:eval",
        tags={cv.TAG_SOURCE_RUN: evals[0]["run_id"]},
    )
    # A second eval of the same final checkpoint on the same set (`eval --from`): a
    # repeat, so the findings count that model once.
    time.sleep(0.01)  # started after the run's own eval
    repeated, _ = record_eval(
        parent, params, names, shift=5.0, epoch=EPOCHS, eval_set="synthetic:eval"
    )
    truth_df = pd.DataFrame(
        truth, columns=["run_id", "layer_index", "n_layers", "metric", "factor", "value"]
    )
    skip = {deleted.run_id, running.run_id, rescored.run_id, repeated.run_id}
    truth_df = truth_df[~truth_df["run_id"].isin(skip)].reset_index(drop=True)

    relog_run = evals[1]["run_id"]  # resnet18 natural seed 0, final checkpoint
    assert evals[1]["checkpoint_epoch"] == EPOCHS
    time.sleep(0.01)  # a later timestamp than the first value
    tracker.client.log_metric(relog_run, "ami_f1", 0.987, step=0)
    mask = (
        (truth_df["run_id"] == relog_run)
        & (truth_df["metric"] == "ami")
        & (truth_df["factor"] == 1)
        & (truth_df["layer_index"] == 0)
    )
    truth_df.loc[mask, "value"] = 0.987
    # A NaN per-layer metric: kept in `metrics`, left out of layer_scores.
    tracker.client.log_metric(evals[0]["run_id"], "knn_acc", float("nan"), step=0)

    study, trials = _study(store, train_ids)
    evals_df = pd.DataFrame(evals)
    evals_df["lr"] = evals_df["lr"].fillna(DEFAULT_LR)
    evals_df["dataset"] = "synthetic"
    evals_df["taps"] = "blocks"
    evals_df["is_final"] = evals_df["checkpoint_epoch"] == EPOCHS
    evals_df["is_transfer"] = evals_df["eval_set"] == TRANSFER_SET
    return QueryStore(
        store=store,
        truth=truth_df,
        evals=evals_df,
        ari=pd.concat(ari_rows, ignore_index=True),
        trials=trials,
        deleted_run=deleted.run_id,
        running_run=running.run_id,
        rescored_run=rescored.run_id,
        repeated_run=repeated.run_id,
        relogged=(relog_run, 0.987),
    )


ARI_COLUMNS = ("run_id", "other_run_id", "kind", "layer_a", "layer_b", "factor", "value")


def _write_ari(tracker: Tracker, rng, pair: list[str], n_layers: int) -> pd.DataFrame:
    """ari.parquet on two final eval runs of one design, as the pipeline writes them:
    layer x layer rows on each, seed rows on the first (against the second)."""
    frames = []
    for run_id in pair:
        rows = []
        for la in range(n_layers):
            if run_id == pair[0]:
                rows.append((run_id, pair[1], "seed", la, la, 1, float(rng.random())))
            for lb in range(n_layers):
                value = 1.0 if la == lb else float(rng.random())
                rows.append((run_id, run_id, "layer", la, lb, 1, value))
        frame = pd.DataFrame(rows, columns=list(ARI_COLUMNS))
        # Written into the ended run's artifact folder, as a later compare step would.
        path = tracker.artifact_path(run_id, cv.ART_LAYER_METRICS).with_name("ari.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        frames.append(frame)
        _write_cka(path.with_name(cv.ART_CKA), run_id, n_layers)
    return pd.concat(frames, ignore_index=True)


def _write_cka(path, run_id: str, n_layers: int) -> None:
    """cka.parquet (layer x layer, symmetric, 1 on the diagonal) with the project's writer;
    its own generator, so the other tables' draws stay as they were."""
    rng = np.random.default_rng(len(run_id) + n_layers)
    per = rng.random((SUPERCLASSES, n_layers, n_layers))
    per = (per + per.transpose(0, 2, 1)) / 2
    per[:, np.arange(n_layers), np.arange(n_layers)] = 1.0
    cka = CkaMatrices("linear", list(range(SUPERCLASSES)), per, per.mean(axis=0))
    cka_frame(run_id, run_id, "layer", cka).to_parquet(path, index=False)


def _study(store: Store, train_ids: dict) -> tuple[str, pd.DataFrame]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="qstudy", storage=store.optuna_url, direction="maximize")
    links = [
        ("resnet18", train_ids[("resnet18", False, 0)]),
        ("vgg16", train_ids[("vgg16", False, 1)]),
        ("vit_tiny_patch16_224", None),
    ]
    rows = []
    for i, (arch, run_id) in enumerate(links):
        study.enqueue_trial({"arch": arch, "epochs": i + 1})
        trial = study.ask()
        trial.suggest_categorical("arch", list(ARCHS))
        trial.suggest_int("epochs", 1, 5)
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        if i < 2:
            study.tell(trial, 0.1 * (i + 1))
            rows.append(("qstudy", i, "COMPLETE", 0.1 * (i + 1), run_id))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            rows.append(("qstudy", i, "PRUNED", None, None))
    return "qstudy", pd.DataFrame(rows, columns=["study", "number", "state", "value", "run_id"])
