"""A model's weights from a local file: read them, fingerprint them, fit them to a model.

:func:`read_weights` takes a safetensors file, or a torch pickle (``.pt``, ``.pth``,
``.bin``) loaded with ``torch.load(weights_only=True)``, which runs no code from
the file. A dict holding the state dict under ``state_dict``, ``model`` or
``model_state_dict`` (how training scripts and timm's own checkpoints save it) is
unwrapped, and a prefix every key shares, ``module.`` (DataParallel) or
``_orig_mod.`` (torch.compile), is dropped. The sha256 of the file's bytes
identifies the weights. :func:`load_into` loads them into a model, refusing
weights that do not fit (another architecture) with one line that counts the
tensors. Every problem is one UsageError line naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from clusterprobe.tracker.errors import UsageError

FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch"}
WRAPPERS = ("state_dict", "model", "model_state_dict")
PREFIXES = ("module.", "_orig_mod.")
# BatchNorm's batch counter: often left out of exported weights, and unused in eval mode.
OPTIONAL_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class WeightsFile:
    path: Path  # absolute
    sha256: str  # of the file's bytes
    size: int  # bytes
    format: str  # "safetensors" | "torch"
    state: dict[str, torch.Tensor]


def read_weights(path) -> WeightsFile:
    """Read a state dict from ``path``; UsageError if it is missing, unreadable or no state
    dict."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise UsageError(f"--weights {str(path)!r}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"--weights {str(path)!r}: unknown format; give a {', '.join(FORMATS)} file"
        )
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(
            f"--weights {str(path)!r}: not a readable {fmt} file "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from None
    state = _strip_prefix(_unwrap(loaded, path))
    return WeightsFile(path, file_sha256(path), path.stat().st_size, fmt, state)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise UsageError(f"--weights {str(path)!r}: holds no state dict (a dict of tensors)")
    odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise UsageError(
            f"--weights {str(path)!r}: {len(odd)} entries are not tensors (first: {odd[0]!r}); "
            f"give a state dict, or a dict holding one under {' / '.join(WRAPPERS)}"
        )
    return obj


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def head_width(state: dict[str, torch.Tensor], classifier: str) -> int:
    """Outputs of the classifier module ``classifier`` in ``state``; 0 when the file holds
    none (weights saved without a head)."""
    weight = state.get(f"{classifier}.weight")
    return 0 if weight is None else int(weight.shape[0])


def load_into(model: torch.nn.Module, weights: WeightsFile, arch: str) -> None:
    """Load ``weights`` into ``model`` (built for ``arch``), every tensor checked first.

    A missing BatchNorm batch counter is allowed (eval never reads it); any other
    missing, unexpected or differently shaped tensor means weights for another
    architecture: one UsageError line counting each kind, with the first example.
    """
    expected = model.state_dict()
    state = weights.state
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    if mismatched or missing or unexpected:
        first = []
        if mismatched:
            k = mismatched[0]
            first.append(
                f"{k} is {list(state[k].shape)} in the file, {list(expected[k].shape)} in {arch}"
            )
        first += [f"first missing: {missing[0]}"] if missing else []
        first += [f"first unexpected: {unexpected[0]}"] if unexpected else []
        hint = ""
        if any(k.endswith("pos_embed") for k in mismatched):
            hint = "; a ViT's position embeddings fix its image size: pass --image-size"
        elif any(k.startswith("fc_norm.") for k in (*missing, *unexpected)):
            hint = "; a ViT's fc_norm comes with its pooling: pass --pool gap or --pool cls"
        raise UsageError(
            f"--weights {str(weights.path)!r} does not fit --arch {arch}: {len(mismatched)} "
            f"tensors of another shape, {len(missing)} missing, {len(unexpected)} unexpected "
            f"({'; '.join(first)}); are they weights for another architecture?{hint}"
        )
    model.load_state_dict(state, strict=False)  # strict=False: only the batch counters may lack
