"""Every set of legal values, declared once.

argparse ``choices``, ``RunConfig.validate``, the search-space checks and the engine
all read these tuples, so a value cannot be legal in one place and refused in
another. This module imports nothing: ``clusterprobe score`` and ``--help`` load it
without torch, sklearn or scipy.
"""

from __future__ import annotations

# --- the model and its training (RunConfig) ---
LABELS = ("superclass", "subclass")  # which labels a model is trained on
STEMS = ("standard", "cifar")  # timm's stem, or a stride-1 3x3 stem (ResNets only)
TAPS = ("blocks", "stages")  # every residual block, or every stage output
NORMS = ("default", "none", "bn", "ln")  # VGG only; "default": as the timm name says
POOLS = ("default", "cls", "gap")  # ViT only: class token | mean of patch tokens; default: timm's
AUGMENTS = ("default", "paper", "standard", "none")  # training augmentation (data/transforms.py)
SPLITS = ("none", "rand", "good", "bad")  # BREEDS source/target splits
SAVE = ("checkpoint", "embeddings", "distances", "plots")  # heavy artifacts a run may keep
TAPS_LIST = "list"
LOSSES = ("ce", "squared", "supcon")  # runners/losses.py: cross-entropy, Hui & Belkin, SupCon
OPTIMIZERS = ("sgd", "adamw")  # runners/recipes.py; SGD is Nesterov
RECIPES = ("default", "paper")  # per-family defaults: today's rates, or the paper's absolute ones
PROBE_FEATURES = (
    "pooled",
    "projected",
)  # linear probe input: GAP, or flattened + sparse projection  # `--taps list`: print a model's taps instead of measuring it

# --- preprocessing (runners/data/preprocess.py) ---
PREPROCESS = ("dataset", "model")  # the dataset's own recipe | timm's data config of the arch
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # resizes of image tensors and PIL alike

# --- the measurement (engine) ---
PRECISIONS = ("fp32", "bf16", "fp64")  # the embedding forward pass (fp64: exact references)
WHOLE_METHODS = ("auto", "exact", "exact-rnn", "knn-ward", "two-stage", "kmeans")  # whole dataset
WHOLE_DEVICES = ("auto", "cpu", "cuda")  # exact-rnn's searches ("cuda:N" too); auto: CUDA if any
CLUSTER_BACKENDS = ("thread", "process")  # parallel Ward trees of the per-superclass protocol
NEIGHBOR_BACKENDS = ("auto", "faiss", "torch")  # k-NN graphs and k-means
NEIGHBOR_INDEXES = ("flat", "ivf", "hnsw")
NEIGHBOR_METRICS = ("l2", "ip")
NEIGHBOR_PRECISIONS = ("fp32", "tf32", "bf16")  # torch matmuls; FAISS is always fp32
CKA_ESTIMATORS = ("linear", "debiased")  # HSIC estimator of layer-to-layer CKA

# --- studies ---
PRUNERS = ("none", "median")


def check_choice(name: str, value, choices: tuple) -> None:
    """ValueError naming ``name``, the bad ``value`` and the legal ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not known; choose one of {', '.join(choices)}")
