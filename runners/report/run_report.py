"""The report of one eval run: what each layer's representation clusters, on one page.

Read back from the store (``evalrun.stored``), never from memory, so ``clusterprobe
report`` on an old run and the report every ``run`` logs are the same page:

* the layer profile: mean AMI at every factor beside linear-probe and k-NN accuracy
  and the raw-pixel baseline (``runners.plots.layer_profile``);
* AMI per superclass x layer (the smallest factor, 1 in every run of the paper's protocol);
* ARI between the layers' clusterings (ari.parquet, kind 'layer'), where recorded;
* the summary metrics, the per-layer numbers, the run's design choices and how it
  was measured, and the dataset it measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from clusterprobe.runners.evalrun import stored
from clusterprobe.runners.report import figures, page
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError


@dataclass
class LayerTable:
    """An eval run's layer_metrics.parquet, reshaped for drawing."""

    names: list[str]
    factors: list[int]
    superclasses: list  # ids, or [None] for a whole-dataset clustering
    mean_ami: np.ndarray  # [L, F]: mean over superclasses
    ami: np.ndarray  # [S, L] at factors[0]
    probe_acc: list[float]  # per layer; empty where not measured
    knn_acc: list[float]


def layer_table(frame: pd.DataFrame, names: list[str]) -> LayerTable:
    """Reshape tidy layer_metrics rows (LAYER_METRICS_COLUMNS) into per-layer arrays."""
    n = len(names)
    ami = frame[frame["metric"] == "ami"]
    if ami.empty:
        raise ValueError("layer_metrics holds no AMI rows")
    factors = sorted(int(f) for f in ami["factor"].dropna().unique())
    sup = ami["superclass"].astype("float64")  # NULL (a whole-set clustering) -> NaN
    superclasses = sorted(int(s) for s in sup.dropna().unique()) or [None]
    key = sup.fillna(-1).astype(int)
    mean = np.full((n, len(factors)), np.nan)
    for k, f in enumerate(factors):
        at = ami[ami["factor"] == f].groupby("layer_index")["value"].mean()
        mean[at.index.to_numpy(dtype=int), k] = at.to_numpy()
    per_sup = np.full((len(superclasses), n), np.nan)
    first = ami[ami["factor"] == factors[0]]
    for j, s in enumerate(superclasses):
        rows = first[key[first.index] == (-1 if s is None else s)]
        per_sup[j, rows["layer_index"].to_numpy(dtype=int)] = rows["value"].to_numpy()

    def layer_series(metric: str) -> list[float]:
        rows = frame[frame["metric"] == metric].sort_values("layer_index")
        return [float(v) for v in rows["value"]] if len(rows) == n else []

    return LayerTable(
        names=names,
        factors=factors,
        superclasses=superclasses,
        mean_ami=mean,
        ami=per_sup,
        probe_acc=layer_series(cv.PROBE_METRIC),
        knn_acc=layer_series(cv.KNN_METRIC),
    )


def layer_ari(frame: pd.DataFrame | None, num_layers: int) -> tuple[int, np.ndarray] | None:
    """(factor, [L, L]) ARI between the run's layers at its smallest factor, from
    ari.parquet rows of kind 'layer'; None where there are none."""
    if frame is None:
        return None
    rows = frame[frame["kind"] == "layer"]
    if rows.empty:
        return None
    factor = int(rows["factor"].min())
    rows = rows[rows["factor"] == factor]
    matrix = np.full((num_layers, num_layers), np.nan)
    matrix[rows["layer_a"].to_numpy(dtype=int), rows["layer_b"].to_numpy(dtype=int)] = rows[
        "value"
    ].to_numpy()
    return factor, matrix


def resolve_eval_run(tracker, run_id: str) -> str:
    """The eval run a report of ``run_id`` shows: itself, or a train run's final
    checkpoint's eval run (its highest checkpoint_epoch)."""
    run = tracker.open_run(run_id)
    kind = run.data.tags.get(cv.TAG_KIND)
    if kind == "eval":
        return run_id
    if kind in ("train", "model"):
        evals = tracker.search_runs(kind="eval", parent_run_id=run_id, status="FINISHED")
        if not evals:
            raise UsageError(f"RUN_ID {run_id!r}: this {kind} run has no finished eval run")
        last = max(
            evals,
            key=lambda r: (_epoch(r.data.params.get(cv.PARAM_CHECKPOINT_EPOCH)), r.info.start_time),
        )
        return last.info.run_id
    raise UsageError(
        f"RUN_ID {run_id!r} is a {kind or 'non-clusterprobe'} run; give an eval run or a "
        "train run (or use --study NAME for a study)"
    )


def _epoch(value: str | None) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def eval_run_report(tracker, run_id: str) -> str:
    """The HTML report of eval run ``run_id`` (module docstring)."""
    run = stored.open_eval_run(tracker, run_id)
    names = stored.layer_names(tracker, run_id)
    try:
        table = layer_table(stored.load_layer_metrics(tracker, run_id), names)
    except ValueError as err:
        raise UsageError(f"run {run_id}: unreadable {cv.ART_LAYER_METRICS} ({err})") from None
    params, metrics = run.data.params, run.data.metrics
    labels = [f"{i} {name}" for i, name in enumerate(names)]
    pixel = metrics.get("pixel_ami_f1")
    title = run.info.run_name or run_id
    from clusterprobe.runners.plots import layer_profile

    sections = [
        page.Section("Summary", anchor="summary").add(_summary(metrics)),
        page.Section("Layer profile", anchor="profile").add(
            page.figure(
                layer_profile(
                    names,
                    table.mean_ami,
                    table.factors,
                    table.probe_acc or None,
                    knn_acc=table.knn_acc,
                    pixel_ami=pixel,
                    title=f"{params.get('arch', '')}: AMI at every factor"
                    + (", probe and k-NN accuracy" if table.probe_acc else ""),
                ),
                "layer profile: AMI per factor, probe and k-NN accuracy, pixel baseline",
            )
        ),
        _ami_section(table, labels),
        _ari_section(layer_ari(stored.load_ari(tracker, run_id), len(names)), labels),
        page.Section("Per layer", anchor="layers").add(_layer_rows(table)),
        _params_section(params),
    ]
    dataset = stored.dataset_record(tracker, run_id)
    if dataset:
        sections.append(page.Section("Dataset", anchor="dataset").add(_dataset(dataset)))
    meta = (
        f"eval run {run_id}; model {params.get('arch', '?')} "
        f"from {params.get(cv.PARAM_MODEL_SOURCE, 'trained')}, checkpoint epoch "
        f"{params.get(cv.PARAM_CHECKPOINT_EPOCH, '?')}; eval set "
        f"{params.get(cv.PARAM_EVAL_SET, '?')}, protocol {params.get(cv.PARAM_PROTOCOL, '?')}"
    )
    return page.render(f"clusterprobe report: {title}", meta, sections)


def _summary(metrics) -> str:
    rows = [(name, metrics[name]) for name in cv.SUMMARY_METRICS if name in metrics]
    return page.table(("metric", "value"), rows)


def _ami_section(table: LayerTable, labels: list[str]) -> page.Section:
    factor = table.factors[0]
    rows = ["all" if s is None else str(s) for s in table.superclasses]
    how = "the whole set clustered at once" if rows == ["all"] else "Ward inside each superclass"
    fig = figures.heatmap(
        table.ami,
        rows,
        labels,
        title=f"AMI f{factor} per superclass and layer ({how})",
        xlabel="layer",
        ylabel="superclass",
        value_label=f"AMI f{factor}",
    )
    return page.Section("AMI per superclass x layer", anchor="ami").add(
        page.figure(fig, f"AMI f{factor} heat map, superclass x layer ({how})")
    )


def _ari_section(ari, labels: list[str]) -> page.Section:
    section = page.Section("ARI between layers", anchor="ari")
    if ari is None:
        return section.add(page.note(f"this run has no layer x layer ARI ({cv.ART_ARI})"))
    factor, matrix = ari
    fig = figures.heatmap(
        matrix,
        labels,
        labels,
        title=f"ARI between the layers' Ward clusterings, factor {factor} (mean over superclasses)",
        xlabel="layer",
        ylabel="layer",
        value_label="ARI",
        vmin=min(0.0, float(np.nanmin(matrix))),
        vmax=1.0,
    )
    return section.add(page.figure(fig, f"layer x layer ARI matrix, factor {factor}"))


def _layer_rows(table: LayerTable) -> str:
    columns = ["layer", "name", *(f"AMI f{f}" for f in table.factors)]
    columns += ["probe acc"] * bool(table.probe_acc) + ["k-NN acc"] * bool(table.knn_acc)
    rows = []
    for i, name in enumerate(table.names):
        row = [i, name, *(float(v) for v in table.mean_ami[i])]
        for values in (table.probe_acc, table.knn_acc):
            if values:  # a re-scored or transfer run may have no probes
                row.append(values[i])
        rows.append(row)
    return page.table(columns, rows)


def _params_section(params) -> page.Section:
    design = sorted((k, v) for k, v in params.items() if cv.is_design_param(k))
    how = sorted((k, v) for k, v in params.items() if not cv.is_design_param(k))
    return (
        page.Section("Design choices", anchor="design")
        .add(page.table(("param", "value"), design))
        .add("<h3>How it was measured, and where it ran</h3>")
        .add(page.table(("param", "value"), how))
    )


def _dataset(record: dict) -> str:
    rows = [(k, v if isinstance(v, str | int | float) else str(v)) for k, v in record.items()]
    return page.table(("field", "value"), rows)
