"""The main job: train a model, measure every layer of its checkpoints, record it all.

``run(config, store)`` is the one function behind ``clusterprobe run`` and every
Optuna trial. It owns the order of things; the work is done by::

    data     data.registry.load_dataset  -> HierarchicalData
    model    models.create_model         -> timm model
    train    train.train                 -> per-epoch metrics (train run, step = epoch)
    store    checkpoints, logged_model   -> checkpoints; the final one as a logged model
    measure  measure.measure             -> Measurement (engine: embed, cluster, probe)
    record   evalrun                     -> one eval run per measured checkpoint

Runs: one ``train`` run (its dataset as an MLflow input; its final checkpoint as an
MLflow logged model, when checkpoints are saved); per evaluated checkpoint
(``config.eval_epochs`` plus the final one) one ``eval`` run nested under it
(``evalrun``; the final one linked to the logged model), with the ARI tables:
layer x layer, the final checkpoint against each earlier one, and against earlier
runs that differ only in the seed. Everything happens inside the tracker's run
contexts, so an exception ends the open runs FAILED (error tag) and Ctrl-C/SIGTERM
ends them KILLED; nothing is left RUNNING.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clusterprobe.runners import evalrun
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.record import (
    dataset_info,
    dataset_params,
    dataset_record,
    normalisation,
    variant,
)
from clusterprobe.runners.evalrun.stability import find_seed_runs, record_stability
from clusterprobe.runners.measure import head_labels, measure, probe_indices
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError
from clusterprobe.tracker.killpoint import kill_point

EVAL_SPLIT = "eval"
# On the CPU a run's checkpoints are measured at 4x the training batch: training held
# every activation of a batch for its backward pass, a forward pass holds a few at a
# time, so this fits where training did, and fewer, larger batches cost less per image
# (the default run's probe forward pass 1.39 -> 1.13 s; its pooled features equal to the
# bit). Not on an accelerator: there training ran in bf16 and the embedding runs in fp32
# by default, which leaves too little margin to risk an out-of-memory after the training.
MEASURE_BATCH_SCALE = 4


def measure_batch(train_batch: int, device) -> int:
    """Images per forward pass when a run measures a checkpoint on ``device``."""
    on_cpu = str(device).split(":")[0] == "cpu"  # a torch.device or its name
    return train_batch * (MEASURE_BATCH_SCALE if on_cpu else 1)


@dataclass
class RunResult:
    """What one ``run`` produced; ``summary`` and ``layers`` are the final checkpoint's."""

    train_run_id: str
    eval_run_ids: list[str]
    summary: dict[str, float]
    layers: list[dict]  # per layer: index, name, relative_depth, ami_f1, purity_f1, probe_acc
    bytes_stored: int | None = None  # artifacts of all runs and the logged model; None
    # when the store is remote
    model_id: str | None = None  # the final checkpoint's logged model (None: none saved)
    evaluations: dict[int, dict] = field(default_factory=dict)  # epoch -> summary
    history: list[dict] = field(default_factory=list)  # per-epoch training metrics
    seconds: dict[str, float] = field(default_factory=dict)  # train (incl. intermediate evals),
    # then the final checkpoint's embed, cluster, cka, probe; run (wall) and measure_share


# --- preparation: everything that can fail before a run is started -----------------------


def prepare(config: RunConfig):
    """Validate ``config`` (the one place it is validated) and load its dataset; raises
    UsageError before anything is stored."""
    from clusterprobe.runners import models, recipes
    from clusterprobe.runners.data import registry
    from clusterprobe.runners.data.dataset_check import check_dataset

    config = registry.canonical(config.validate())
    models.model_config(config, num_classes=2)  # arch, stem, taps and norm: UsageError if bad
    try:  # the recipe's values where the user set none, so the params record them
        config = recipes.resolve(config, models.arch_family(config.arch))
    except ValueError as err:
        raise UsageError(f"--{err}") from None
    from clusterprobe.runners.data.cache import resolve_root

    data = check_dataset(
        registry.load_dataset(config),
        skip_corrupt=config.skip_corrupt,
        cache_root=resolve_root(config.image_cache),
        progress=sys.stderr.isatty(),
    )
    from clusterprobe.runners.data.splitcheck import split_warnings

    skipped = data.record.get("skipped_corrupt") or []
    if skipped:
        print(
            f"clusterprobe: warning: --skip-corrupt left out {len(skipped)} image file(s) that "
            f"do not decode (listed in dataset.json), e.g. {skipped[0]}",
            file=sys.stderr,
            flush=True,
        )
    for line in split_warnings(data.train_labels.subclass, data.eval_labels.subclass):
        print(f"clusterprobe: warning: {line}", file=sys.stderr, flush=True)
    _check_cka_images(config.cka, data.eval_labels.superclass)
    return config, data


def _check_cka_images(estimator: str, superclass) -> None:
    """Every superclass needs the eval images the CKA estimator is defined on."""
    import numpy as np
    from clusterprobe.runners.engine.cka import check_images

    sups, counts = np.unique(superclass, return_counts=True)
    try:
        check_images(estimator, dict(zip(sups.tolist(), counts.tolist(), strict=True)))
    except ValueError as err:
        raise UsageError(f"--cka {estimator}: {err} (raise --eval-per-subclass)") from None


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
    from clusterprobe.runners.device import resolve_device
    from clusterprobe.tracker.tracking import Tracker

    config, data = prepare(config)
    device = resolve_device(config.device)
    tracker = Tracker(store)
    reaped = tracker.reap_orphans()
    if reaped and not quiet:
        _say(f"marked {len(reaped)} orphaned run(s) FAILED (their process is gone)")
    job = _Job(tracker, config, data, device, tags or {}, on_eval, quiet)
    variant_name = "-shuffled" if data.shuffled else ""
    with tracker.start_run(
        "train",
        params=job.params,
        parent_run_id=parent_run_id,
        tags=job.tags,
        run_name=f"{config.arch} {data.name}{variant_name} s{config.seed}",
    ) as train_ctx:
        if on_start is not None:
            on_start(train_ctx.run_id)
        kill_point("run-start")
        t0 = time.perf_counter()
        job.train_and_measure(train_ctx)
        job.record_share(train_ctx, time.perf_counter() - t0)
    return job.result(train_ctx.run_id)


def resume(
    train_run_id: str,
    store,
    *,
    tags: dict | None = None,
    on_start: Callable[[str], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    quiet: bool = False,
) -> RunResult:
    """Continue an interrupted train run from its last stored training state
    (``--save-every``), in the same MLflow run: the epochs after that state are trained
    again, an epoch already logged keeps its metrics (none is logged twice), and the run
    is measured and recorded as ``run`` does, ending FINISHED. ``tags`` are set on the
    train run (a study's retry relinks it to its new trial). UsageError for a run that
    is not a train run, is finished or still running, or stored no training state."""
    from clusterprobe.runners.device import resolve_device
    from clusterprobe.runners.resume import stored_state
    from clusterprobe.tracker.tracking import Tracker

    tracker = Tracker(store)
    tracker.reap_orphans()  # a killed run's RUNNING status, and its eval runs', end FAILED
    run = tracker.open_run(train_run_id)
    kind, status = run.data.tags.get(cv.TAG_KIND), run.info.status
    if kind != "train":
        raise UsageError(f"--resume {train_run_id}: a {kind} run; give a train run's id")
    if status in ("FINISHED", "RUNNING"):
        why = "nothing to resume" if status == "FINISHED" else "its process is alive"
        raise UsageError(f"--resume {train_run_id}: the run is {status} ({why})")
    config, data = prepare(RunConfig.from_params(run.data.params))
    state = stored_state(tracker, train_run_id)
    device = resolve_device(config.device)
    tags = {**{k: v for k, v in run.data.tags.items() if k == cv.TAG_PARENT}, **(tags or {})}
    job = _Job(tracker, config, data, device, tags, on_eval, quiet)
    job.logged_epochs = {
        int(m.step) for m in tracker.client.get_metric_history(train_run_id, "train_loss")
    }
    job.adopt_evaluations(train_run_id)
    with tracker.reopen_run(train_run_id) as train_ctx:
        train_ctx.set_tags(job.tags)
        if on_start is not None:
            on_start(train_ctx.run_id)
        if not quiet:
            _say(f"train run {train_run_id}: resuming after epoch {state.epoch}")
        job.train_and_measure(train_ctx, start=state)
    return job.result(train_ctx.run_id)


class _Job:
    """One run while it trains and measures: the train run and its eval runs."""

    def __init__(self, tracker, config: RunConfig, data, device, tags: dict, on_eval, quiet):
        self.tracker, self.config, self.data, self.device = tracker, config, data, device
        self.on_eval, self.quiet = on_eval, quiet
        self.params = {**config.to_params(), **dataset_params(data)}
        self.dataset = dataset_record(data)
        self.model_id: str | None = None
        self.tags = {cv.TAG_DEVICE: str(device), **tags}
        self.num_classes = (
            data.num_superclasses if config.labels == "superclass" else data.num_subclasses
        )
        self.probe_index = probe_indices(data.train_labels, config.probe_per_subclass, config.seed)
        self.eval_set = f"{data.name}:{EVAL_SPLIT}"
        self.eval_run_ids: list[str] = []
        self.evaluations: dict[int, dict] = {}
        self.seconds: dict[str, float] = {}
        self.measuring = 0.0  # seconds measuring, every checkpoint evaluated
        self.history: list[dict] = []
        self.final: dict = {}
        self.earlier: dict[str, tuple] = {}  # eval run id -> (assignments, factors)
        self.logged_epochs: set[int] = set()  # resume: epochs the interrupted run logged
        self.evaluated: set[int] = set()  # resume: intermediate epochs it measured

    def adopt_evaluations(self, train_run_id: str) -> None:
        """Resume: the intermediate checkpoints the interrupted run measured already are
        not measured again (no second eval run of one checkpoint), and the final one is
        compared with them (checkpoint ARI) as in an uninterrupted run."""
        import warnings

        from clusterprobe.runners.evalrun.stored import load_assignments

        finished = self.tracker.search_runs(
            kind="eval", parent_run_id=train_run_id, status="FINISHED"
        )
        for ev in finished:
            epoch = int(ev.data.params.get(cv.PARAM_CHECKPOINT_EPOCH) or 0)
            if not 0 < epoch < self.config.epochs:
                continue
            self.evaluated.add(epoch)
            self.eval_run_ids.append(ev.info.run_id)
            try:
                assignments, factors, _ = load_assignments(self.tracker, ev.info.run_id)
            except Exception as err:  # a missing table costs an ARI row, never the run
                warnings.warn(f"checkpoint ARI: skipped run {ev.info.run_id}: {err}", stacklevel=2)
                continue
            self.earlier[ev.info.run_id] = assignments, factors

    def train_and_measure(self, train_ctx, start=None) -> None:
        """Train (from ``start``, a stored ``resume.TrainState``, if given), then measure."""
        from clusterprobe.runners import models
        from clusterprobe.runners.ema import for_config as ema_for_config
        from clusterprobe.runners.resume import log_state
        from clusterprobe.runners.train import train
        from clusterprobe.tracker.datasets import log_dataset

        config, data = self.config, self.data
        if start is None:  # a resumed run logged its dataset input already
            log_dataset(train_ctx, dataset_info(self.dataset), "train")
        if not self.quiet:
            _say(
                f"train run {train_ctx.run_id}: {config.arch} on {data.name}"
                f"{' (shuffled)' if data.shuffled else ''}, {len(data.train_labels.superclass)}"
                f" train / {len(data.eval_labels.superclass)} eval images, device {self.device}"
            )
        model = models.create_model(config, self.num_classes, data.image_size).to(self.device)
        ema = ema_for_config(model, config)  # evaluation and checkpoints use its weights

        def on_epoch(epoch: int, metrics: dict) -> None:
            if epoch not in self.logged_epochs:
                train_ctx.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
            kill_point("train")
            if (
                epoch in config.eval_epochs
                and epoch < config.epochs
                and epoch not in self.evaluated
            ):
                # Measure a frozen copy so the training loop's model and mode stay untouched.
                snapshot = ema.averaged_model(model) if ema else copy.deepcopy(model)
                self._save_checkpoint(train_ctx, snapshot, epoch)
                self._evaluate(train_ctx.run_id, snapshot, epoch)
                del snapshot

        t0 = time.perf_counter()
        self.history = list(
            train(
                model,
                data,
                config,
                self.device,
                on_epoch=on_epoch,
                quiet=self.quiet,
                ema=ema,
                start=start,
                on_save=lambda state: log_state(train_ctx, state),
            )
            or []
        )
        self.seconds["train"] = time.perf_counter() - t0
        train_ctx.log_metrics({"seconds_train": self.seconds["train"]}, step=config.epochs)
        final = ema.averaged_model(model) if ema else model
        self._save_checkpoint(train_ctx, final, None)
        self._evaluate(train_ctx.run_id, final, config.epochs)

    def _save_checkpoint(self, train_ctx, model, epoch: int | None) -> None:
        """Store checkpoint ``epoch`` (None: the final one, also logged as the run's
        MLflow model, which its final eval run then links to)."""
        from clusterprobe.runners import logged_model, models
        from clusterprobe.runners.checkpoints import log_checkpoint

        if "checkpoint" not in self.config.save:
            return
        cfg = models.model_config(self.config, self.num_classes, self.data.image_size)
        sha256 = log_checkpoint(train_ctx, model, cfg, epoch)
        if epoch is None:
            self.model_id = logged_model.log_train_model(
                self.tracker,
                train_ctx.run_id,
                cfg,
                weights_sha256=sha256,
                params=self.params,
                step=self.config.epochs,
                example=logged_model.example_input(self.data),
                normalisation=normalisation(self.dataset),
            )

    def _evaluate(self, train_run_id: str, net, epoch: int) -> None:
        """Measure checkpoint ``epoch`` and record it as an eval run under the train run."""
        config, data = self.config, self.data
        spec = evalrun.EvalSpec(
            parent_run_id=train_run_id,
            design=self.params,
            checkpoint_epoch=str(epoch),
            eval_set=self.eval_set,
            protocol="per_superclass",
            run_name=f"eval e{epoch} {self.eval_set}",
            tags=self.tags,
            dataset=self.dataset,
        )
        with evalrun.start_eval_run(self.tracker, spec) as ctx:
            self.eval_run_ids.append(ctx.run_id)
            if not self.quiet:
                _say(f"eval run {ctx.run_id}: checkpoint epoch {epoch}")
            kill_point("embed")
            meas, summary = measure_into(
                ctx,
                net,
                config,
                data,
                self.device,
                probe_index=self.probe_index,
                head=head_labels(self.num_classes, data, config.labels),
                title=f"{config.arch} on {data.name} ({variant(data)}), seed {config.seed}",
                quiet=self.quiet,
                batch_size=measure_batch(config.batch_size, self.device),
            )
            self._record_stability(ctx, spec, meas, final=epoch == config.epochs)
            if "plots" in config.save:
                evalrun.log_report(ctx)  # last: it shows what the run stored
            if epoch < config.epochs:
                self.earlier[ctx.run_id] = meas.protocol.assignments, meas.factors
            self.evaluations[epoch] = summary
            self.measuring += sum(meas.seconds.values())
            self.final.update(layers=meas.scores.rows(), summary=summary, seconds=meas.seconds)
            if self.on_eval is not None:
                self.on_eval(epoch, summary)

    def record_share(self, train_ctx, wall: float) -> None:
        """Log the run's wall time (training, measuring, recording) and the share of it
        spent measuring (embed, cluster, CKA, probes of every evaluated checkpoint)."""
        self.seconds["run"] = wall
        self.seconds["measure_share"] = self.measuring / wall if wall > 0 else float("nan")
        train_ctx.log_metrics(
            {"seconds_run": wall, "measure_share": self.seconds["measure_share"]},
            step=self.config.epochs,
        )

    def _record_stability(self, ctx, spec: evalrun.EvalSpec, meas, *, final: bool) -> None:
        eval_index = meas.embedding.eval_index
        seed_runs = {}
        if final:  # seeds are compared at the final checkpoint only
            logged = {
                **spec.params(),
                "cluster.algorithm": str(meas.cluster_params.get("algorithm", "")),
            }
            seed_runs = find_seed_runs(self.tracker, ctx.run_id, logged, eval_index)
        record_stability(
            ctx,
            meas.protocol.assignments,
            meas.factors,
            eval_index,
            earlier=self.earlier,
            seed_runs=seed_runs,
        )

    def result(self, train_run_id: str) -> RunResult:
        seconds = {**self.seconds, **self.final["seconds"]}
        for key in ("run", "measure_share"):  # the totals last
            if key in seconds:
                seconds[key] = seconds.pop(key)
        return RunResult(
            train_run_id=train_run_id,
            eval_run_ids=self.eval_run_ids,
            summary=dict(self.final["summary"]),
            layers=self.final["layers"],
            bytes_stored=bytes_stored(
                self.tracker, [train_run_id, *self.eval_run_ids], self.model_id
            ),
            model_id=self.model_id,
            evaluations=self.evaluations,
            history=self.history,
            seconds=seconds,
        )


def measure_into(
    ctx,
    net,
    config,
    data,
    device,
    *,
    probe_index,
    head: str | None,
    title: str,
    quiet: bool,
    batch_size: int | None = None,
):
    """Measure ``net`` on ``data``'s eval split and record it into the open eval run ``ctx``
    (``run``'s checkpoints and ``eval``'s models alike). ``head``: the labels its head
    predicts (``measure.head_labels``), for test_acc; ``batch_size``: images per forward
    pass (default ``config.batch_size``). Returns (Measurement, summary)."""
    meas = measure(
        net,
        config,
        data,
        device,
        probe_index=probe_index,
        head_labels=head,
        batch_size=batch_size,
        quiet=quiet,
    )
    summary = evalrun.record_measurement(
        ctx,
        meas,
        labels=data.eval_labels,
        save=config.save,
        title=title,
        probe_train_images=len(probe_index),
    )
    return meas, summary


def bytes_stored(tracker, run_ids: list[str], model_id: str | None = None) -> int | None:
    """Total size of the runs' artifact folders and of the logged model's, or None when
    they are not local files (never downloads a remote artifact store to count bytes)."""
    from clusterprobe.tracker.logged_models import model_folder

    roots = [tracker.artifact_dir(run_id) for run_id in run_ids]
    if model_id is not None:
        roots.append(model_folder(tracker, model_id))
    if any(root is None for root in roots):
        return None
    return sum(folder_bytes(root) for root in roots)


def folder_bytes(root) -> int:
    """Bytes of the files under ``root`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _say(message: str) -> None:
    print(f"clusterprobe: {message}", file=sys.stderr, flush=True)
