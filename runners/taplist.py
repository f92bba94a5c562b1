"""`--taps list`: the layers a model would be measured at, without measuring anything.

The model is built on the meta device (no weights, no memory), its taps found as a
measurement finds them (``models.layer_taps``: the family by class), and one meta
forward gives each tap's activation shape at the input size the run would use.
"""

from __future__ import annotations

from clusterprobe.runners import models


def input_size(config) -> int:
    """The input size ``config`` would feed: ``--image-size``, else the model's (preprocess
    "model"), else the dataset's own."""
    if config.image_size:
        return int(config.image_size)
    if config.preprocess == "model":
        from clusterprobe.runners.data.preprocess import model_recipe

        return model_recipe(config.arch).input_size
    import importlib

    from clusterprobe.runners.data.registry import canonical, resolve

    module = importlib.import_module(resolve(canonical(config).dataset).module)
    size = module.describe().get("image_size")
    return int(size) if isinstance(size, int) else 224


def format_taps(config) -> str:
    """The table ``--taps list`` prints for ``config.arch`` (UsageError: unknown name)."""
    family = models.arch_family(config.arch)
    size = input_size(config)
    rows = models.tap_table(config, size)
    header = (
        f"{config.arch}: family {family} ({models.ARCH_FAMILIES[family].doc}); "
        f"{len(rows)} taps (--taps {config.taps}) at {size} px"
    )
    width = max(len(r["name"]) for r in rows)
    mod_width = max(len(r["module"]) for r in rows)
    lines = [
        header,
        f"{'index':>5}  {'name':<{width}}  {'kind':<7}  {'module':<{mod_width}}  shape",
    ]
    for r in rows:
        shape = " x ".join(map(str, r["shape"])) if r["shape"] else "?"
        if r["shape"] and len(r["shape"]) == 3 and r["layout"] == "NHWC":
            shape += " (H x W x C)"
        lines.append(
            f"{r['index']:>5}  {r['name']:<{width}}  {r['kind']:<7}  "
            f"{r['module']:<{mod_width}}  {shape}"
        )
    if family == "features":
        lines.append("(feature_info taps are stage outputs: --taps blocks and stages are the same)")
    return "\n".join(lines)
