"""Names that the store, the runners and the SQL queries agree on.

One place for every tag, metric and artifact name, so that `runners/` writes
what `queries/*.sql` reads. Change a name here and grep the .sql files.

Store folder (``--store DIR``, default ``./mlruns``)::

    DIR/mlflow.db        MLflow tracking database (SQLite)
    DIR/optuna.db        Optuna storage (SQLite), created by `clusterprobe study`
    DIR/artifacts/       MLflow artifact root (one folder per experiment/run)
    DIR/store.json       {"schema": STORE_SCHEMA, "root": <absolute path when last opened>}

Runs (tag ``clusterprobe.kind``):

* ``train``: one per trained model. Params = every design choice
  (``asdict(RunConfig)`` flattened). Metrics per epoch, step = epoch:
  ``train_loss``, ``train_acc``, ``lr``. Artifacts: ``checkpoint/model.safetensors``
  + ``checkpoint/model_config.json``. Its final checkpoint is also an MLflow logged
  model (pyfunc, named LOGGED_MODEL_NAME; its id in tag ``clusterprobe.model_id``)
  whose folder holds no weights: its loader reads ``checkpoint/``. Input: its dataset
  (context ``train``).
* ``model``: one per external weights file (``clusterprobe eval --weights``, or the
  cached file of ``--pretrained NAME``) and architecture: params ``arch`` (and
  ``stem``, ``norm``), ``weights_path``, ``weights_sha256``, the head's width (and
  ``pretrained``, ``hf_hub_id``); no metrics. Found again by sha256, so every
  evaluation of the same weights nests under one model run.
* ``eval``: one per (checkpoint, evaluation set), nested under its train run or model
  run (``mlflow.parentRunId``), repeating its params, and ``model_source`` (where the
  measured model came from, MODEL_SOURCES). Per-layer metrics
  with step = layer index: ``ami_f{k}``, ``purity_f{k}`` (k = factor), ``probe_acc``,
  ``knn_acc``. Summaries: ``best_ami``, ``best_layer``, ``best_probe_acc``,
  ``best_knn_acc``, ``pixel_ami_f1``, and ``test_acc`` where the model's head predicts
  the eval set's labels (``test_acc_labels``: superclass or subclass).
  Artifacts listed below. Inputs: its dataset (context ``eval``) and, where it measures
  a train run's final checkpoint, that run's logged model, to which its summary metrics
  are linked (the model's page lists them per dataset).
* ``study``: one per Optuna study; its trials' train runs nested under it.
* ``compare``: one per ``clusterprobe compare RUN_A RUN_B`` of two eval runs of the
  same eval images (tags TAG_COMPARE_A/B name them; param ``cka`` = the estimator).
  Artifacts: ``cka.parquet`` and ``ari.parquet`` in the eval runs' layout, kind
  'compare', run_id = RUN_A, other_run_id = RUN_B.
"""

STORE_SCHEMA = 1  # bump when the layout of the store folder or these names change

# --- tags -------------------------------------------------------------------
TAG_KIND = "clusterprobe.kind"  # one of KINDS
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI draws the tree)
TAG_HOST = "clusterprobe.host"  # owner process, so orphaned RUNNING runs can be failed
TAG_PID = "clusterprobe.pid"
TAG_ERROR = "clusterprobe.error"  # one line: exception type and message of a failed run
TAG_SCHEMA = "clusterprobe.store_schema"
TAG_GIT = "clusterprobe.git_commit"
TAG_DEVICE = "clusterprobe.device"
TAG_THREADS = "clusterprobe.torch_threads"  # intra-op CPU threads: speed, and BLAS sum order
TAG_VERSIONS = "clusterprobe.versions"  # JSON {package: version}
TAG_STUDY = "clusterprobe.study"  # study name, on study and trial runs
TAG_TRIAL = "clusterprobe.trial"  # Optuna trial number, on trial train runs
TAG_SOURCE_RUN = "clusterprobe.source_run"  # eval run re-scored from another eval run
TAG_COMPARE_A = "clusterprobe.compare.run_a"  # compare runs: the two eval runs compared
TAG_COMPARE_B = "clusterprobe.compare.run_b"
TAG_MODEL_ID = "clusterprobe.model_id"  # train run: the logged model of its final checkpoint

KINDS = ("train", "eval", "study", "model", "compare")

# --- Optuna trial user attributes: the way back from a trial to its runs ------
ATTR_RUN_ID = "mlflow_run_id"  # the trial's train run
ATTR_EVAL_RUN_IDS = "mlflow_eval_run_ids"  # its eval runs, in order

# --- params (besides the RunConfig fields) -----------------------------------
PARAM_DATASET = "dataset"
PARAM_SHUFFLED = "shuffled"
PARAM_CHECKPOINT_EPOCH = "checkpoint_epoch"  # eval runs: which checkpoint was measured
PARAM_EVAL_SET = "eval_set"  # eval runs: which evaluation set (dataset name + split)
PARAM_DEAD_LAYERS = "dead_layers"  # eval runs: comma list of layers with all-zero activations
PARAM_PROTOCOL = "protocol"  # eval runs: "per_superclass" (the paper's) | "whole" (rescore)
PARAM_CKA = "cka"  # eval and compare runs: the CKA estimator of cka.parquet (RunConfig.cka)
TAG_DEAD_LAYERS = "clusterprobe.dead_layers"  # JSON {layer index: [superclasses]} of zero rows
# Where an eval run's model came from: "trained" (a train run of this store, by `run` or
# `eval --from`), "weights" (a file, `eval --weights`) or "pretrained" (timm's pretrained
# weights from the Hugging Face cache, `eval --pretrained`); for the last two its model
# run holds the file's fingerprint. Eval runs written before the param existed are
# "trained".
PARAM_MODEL_SOURCE = "model_source"
MODEL_SOURCES = ("trained", "weights", "pretrained")
PARAM_WEIGHTS_PATH = "weights_path"  # model runs: the file as given (absolute)
PARAM_WEIGHTS_SHA256 = "weights_sha256"  # model runs: what finds the run again
PARAM_PRETRAINED = "pretrained"  # model runs of timm weights: the name with its tag
PARAM_HF_HUB_ID = "hf_hub_id"  # ... and the Hugging Face repository it came from
# The preprocessing the images got, as resolved (runners/data/preprocess.py): train and
# eval runs. INPUT_SOURCE: "dataset" (the dataset's own recipe) or "model" (timm's data
# config of the architecture, `timm.data.resolve_data_config`), before the user's
# overrides; the rest as timm's data config names them.
PARAM_INPUT_SOURCE = "input.preprocess"
PARAM_INPUT_SIZE = "input.size"  # side in px of what the model sees
PARAM_INPUT_MEAN = "input.mean"  # comma-joined per-channel mean (images in [0, 1])
PARAM_INPUT_STD = "input.std"
PARAM_INPUT_INTERPOLATION = "input.interpolation"  # resize interpolation ('none': no resize)
PARAM_INPUT_CROP_PCT = "input.crop_pct"  # resize to size / crop_pct, then crop the centre
PARAM_INPUT_CROP_MODE = "input.crop_mode"
PARAM_TEST_ACC_LABELS = "test_acc_labels"  # eval runs: the labels test_acc is measured on

# --- design: which params make two eval runs repeats of one design -------------
# An eval run's design is its params less the four groups below; runs of one design
# differ only by chance (the seed), so the queries average them together
# (`evals.design_key`) and the seed ARI compares them (runners/evalrun/stability.py).
# `is_design_param` is the rule; queries/design_views.py writes the same rule in SQL.
#
# Where and how fast a run ran, what else it saved, which extra checkpoints it measured:
NON_DESIGN_PARAMS = frozenset(
    {
        "seed",
        "device",
        "workers",
        "save",
        "save_every",
        "eval_epochs",
        "data_dir",
        "breeds_info",
        "download",
    }
    # Where the model came from: eval runs written before it existed lack it, and a
    # weights file's design already differs from a trained model's (no training params).
    | {PARAM_MODEL_SOURCE}
)
# Which measurement of the model an eval run is: the queries select on these (final
# checkpoint, the training set's own evaluation set, protocol) rather than group by them.
EVAL_RUN_PARAMS = frozenset({PARAM_CHECKPOINT_EPOCH, PARAM_EVAL_SET, PARAM_PROTOCOL})
# How the numbers were computed, and what came out: never a choice of the model, and
# some differ between identical runs (embed.memory_budget_bytes follows the free
# memory, cluster.n_jobs the cores, dead_layers the weights). `factors` only says which
# factors were measured: a value at a given factor does not depend on it.
MEASUREMENT_PARAMS = frozenset(
    {
        "factors",
        "eval_factors",
        "probe_train_images",
        PARAM_DEAD_LAYERS,
        PARAM_CKA,  # which CKA estimator compared the layers
        PARAM_TEST_ACC_LABELS,
    }
)
MEASUREMENT_PREFIXES = ("embed.", "cluster.", "whole.", "transfer.")
# What data went in (runners/data/record.py `dataset_params`, less dataset and
# shuffled). Part of the design, so runs on different files never average together,
# but derived: they follow from the data choices (dataset, shuffled, classes, ...) and
# the files on disk, so a change of one choice that changes them is still one choice
# (`design_effects` matches pairs on the choices alone).
DATASET_RECORD_PARAMS = frozenset(
    {"num_superclasses", "num_subclasses", "train_images", "eval_images", "dataset_digest"}
)


def is_design_param(key: str) -> bool:
    """Whether param ``key`` of an eval run belongs to its design (see above)."""
    return not (
        key in NON_DESIGN_PARAMS
        or key in EVAL_RUN_PARAMS
        or key in MEASUREMENT_PARAMS
        or key.startswith(MEASUREMENT_PREFIXES)
    )


# --- metrics ----------------------------------------------------------------
EPOCH_METRICS = ("train_loss", "train_acc", "lr")  # train run, step = epoch


def ami_metric(factor: int) -> str:
    return f"ami_f{factor}"


def purity_metric(factor: int) -> str:
    return f"purity_f{factor}"


PROBE_METRIC = "probe_acc"  # eval run, step = layer index
KNN_METRIC = "knn_acc"  # eval run, step = layer index: k-NN accuracy on pooled features
# test_acc: the model's own accuracy on the eval set, where its head's width equals the
# number of labels it was trained on (every `run` eval; `eval` where it applies).
TEST_ACC_METRIC = "test_acc"
SUMMARY_METRICS = (
    "best_ami",
    "best_layer",
    "best_probe_acc",
    "best_knn_acc",
    "pixel_ami_f1",
    TEST_ACC_METRIC,
)

# --- artifacts (paths inside the run's artifact folder) ---------------------
# Train runs: the final checkpoint, and one per measured intermediate epoch; each folder
# holds the weights (safetensors state_dict) and the model config that rebuilds it.
ART_CHECKPOINT_DIR = "checkpoint"
ART_EPOCH_CHECKPOINT_DIR = "checkpoints/epoch_{epoch:03d}"
CHECKPOINT_WEIGHTS = "model.safetensors"
# --save-every N: the training state to resume from (model, optimiser, step, RNG states,
# extras such as EMA), replaced at each save; only the latest is kept.
ART_TRAINING_STATE_DIR = "training_state"
TRAINING_STATE_FILE = "state.pt"
CHECKPOINT_CONFIG = "model_config.json"
ART_WEIGHTS = f"{ART_CHECKPOINT_DIR}/{CHECKPOINT_WEIGHTS}"
ART_MODEL_CONFIG = f"{ART_CHECKPOINT_DIR}/{CHECKPOINT_CONFIG}"
# The logged model of a train run: its name, and the file in its data folder that points
# the loader at the run's checkpoint (run id, artifact folder, sha256 of the weights).
LOGGED_MODEL_NAME = "model"
MODEL_POINTER = "checkpoint_pointer.json"
# Every run that logged artifacts, written as it finishes: {artifact path: sha256} of each
# file, checked by the readers and `clusterprobe doctor` (tracker/checksums.py).
ART_CHECKSUMS = "checksums.json"
# Eval runs (written and read by runners/evalrun only):
ART_LAYER_METRICS = "layer_metrics.parquet"
ART_LAYERS = "layers.json"  # [{"index": i, "name": ..., "relative_depth": ...}, ...]
ART_DATASET_RECORD = "dataset.json"  # which classes and how many images went in
# Pooled embeddings: one float32 [N, C_l] array per layer, rows in eval-set order, and
# their labels (eval_index, superclass, subclass).
ART_EMBED_DIR = "embeddings"
EMBED_POOLED = "pooled_{layer:02d}.npy"
EMBED_LABELS = "labels.parquet"
# Per-superclass Gram matrices of the flattened, unit-normalised features: float32
# [L, n, n] per superclass (raw pixels: [n, n]), and which eval image each row is
# (superclass, row, eval_index, subclass).
ART_DIST_DIR = "distances"
DIST_GRAM = "gram_{superclass:03d}.npy"
DIST_PIXEL = "pixel_{superclass:03d}.npy"
DIST_INDEX = "index.parquet"
ART_PLOT = "layer_profile.png"
# Eval runs: the Ward cluster of every eval image per (layer, superclass, factor);
# columns ASSIGNMENTS_COLUMNS. What the ARI tables are computed from.
ART_ASSIGNMENTS = "assignments.parquet"
# Eval runs: ARI between cluster assignments, columns ARI_COLUMNS; value = ARI averaged
# over superclasses. kind 'layer': two layers of this run (other_run_id = run_id);
# 'checkpoint': this (final) run's layer_a vs an earlier checkpoint's layer_b;
# 'seed': this run's layer_a vs layer_b of a run that differs only in its seed.
ART_ARI = "ari.parquet"
ARI_KINDS = ("layer", "seed", "checkpoint", "compare")  # 'compare': written by compare runs
# Eval runs: linear CKA between the layers (from the per-superclass Grams, no forward
# pass), columns CKA_COLUMNS: per superclass, and the unweighted mean over superclasses
# with superclass NULL; estimator 'linear' or 'debiased'. kind 'layer': two layers of
# this run (other_run_id = run_id); 'compare': run_id's layer_a vs other_run_id's layer_b,
# written by a compare run.
ART_CKA = "cka.parquet"
CKA_KINDS = ("layer", "compare")
# Eval runs (and `clusterprobe report`): one self-contained HTML page of the run, its
# plots inline, so the MLflow UI's artifact view shows what the run found.
ART_REPORT = "report.html"

# Columns of layer_metrics.parquet, in order: one row per (layer, superclass,
# factor, metric) for ami/purity (means are left to SQL); layer-level metrics such
# as probe_acc have superclass NULL; factor is NULL where it does not apply.
LAYER_METRICS_COLUMNS = (
    "run_id",
    "layer_index",
    "layer_name",
    "relative_depth",
    "superclass",
    "factor",
    "metric",
    "value",
)

ASSIGNMENTS_COLUMNS = ("layer_index", "superclass", "factor", "eval_index", "cluster")
ARI_COLUMNS = ("run_id", "other_run_id", "kind", "layer_a", "layer_b", "factor", "value")
CKA_COLUMNS = (
    "run_id",
    "other_run_id",
    "kind",
    "layer_a",
    "layer_b",
    "superclass",
    "estimator",
    "value",
)
