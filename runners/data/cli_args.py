"""The data flags of `clusterprobe run` (and `study`), mapped to RunConfig fields.

Usage from a command module::

    from clusterprobe.runners.data.cli_args import add_data_arguments, data_config_kwargs

    def add_arguments(parser):
        add_data_arguments(parser)            # --dataset, --shuffle, --split, --data-dir, ...

    def main(args):
        config = RunConfig(**{**preset, **data_config_kwargs(args), ...}).validate()

Every flag defaults to None, and :func:`data_config_kwargs` returns only the
fields given on the command line, so a preset (``--quick``) fills the rest and
explicit flags override it. Bad values raise UsageError (exit 2).
"""

from __future__ import annotations

import argparse

from clusterprobe.runners import choices
from clusterprobe.tracker.errors import UsageError

# flag dest -> RunConfig field (same names; listed so nothing else leaks into the config)
FIELDS = (
    "dataset",
    "shuffled",
    "classes",
    "subclasses",
    "split",
    "data_dir",
    "breeds_info",
    "download",
    "skip_corrupt",
    "image_cache",
    "train_per_subclass",
    "eval_per_subclass",
    "image_size",
    "data_seed",
)
# The preprocessing flags: not data options (a new --dataset keeps them), so listed apart.
PREPROCESS_FIELDS = ("preprocess", "mean", "std", "interpolation", "crop_pct")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data flags (an argument group "data") to ``parser``."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None,
        help="dataset name (default: synthetic); `clusterprobe datasets list` shows all",
    )
    g.add_argument(
        "--shuffle",
        dest="shuffled",
        action="store_true",
        default=None,
        help="the paper's shuffled variant: superclasses of unrelated subclasses",
    )
    g.add_argument("--classes", type=int, default=None, metavar="C", help="superclasses to draw")
    g.add_argument(
        "--subclasses", type=int, default=None, metavar="K", help="subclasses per superclass"
    )
    g.add_argument(
        "--split",
        default=None,
        choices=choices.SPLITS,
        help="BREEDS source/target split (default none); a run uses the source subclasses",
    )
    g.add_argument(
        "--data-dir",
        "--imagenet-root",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="dataset root: ImageNet (train/<wnid>/, val/<wnid>/), CIFAR-100, or your folders",
    )
    g.add_argument(
        "--breeds-info",
        default=None,
        metavar="DIR",
        help="folder with the BREEDS hierarchy files (default: cache, downloaded once)",
    )
    g.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download what is missing: the dataset into --data-dir (CIFAR-100); with eval "
        "--pretrained, the weights into the Hugging Face cache",
    )
    g.add_argument(
        "--skip-corrupt",
        action="store_true",
        default=None,
        help="leave out image files that do not decode, counted in the run's dataset record "
        "(default: refuse the dataset, naming the first bad file)",
    )
    g.add_argument(
        "--cache",
        dest="image_cache",
        default=None,
        metavar="DIR",
        help="decoded-image cache of image-file datasets: each file decoded once, later "
        "passes, runs and trials read it (default: the user cache folder; 'none': off)",
    )
    g.add_argument("--train-per-subclass", type=int, default=None, metavar="N")
    g.add_argument("--eval-per-subclass", type=int, default=None, metavar="N")
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="the model's input size (default: the dataset's, or the model's with "
        "--preprocess model)",
    )
    g.add_argument("--data-seed", type=int, default=None, help="seed of image sampling")
    p = parser.add_argument_group("preprocessing (a recipe, then single overrides)")
    p.add_argument(
        "--preprocess",
        default=None,
        choices=choices.PREPROCESS,
        help="dataset: the dataset's own resize/crop/normalisation (run's default); model: "
        "timm's data config of the architecture (default for --weights and --pretrained)",
    )
    p.add_argument(
        "--mean", default=None, metavar="R,G,B", help="per-channel mean of [0, 1] images"
    )
    p.add_argument("--std", default=None, metavar="R,G,B", help="per-channel std")
    p.add_argument("--interpolation", default=None, choices=choices.INTERPOLATIONS)
    p.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        metavar="F",
        help="resize to size / F, then crop the centre (e.g. 0.875: 256 -> 224)",
    )


def data_config_kwargs(args: argparse.Namespace) -> dict:
    """RunConfig fields given on the command line (None = not given), checked."""
    out = {
        k: getattr(args, k)
        for k in (*FIELDS, *PREPROCESS_FIELDS)
        if getattr(args, k, None) is not None
    }
    for name in ("mean", "std"):
        if name in out:
            out[name] = _floats(out[name], f"--{name}")
    if "dataset" in out:
        from clusterprobe.runners.data.registry import resolve

        resolve(out["dataset"])  # UsageError with close matches
    for name in ("classes", "subclasses", "train_per_subclass", "eval_per_subclass", "image_size"):
        if name in out and out[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} {out[name]}: must be >= 1")
    from clusterprobe.runners.data.breeds import check_split

    check_split(out.get("split"), out.get("classes"), out.get("subclasses"), out.get("shuffled"))
    return out


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: give 3 comma-separated numbers, e.g. 0.485,0.456,0.406"
        ) from None
