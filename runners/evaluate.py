"""`clusterprobe eval`: measure a model you already have and record it as an eval run.

The model comes from a source (``runners.sources``): a stored train run's checkpoint
(``--from RUN_ID [--epoch N]``) or a weights file for a timm architecture
(``--weights FILE --arch NAME``). The config (the source's, overridden by the
command's flags: :func:`eval_config`), the data and the model are prepared and
checked first, so bad input stores nothing; then the eval run is opened under the
source's run and written as ``run`` writes its own (``pipeline.measure_into``),
with the layer x layer ARI tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from clusterprobe.runners import evalrun, pipeline
from clusterprobe.runners.config import TRAINING_FIELDS, RunConfig
from clusterprobe.runners.data.cli_args import FIELDS as DATA_FIELDS
from clusterprobe.runners.data.record import dataset_params, dataset_record, variant
from clusterprobe.runners.measure import probe_indices
from clusterprobe.tracker import conventions as cv

# What an eval stores by default: everything `run` stores for a checkpoint it measures.
EVAL_SAVE = ("embeddings", "distances", "plots")


@dataclass
class EvalResult:
    run_id: str  # the new eval run
    parent_run_id: str  # the train run or model run it is nested under
    source: str  # cv.MODEL_SOURCES
    scores: evalrun.LayerScores
    summary: dict[str, float]
    notes: list[str] = field(default_factory=list)


def eval_config(base: RunConfig, data_flags: dict, measure_flags: dict) -> RunConfig:
    """The source's config with the command's flags on top.

    ``--dataset`` starts the data over: none of the source's data options (class
    counts, images per subclass, shuffled, ...) carry over to another dataset, so it
    is the given flags and the defaults. Otherwise the source's data options stay
    (its own eval set) and the given data flags override them one by one. The device
    and what is saved are the command's (``auto``, EVAL_SAVE by default), never the
    source's.
    """
    if "dataset" in data_flags:
        fresh = RunConfig()
        base = base.replace(**{f: getattr(fresh, f) for f in DATA_FIELDS}, extra={})
    return base.replace(**{"device": "auto", "save": EVAL_SAVE, **data_flags, **measure_flags})


def eval_params(source, loaded, config: RunConfig, data) -> dict[str, str]:
    """The eval run's design params: the source's, then the config the model was measured
    with (a weights file's model was not trained here: no training fields), then the data."""
    own = config.to_params()
    if source.kind != "trained":
        own = {k: v for k, v in own.items() if k not in TRAINING_FIELDS}
    return {**loaded.params, **own, **dataset_params(data)}


def evaluate(
    tracker,
    source,
    *,
    data_flags: dict | None = None,
    measure_flags: dict | None = None,
    quiet: bool = True,
    on_start: Callable[[str], None] | None = None,
) -> EvalResult:
    """Measure ``source``'s model (an opened ``sources`` source) on its eval set and record
    a new eval run nested under the source's run. ``on_start(run_id)`` is called once the
    eval run exists (before that, a UsageError means nothing was stored)."""
    from clusterprobe.runners.device import resolve_device
    from clusterprobe.runners.evalrun.stability import record_stability

    config = eval_config(source.base_config(), data_flags or {}, measure_flags or {})
    config, data = pipeline.prepare(config)
    device = resolve_device(config.device)
    loaded = source.load(config, data, device)
    for note in loaded.notes:
        _say(quiet, note)
    tracker.reap_orphans()
    parent = source.parent_run_id(tracker)
    eval_set = f"{data.name}:{pipeline.EVAL_SPLIT}"
    spec = evalrun.EvalSpec(
        parent_run_id=parent,
        design=eval_params(source, loaded, config, data),
        checkpoint_epoch=loaded.checkpoint_epoch,
        eval_set=eval_set,
        protocol="per_superclass",
        run_name=f"eval {loaded.label} {eval_set}",
        tags={cv.TAG_DEVICE: str(device)},
        dataset=dataset_record(data),
    )
    probe_index = probe_indices(data.train_labels, config.probe_per_subclass, config.seed)
    with evalrun.start_eval_run(tracker, spec) as ctx:
        if on_start is not None:
            on_start(ctx.run_id)
        _say(quiet, f"eval run {ctx.run_id}: {config.arch} ({loaded.label}) on {eval_set}")
        meas, summary = pipeline.measure_into(
            ctx,
            loaded.model,
            config,
            data,
            device,
            probe_index=probe_index,
            head=loaded.head,
            title=f"{config.arch} ({loaded.label}) on {data.name} ({variant(data)})",
            quiet=quiet,
        )
        record_stability(ctx, meas.protocol.assignments, meas.factors, meas.embedding.eval_index)
        if "plots" in config.save:
            evalrun.log_report(ctx)  # last: it shows what the run stored
    return EvalResult(ctx.run_id, parent, source.kind, meas.scores, summary, loaded.notes)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"clusterprobe: {message}", file=sys.stderr, flush=True)
