"""Canned DuckDB queries vs MLflow's own API on a store of 10,000 eval runs.

    python benchmarks/queries.py                 # 10,000 runs x 30 layers x 12 metrics
    python benchmarks/queries.py --runs 1000     # smaller, quicker

The store is made faithfully: MLflow (through the tracker) creates the schema and
the experiment, then runs, tags, params, metrics and latest_metrics rows are bulk
inserted into MLflow's own SQLite tables with sqlite3 executemany, as MLflow would
write them; each eval run gets its layer_metrics.parquet artifact (per superclass)
in the run's artifact folder (500 of them also an ari.parquet), and a real Optuna
study links trials to train runs.

Timed in one process on the same store:
* ours: `connect` (attach + snapshot, once) and every canned query warm (median of 3);
* baseline: `layer_profile` + `best_layers` through `mlflow.search_runs` (all eval
  runs) + `MlflowClient.get_metric_history` per run and metric (on a random sample of
  runs, extrapolated linearly to all of them) + pandas. The per-layer values the two
  paths read are compared on the sample.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

ARCHS = ("resnet18", "resnet50", "vgg16", "vgg16_bn", "vit_small_patch16_224")
DATASETS = ("synthetic", "cifar100", "entity13")
FACTORS = (1, 2, 3, 4, 5)
SUPERCLASSES = 4
CHECKPOINTS = (5, 10, 15)  # eval runs per train run: 3 checkpoints + 1 transfer set
EPOCHS = 15


def _metric_names() -> list[str]:
    return (
        [f"ami_f{f}" for f in FACTORS]
        + [f"purity_f{f}" for f in FACTORS]
        + ["probe_acc", "knn_acc"]
    )


def build(root: Path, n_eval: int, n_layers: int, seed: int = 0) -> dict:
    """Write the store; returns counts."""
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    rng = np.random.default_rng(seed)
    store = local_store(root)
    tracker = Tracker(store)  # MLflow builds the schema
    exp_id = tracker.experiment_id()
    location = tracker.client.get_experiment(exp_id).artifact_location
    per_train = len(CHECKPOINTS) + 1
    n_train = max(1, n_eval // per_train)
    now = int(time.time() * 1000)
    runs, tags, params, metrics, latest = [], [], [], [], []
    names = _metric_names()
    eval_ids: list[str] = []
    train_ids: list[str] = []
    counts = {"runs": 0, "metric_rows": 0, "param_rows": 0}

    def add_run(run_id, kind, status="FINISHED", parent=None):
        runs.append(
            (run_id, f"{kind}-{run_id[:6]}", "LOCAL", "bench", "", "bench", status, now, now + 1000,
             "", "active", f"{location}/{run_id}/artifacts", int(exp_id), None)
        )  # fmt: skip
        tags.append(("clusterprobe.kind", kind, run_id))
        tags.append(("mlflow.user", "bench", run_id))
        tags.append(("mlflow.source.type", "LOCAL", run_id))
        if parent:
            tags.append(("mlflow.parentRunId", parent, run_id))

    layer_frames = []
    for t in range(n_train):
        config = RunConfig(
            arch=ARCHS[t % len(ARCHS)],
            dataset=DATASETS[(t // len(ARCHS)) % len(DATASETS)],
            shuffled=bool((t // 15) % 2),
            labels=("superclass", "subclass")[(t // 30) % 2],
            seed=t // 60,
            epochs=EPOCHS,
        )
        base = config.to_params()
        train_id = uuid.uuid4().hex
        add_run(train_id, "train")
        params.extend((k, v, train_id) for k, v in base.items())
        for epoch in range(1, EPOCHS + 1):
            for key, value in (("train_loss", 1 / epoch), ("train_acc", 0.9), ("lr", 0.1)):
                metrics.append((key, value, now + epoch, train_id, epoch, 0))
        for key, value in (("train_loss", 1 / EPOCHS), ("train_acc", 0.9), ("lr", 0.1)):
            latest.append((key, value, now + EPOCHS, EPOCHS, 0, train_id))
        shift = 0.25 if config.shuffled else 0.0
        for k in range(per_train):
            if len(eval_ids) >= n_eval:
                break
            epoch = CHECKPOINTS[k] if k < len(CHECKPOINTS) else EPOCHS
            eval_set = f"{config.dataset}:eval" if k < len(CHECKPOINTS) else "flowers:test"
            run_id = uuid.uuid4().hex
            eval_ids.append(run_id)
            add_run(run_id, "eval", parent=train_id)
            run_params = {**base, "checkpoint_epoch": str(epoch), "eval_set": eval_set}
            params.extend((key, v, run_id) for key, v in run_params.items())
            # per superclass [S, L] per metric; MLflow gets the mean over superclasses
            depth = np.arange(n_layers) / n_layers
            for key in names:
                if key == "probe_acc" or key == "knn_acc":
                    values = np.clip(0.4 + 0.5 * depth + rng.normal(0, 0.05, n_layers), 0, 1)
                    per_sc = None
                else:
                    per_sc = np.clip(
                        shift
                        + 0.4 * depth * (1 - depth)
                        + rng.random((SUPERCLASSES, n_layers)) * 0.2,
                        0,
                        1,
                    )
                    values = per_sc.mean(axis=0)
                for i, v in enumerate(values):
                    metrics.append((key, float(v), now + 5, run_id, i, 0))
                latest.append((key, float(values[-1]), now + 5, n_layers - 1, 0, run_id))
                if per_sc is not None:
                    metric, factor = key.rsplit("_f", 1)
                    layer_frames.append((run_id, metric, int(factor), per_sc))
        if len(layer_frames) > 2000 or t == n_train - 1:
            _write_layer_tables(root, location, layer_frames, n_layers)
            layer_frames = []
            counts["metric_rows"] += len(metrics)
            counts["param_rows"] += len(params)
            counts["runs"] += len(runs)
            _insert(store.db_path, runs, tags, params, metrics, latest)
            train_ids.extend(r[0] for r in runs if r[1].startswith("train"))
            for rows in (runs, tags, params, metrics, latest):
                rows.clear()
    _study(store, train_ids[:100])
    return {**counts, "eval_runs": len(eval_ids), "eval_ids": eval_ids}


def _insert(db_path, runs, tags, params, metrics, latest) -> None:
    db = sqlite3.connect(db_path)
    with db:
        db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        db.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        db.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "VALUES (?,?,?,?,?,?)",
            latest,
        )
    db.close()


def _write_layer_tables(root, location, frames, n_layers) -> None:
    """One layer_metrics.parquet per eval run (ami/purity per superclass, long format)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_run: dict[str, list] = {}
    for run_id, metric, factor, per_sc in frames:
        by_run.setdefault(run_id, []).append((metric, factor, per_sc))
    folder = Path(location.removeprefix("file://"))
    layer = np.tile(np.arange(n_layers), SUPERCLASSES)
    sc = np.repeat(np.arange(SUPERCLASSES), n_layers)
    for run_id, items in by_run.items():
        cols = {k: [] for k in ("layer_index", "superclass", "factor", "metric", "value")}
        for metric, factor, per_sc in items:
            cols["layer_index"].append(layer)
            cols["superclass"].append(sc)
            cols["factor"].append(np.full(layer.size, factor))
            cols["metric"].append(np.full(layer.size, metric))
            cols["value"].append(per_sc.reshape(-1))
        li = np.concatenate(cols["layer_index"])
        table = pa.table(
            {
                "run_id": np.full(li.size, run_id),
                "layer_index": li,
                "layer_name": np.char.add("layer", li.astype(str)),
                "relative_depth": (li + 1) / n_layers,
                "superclass": np.concatenate(cols["superclass"]),
                "factor": np.concatenate(cols["factor"]),
                "metric": np.concatenate(cols["metric"]),
                "value": np.concatenate(cols["value"]),
            }
        )
        out = folder / run_id / "artifacts"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "layer_metrics.parquet")


def ensure_ari(root: Path, n_runs: int = 500, n_layers: int = 30, seed: int = 0) -> int:
    """ari.parquet (layer x layer and seed-pair ARI) on the first final eval runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    db = sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True)
    rows = db.execute(
        """SELECT r.run_uuid, r.artifact_uri FROM runs r
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'clusterprobe.kind' AND t.value = 'eval'
        JOIN params p ON p.run_uuid = r.run_uuid AND p.key = 'checkpoint_epoch' AND p.value = ?
        ORDER BY r.run_uuid LIMIT ?""",
        (str(EPOCHS), n_runs),
    ).fetchall()
    db.close()
    rng = np.random.default_rng(seed)
    la, lb = np.meshgrid(np.arange(n_layers), np.arange(n_layers), indexing="ij")
    written = 0
    for k, (run_id, uri) in enumerate(rows):
        path = Path(uri.removeprefix("file://")) / "ari.parquet"
        if path.exists():
            continue
        other = rows[(k + 1) % len(rows)][0]
        layer = np.where(la == lb, 1.0, rng.random(la.shape)).reshape(-1)
        table = pa.table(
            {
                "run_id": [run_id] * (la.size + n_layers),
                "other_run_id": [run_id] * la.size + [other] * n_layers,
                "kind": ["layer"] * la.size + ["seed"] * n_layers,
                "layer_a": np.concatenate([la.reshape(-1), np.arange(n_layers)]),
                "layer_b": np.concatenate([lb.reshape(-1), np.arange(n_layers)]),
                "factor": np.ones(la.size + n_layers, dtype=np.int64),
                "value": np.concatenate([layer, rng.random(n_layers)]),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        written += 1
    return written


def _study(store, train_ids: list[str]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="bench", storage=store.optuna_url, direction="maximize")
    for run_id in train_ids:
        trial = study.ask()
        trial.suggest_categorical("arch", list(ARCHS))
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        trial.set_user_attr("mlflow_run_id", run_id)
        study.tell(trial, random.random())


# --- timing ---------------------------------------------------------------------


def time_ours(root: Path, repeats: int = 3) -> tuple[float, dict[str, float], object]:
    from clusterprobe.queries.canned import query_names, run_query
    from clusterprobe.queries.connect import connect

    start, start_cpu = time.perf_counter(), time.process_time()
    analysis = connect(root)
    connect_s = time.perf_counter() - start
    print(f"  connect: {connect_s:.2f} s wall, {time.process_time() - start_cpu:.2f} s CPU")
    times = {}
    for name in query_names():
        run_query(analysis, name).fetchall()  # warm-up
        samples, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            rows = run_query(analysis, name).fetchall()
            samples.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        times[name] = statistics.median(samples)
        print(
            f"  {name:32s} {times[name]:7.3f} s wall, {statistics.median(cpu):6.3f} s CPU "
            f"({len(rows)} rows)",
            flush=True,
        )
    return connect_s, times, analysis


def time_mlflow(root: Path, sample: int, n_eval: int, seed: int = 0):
    """layer_profile + best_layers the MLflow way; get_metric_history on a sample."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = "sqlite:///" + str(root / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("clusterprobe")
    start = time.perf_counter()
    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string="tags.`clusterprobe.kind` = 'eval' AND attributes.status = 'FINISHED'",
        max_results=100_000,
    )
    search_s = time.perf_counter() - start
    assert len(runs) == n_eval, (len(runs), n_eval)
    picked = runs.sample(n=min(sample, len(runs)), random_state=seed)
    start = time.perf_counter()
    rows = []
    for run_id in picked["run_id"]:
        for key in _metric_names():
            for m in client.get_metric_history(run_id, key):
                rows.append((run_id, key, m.step, m.value))
    history_s = time.perf_counter() - start
    start = time.perf_counter()
    values = pd.DataFrame(rows, columns=["run_id", "key", "layer_index", "value"])
    design = picked.set_index("run_id")
    values = values.join(design[["params.dataset", "params.arch", "params.shuffled",
                                 "params.taps", "params.labels", "params.checkpoint_epoch",
                                 "params.epochs", "params.eval_set"]], on="run_id")  # fmt: skip
    final = values[
        (values["params.checkpoint_epoch"] == values["params.epochs"])
        & values.apply(lambda r: r["params.eval_set"].startswith(r["params.dataset"]), axis=1)
    ]
    split = final["key"].str.extract(r"^(.*?)(?:_f(\d+))?$")
    final = final.assign(metric=split[0], factor=split[1])
    keys = ["params.dataset", "params.shuffled", "params.arch", "params.taps", "params.labels"]
    final.groupby([*keys, "layer_index", "metric", "factor"], dropna=False)["value"].agg(
        ["mean", "std", "count"]
    )
    ami = final[final.metric == "ami"].sort_values(
        ["value", "layer_index"], ascending=[False, True]
    )
    best = ami.groupby(["run_id", "factor"]).head(1)
    best.groupby([*keys, "factor"])["layer_index"].agg(["mean", "std", "count"])
    pandas_s = time.perf_counter() - start
    return search_s, history_s, pandas_s, len(picked), values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="eval runs (default 10,000)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--sample", type=int, default=100, help="runs for get_metric_history")
    parser.add_argument("--dir", default=None, help="store folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store folder")
    args = parser.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="cp-bench-")) / "mlruns"
    try:
        if not (root / "mlflow.db").exists():
            start = time.perf_counter()
            info = build(root, args.runs, args.layers)
            print(
                f"store: {info['runs']} runs ({info['eval_runs']} eval x {args.layers} layers x "
                f"{len(_metric_names())} metrics), {info['metric_rows']:,} metric rows, "
                f"{info['param_rows']:,} param rows; built in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        n_ari = ensure_ari(root, n_layers=args.layers)
        if n_ari:
            print(f"wrote ari.parquet on {n_ari} final eval runs (seed_stability reads them)")
        print(f"{os.cpu_count()} cores visible; load average {os.getloadavg()[0]:.1f} at start")
        print("ours (DuckDB, warm, median of 3):")
        connect_s, times, analysis = time_ours(root)
        n_eval = analysis.sql("SELECT count(*) FROM evals WHERE status = 'FINISHED'").fetchone()[0]
        # The runs layer_profile/best_layers read (final checkpoint, own eval set): a
        # search_runs filter could select them, so only their histories are extrapolated.
        n_used = analysis.sql("SELECT count(*) FROM final_evals").fetchone()[0]
        print("baseline (mlflow.search_runs + get_metric_history + pandas):", flush=True)
        search_s, history_s, pandas_s, n_sample, values = time_mlflow(root, args.sample, n_eval)
        per_run = history_s / n_sample
        history_all = per_run * n_used
        mlflow_s = search_s + history_all + pandas_s * n_used / n_sample
        print(f"  search_runs over {n_eval} eval runs: {search_s:.2f} s")
        print(
            f"  get_metric_history: {history_s:.2f} s for {n_sample} runs x "
            f"{len(_metric_names())} metrics = {per_run * 1000:.0f} ms/run -> "
            f"{history_all:.0f} s extrapolated to the {n_used} runs the two queries read"
        )
        print(f"  pandas on the sample: {pandas_s:.3f} s (scaled linearly)")
        # Same values on the sample: MLflow's histories vs the layer_scores view.
        ours = analysis.sql(
            "SELECT run_id, metric || coalesce('_f' || factor, '') AS key, layer_index, value "
            "FROM layer_scores"
        ).df()
        check = values.merge(ours, on=["run_id", "key", "layer_index"], suffixes=("", "_ours"))
        assert len(check) == len(values)
        diff = float(np.abs(check["value"] - check["value_ours"]).max())
        print(f"  sample values vs layer_scores: {len(check)} rows, max |diff| = {diff:.2e}")
        ours_s = times["layer_profile"] + times["best_layers"]
        print(
            f"layer_profile + best_layers: ours {ours_s:.3f} s warm "
            f"({ours_s + connect_s:.2f} s with connect) vs MLflow {mlflow_s:.0f} s (extrapolated): "
            f"{mlflow_s / ours_s:,.0f}x warm, {mlflow_s / (ours_s + connect_s):,.0f}x with connect"
        )
        slowest = max(times, key=times.get)
        print(f"slowest canned query: {slowest} {times[slowest]:.3f} s")
        analysis.close()
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
