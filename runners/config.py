"""Run configuration: one frozen dataclass, validated once at the edge.

``asdict(config)`` becomes the train and eval runs' params, so every design
choice that shapes a run is a field here and queryable in SQL.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from clusterprobe.runners import choices
from clusterprobe.tracker.errors import UsageError


def parse_int_list(
    spec: str, flag: str, *, allow_empty: bool = True, minimum: int | None = None
) -> tuple[int, ...]:
    """``"1-3,5"`` -> (1, 2, 3, 5), sorted and unique; ``''`` or ``'none'`` -> () where
    ``allow_empty``. One UsageError line naming ``flag`` and the bad ``spec``."""
    if allow_empty and spec.strip().lower() in ("", "none"):
        return ()
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            lo_i, hi_i = int(lo), int(hi or lo)
            if lo_i > hi_i:
                raise ValueError
            out.update(range(lo_i, hi_i + 1))
    except ValueError:
        raise UsageError(
            f"{flag} {spec!r} is not a list of integers; use ints or ranges such as '1-5' or '1,3'"
        ) from None
    if minimum is not None and min(out) < minimum:
        raise UsageError(f"{flag} {spec!r}: values must be integers >= {minimum}")
    return tuple(sorted(out))


def parse_factors(spec: str) -> tuple[int, ...]:
    """Overclustering factors: ``"1-5"`` -> (1, 2, 3, 4, 5); ``"1,3"`` -> (1, 3); >= 1."""
    return parse_int_list(spec, "--factors", allow_empty=False, minimum=1)


def parse_save(spec: str) -> tuple[str, ...]:
    """``"all"``, ``"none"`` or a comma list of ``choices.SAVE``."""
    spec = spec.strip().lower()
    if spec == "all":
        return choices.SAVE
    if spec in ("none", ""):
        return ()
    items = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [s for s in items if s not in choices.SAVE]
    if bad:
        raise UsageError(
            f"--save {','.join(bad)}: choose from {', '.join(choices.SAVE)}, 'all' or 'none'"
        )
    return items


@dataclass(frozen=True)
class RunConfig:
    # --- data ---
    dataset: str = "synthetic"
    shuffled: bool = False  # the paper's shuffled variant: superclasses of unrelated subclasses
    classes: int | None = None  # superclasses to keep (None: the dataset's own count)
    subclasses: int | None = None  # subclasses per superclass (None: the dataset's own count)
    train_per_subclass: int | None = None  # None: the dataset's default
    eval_per_subclass: int | None = None
    image_size: int | None = None  # None: the dataset's native size
    data_seed: int = 0  # the built-in dataset's generator; fixed so seeds vary training only
    data_dir: str | None = None  # root of on-disk datasets (ImageNet, CIFAR-100, folders)
    split: str = "none"  # BREEDS source/target split: none | rand | good | bad (runs use source)
    breeds_info: str | None = None  # folder of the BREEDS hierarchy files (else cache/download)
    download: bool = False  # allow downloading a dataset (CIFAR-100) into data_dir
    skip_corrupt: bool = False  # leave out image files that do not decode (else: refuse)
    # Decoded-image cache of image-file datasets (runners/data/cache.py): "default" (the
    # user cache folder), a folder, or "none" (decode every file on every pass).
    image_cache: str = "default"
    # --- preprocessing (runners/data/preprocess.py): a recipe, then single overrides ---
    # "dataset": the dataset's own recipe (what `run` trains with); "model": timm's data
    # config of the arch (input size, mean/std, interpolation, crop), for weights made
    # elsewhere. image_size above overrides the input size of either.
    preprocess: str = "dataset"
    mean: tuple[float, ...] | None = None  # per-channel mean of [0, 1] images (None: recipe's)
    std: tuple[float, ...] | None = None
    interpolation: str | None = None  # resize interpolation (None: the recipe's)
    crop_pct: float | None = None  # resize to size / crop_pct, crop the centre (None: recipe's)
    # --- model ---
    arch: str = "resnet18"  # any timm model name (optionally with its pretrained tag)
    stem: str = "standard"  # "standard" | "cifar" (stride-1 3x3 stem: 5-10x slower on CPU)
    taps: str = "blocks"  # "blocks" (every residual block) | "stages"
    norm: str = "default"  # VGG only: "none" | "bn" | "ln" (LayerNorm2d); "default": as named
    pool: str = "default"  # ViT only: "cls" | "gap" (timm global_pool='avg'); "default": timm's
    # --- training ---
    labels: str = "superclass"  # train on "superclass" or "subclass" labels
    # Training augmentation (runners/data/transforms.py): "paper" | "standard" (timm's) |
    # "none"; "default": each dataset's own (the synthetic set: a 2 px translation).
    augment: str = "default"
    # Defaults: resnet18 on the synthetic data in ~3 CPU-minutes with finding 1 visible
    # (benchmarks/finding1.py); batch 64 = twice the updates per epoch of 128 at the same cost.
    epochs: int = 10
    batch_size: int = 64
    # Optimiser fields left None take the recipe's value for the arch's family
    # (runners/recipes.py: resnet SGD lr 0.4, i.e. 0.1 at batch 64); runs record the values used.
    recipe: str = "default"  # "default" | "paper" (the paper's absolute values)
    optimizer: str | None = None  # "sgd" (Nesterov) | "adamw"
    lr: float | None = None  # per 256 images, scaled linearly with batch_size
    momentum: float | None = None  # SGD only
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    loss: str = "ce"  # runners/losses.py: "ce" | "squared" (Hui & Belkin) | "supcon"
    label_smoothing: float = 0.0  # ce only
    squared_k: float = 9.0  # squared loss: weight on the true class (the authors' k)
    squared_m: float = 60.0  # squared loss: target of the true class's output (M)
    supcon_temperature: float = 0.1  # Khosla et al.'s ImageNet temperature
    # Decay of the weights' EMA that evaluation uses (the paper's 0.99); 0: off. On by default:
    # finding 1 holds with it over 3 seeds (README, benchmarks/finding1.py --ema 0.99).
    ema: float = 0.99
    save_every: int = 0  # store the training state every N epochs for `run --resume` (0: never)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    workers: int = 0  # DataLoader workers (0 keeps the 2-core CPU for compute)
    # --- measurement ---
    eval_epochs: tuple[int, ...] = ()  # also evaluate these intermediate checkpoints
    factors: tuple[int, ...] = (1, 2, 3, 4, 5)
    precision: str = "fp32"  # "fp32" | "bf16" for the embedding forward pass
    cka: str = "linear"  # layer x layer CKA estimator: "linear" | "debiased" (unbiased HSIC)
    probe_per_subclass: int = 100  # training images per subclass for the linear probe
    probe_features: str = "pooled"  # "pooled" | "projected" (flattened, sparse projection)
    probe_dim: int = 1024  # dimension of the projected probe input
    save: tuple[str, ...] = ("checkpoint", "embeddings", "distances", "plots")
    extra: dict = field(default_factory=dict)  # dataset-specific options (paths, splits)

    def validate(self) -> RunConfig:
        """Raise UsageError naming the first bad field; return self for chaining."""
        for name, legal in (
            ("labels", choices.LABELS),
            ("stem", choices.STEMS),
            ("taps", choices.TAPS),
            ("norm", choices.NORMS),
            ("pool", choices.POOLS),
            ("augment", choices.AUGMENTS),
            ("precision", choices.PRECISIONS),
            ("cka", choices.CKA_ESTIMATORS),
            ("split", choices.SPLITS),
            ("recipe", choices.RECIPES),
            ("loss", choices.LOSSES),
            ("probe_features", choices.PROBE_FEATURES),
        ):
            value = getattr(self, name)
            if value not in legal:
                raise UsageError(
                    f"--{name.replace('_', '-')} {value!r}: choose one of {', '.join(legal)}"
                )
        if not self.image_cache.strip():
            raise UsageError("--cache '': give a folder, 'default' or 'none'")
        if self.preprocess not in choices.PREPROCESS:
            raise UsageError(
                f"--preprocess {self.preprocess!r}: choose one of {', '.join(choices.PREPROCESS)}"
            )
        if self.interpolation is not None and self.interpolation not in choices.INTERPOLATIONS:
            raise UsageError(
                f"--interpolation {self.interpolation!r}: choose one of "
                f"{', '.join(choices.INTERPOLATIONS)}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise UsageError(
                    f"--{name} {','.join(map(str, value))}: give 3 comma-separated numbers, "
                    f"one per RGB channel{' (all > 0)' if name == 'std' else ''}"
                )
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise UsageError(f"--crop-pct {self.crop_pct}: give a fraction in (0, 1]")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        self._validate_training()
        if self.save_every < 0:
            raise UsageError(f"--save-every {self.save_every}: give epochs >= 1, or 0 for never")
        bad = [e for e in self.eval_epochs if not 1 <= e <= self.epochs]
        if bad:
            raise UsageError(
                f"--eval-epochs {','.join(map(str, bad))}: epochs must lie in 1..{self.epochs}"
            )
        bad = set(self.save) - set(choices.SAVE)
        if bad:
            raise UsageError(f"--save {sorted(bad)}: choose from {', '.join(choices.SAVE)}")
        return self

    def _validate_training(self) -> None:
        if self.optimizer is not None and self.optimizer not in choices.OPTIMIZERS:
            raise UsageError(
                f"--optimizer {self.optimizer!r}: choose one of {', '.join(choices.OPTIMIZERS)}"
            )
        for name, value, ok, valid in (
            ("lr", self.lr, self.lr is None or self.lr > 0, "> 0"),
            (
                "momentum",
                self.momentum,
                self.momentum is None or 0 <= self.momentum < 1,
                "in [0, 1)",
            ),
            ("weight-decay", self.weight_decay, (self.weight_decay or 0) >= 0, ">= 0"),
            ("warmup-epochs", self.warmup_epochs, (self.warmup_epochs or 0) >= 0, ">= 0"),
            ("label-smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("squared-k", self.squared_k, self.squared_k > 0, "> 0"),
            ("squared-m", self.squared_m, self.squared_m > 0, "> 0"),
            ("supcon-temperature", self.supcon_temperature, self.supcon_temperature > 0, "> 0"),
            ("ema", self.ema, 0 <= self.ema < 1, "in [0, 1) (0 turns it off)"),
            ("probe-dim", self.probe_dim, self.probe_dim >= 1, ">= 1"),
        ):
            if not ok:
                raise UsageError(f"--{name} {value}: must be {valid}")
        if self.label_smoothing and self.loss != "ce":
            raise UsageError(
                f"--label-smoothing {self.label_smoothing} applies to --loss ce, not {self.loss!r}"
            )

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_params(self) -> dict[str, str]:
        """Flat string params for MLflow: every field, tuples comma-joined, None as ''."""
        out: dict[str, str] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "extra":
                out.update({f"extra.{k}": _fmt(v) for k, v in value.items()})
            else:
                out[key] = _fmt(value)
        return out

    @classmethod
    def from_params(cls, params: typing.Mapping[str, str]) -> RunConfig:
        """The inverse of :meth:`to_params`: the config a stored run was made with.

        Params that are not fields (dataset record, eval params) are ignored; a field
        missing (a run logged before it existed) keeps its default. Not validated: pass
        the result through ``pipeline.prepare``. A value that does not parse is a
        UsageError naming the param.
        """
        hints = typing.get_type_hints(cls)
        kwargs: dict = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                extra = {k[len("extra.") :]: v for k, v in params.items() if k.startswith("extra.")}
                kwargs["extra"] = extra
            elif f.name in params:
                kwargs[f.name] = _parse(params[f.name], hints[f.name], f.name)
        return cls(**kwargs)


# Fields that say how a model was trained here; a model from a weights file has none of
# them, so its eval runs do not record them.
TRAINING_FIELDS = (
    "labels",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "recipe",
    "optimizer",
    "loss",
    "label_smoothing",
    "squared_k",
    "squared_m",
    "supcon_temperature",
    "ema",
    "save_every",
    "augment",
    "eval_epochs",
    "workers",
)


def _parse(text: str, hint, name: str):
    """One param string back into its field's type (``_fmt``'s inverse)."""
    args = typing.get_args(hint)
    if type(None) in args:  # ``X | None``: '' is None
        if text == "":
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            return tuple(item(v) for v in text.split(",")) if text else ()
        if hint is bool:
            if text not in ("True", "False"):
                raise ValueError(text)
            return text == "True"
        return hint(text)
    except ValueError:
        raise UsageError(f"stored param {name}={text!r} is not a valid {name}") from None


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


# Presets are overrides, not code paths. QUICK: a demo/test run well under 60 s on 2 cores.
PRESETS: dict[str, dict] = {
    "quick": dict(epochs=3, train_per_subclass=60, eval_per_subclass=20, probe_per_subclass=30),
}
