"""timm's pretrained weights, read from the local Hugging Face cache: no network unless asked.

:func:`locate` finds the file timm would load for a name (``arch.tag``; the
architecture's default tag without one) in the Hugging Face cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), in the
layout ``huggingface_hub`` writes (``models--timm--NAME/refs/main`` naming a
``snapshots/COMMIT/`` folder), the safetensors file before the pickle as timm tries
them. The few weights timm keeps only at a URL are looked for in torch hub's
``checkpoints/`` folder. Not there: one UsageError line saying how to fetch it; the
network is not tried, so an offline machine answers at once instead of waiting on
timeouts. With ``download=True`` a missing file is fetched into that cache
(``huggingface_hub.hf_hub_download``, or torch hub for a URL).

:func:`offline` guards the load itself: huggingface_hub's offline switch is on
while timm reads the file, so nothing it calls can reach for the network.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clusterprobe.tracker.errors import UsageError


def _safe_alternative(filename: str) -> str | None:
    """The safetensors file timm tries before a hub repository's pickle ``filename``
    (timm.models._hub._get_safe_alternatives: huggingface_hub's standard names)."""
    from huggingface_hub import constants

    if filename.endswith(constants.PYTORCH_WEIGHTS_NAME):  # open_clip_pytorch_model.bin too
        prefix = filename[: -len(constants.PYTORCH_WEIGHTS_NAME)]
        return prefix + constants.SAFETENSORS_SINGLE_FILE
    return filename[: -len(".bin")] + ".safetensors" if filename.endswith(".bin") else None


@dataclass(frozen=True)
class PretrainedWeights:
    name: str  # arch.tag, as timm resolves the name given
    hf_hub_id: str  # the Hugging Face repository ('' for weights kept only at a URL)
    path: Path  # the cached file
    num_classes: int  # the width of the head they were trained with (0: none)


def hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it
    once, at import)."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_name(name: str):
    """``(arch.tag, timm's PretrainedCfg)`` of ``name``; UsageError for an unknown model or
    tag, or one timm has no pretrained weights for."""
    import timm
    from clusterprobe.runners.models import check_name
    from timm.models import get_pretrained_cfg

    check_name(name)
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tagged = timm.list_pretrained(f"{name.partition('.')[0]}*")[:6]
        hint = f"; pretrained names like it: {', '.join(tagged)}" if tagged else ""
        raise UsageError(f"--pretrained {name!r}: timm has no pretrained weights for it{hint}")
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return full, cfg


def locate(name: str, *, download: bool = False) -> PretrainedWeights:
    """The cached weights file of ``name`` (see the module docstring); UsageError, naming
    the cache and how to fill it, when it is not there and ``download`` is False."""
    full, cfg = resolve_name(name)
    if cfg.hf_hub_id:
        path, where, fetch = _from_hub(cfg, download)
    else:
        path, where, fetch = _from_url(cfg.url, download)
    if path is None:
        raise UsageError(
            f"--pretrained {full}: its weights are not in {where}; fetch them once with "
            f"--download (or `{fetch}`), or point HF_HOME at a cache that holds them"
        )
    return PretrainedWeights(full, cfg.hf_hub_id or "", path, int(cfg.num_classes or 0))


def _from_hub(cfg, download: bool):
    """(cached file or None, where it was looked for, the command that fetches it)."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or constants.PYTORCH_WEIGHTS_NAME  # timm's default name
    names = [n for n in (_safe_alternative(filename), filename) if n]
    cache = hub_cache()
    for candidate in names:
        found = try_to_load_from_cache(repo, candidate, cache_dir=cache, revision=revision or None)
        if isinstance(found, str):
            return Path(found), _hub_where(cache), f"hf download {repo}"
    if download:
        return _download_hub(repo, names, revision or None, cache), "", ""
    return None, _hub_where(cache), f"hf download {repo}"


def _hub_where(cache: Path) -> str:
    return f"the Hugging Face cache ({cache})"


def _download_hub(repo: str, names: list[str], revision, cache: Path) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    for candidate in names:
        try:
            with _quiet_hub():  # its retry warnings: the one error line below says it all
                return Path(hf_hub_download(repo, candidate, revision=revision, cache_dir=cache))
        except RemoteEntryNotFoundError:  # the Hub answered: no such file, try the next name
            continue
        except Exception as err:  # no network (huggingface_hub retries first), no repository
            raise UsageError(
                f"--download: could not fetch {repo}/{candidate} ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:160]})"
            ) from None
    raise UsageError(f"--download: {repo} holds none of {', '.join(names)}")


def _from_url(url: str, download: bool):
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if target.is_file():
        return target, "", ""
    if download:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target))
        except Exception as err:
            raise UsageError(
                f"--download: could not fetch {url} ({type(err).__name__}: {err})"
            ) from None
        return target, "", ""
    return None, f"torch hub's checkpoints ({target.parent})", f"curl -L -o {target} {url}"


@contextlib.contextmanager
def _quiet_hub():
    import logging

    logger = logging.getLogger("huggingface_hub")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def offline():
    """huggingface_hub's offline mode for the duration (its env var, and the module flag
    it read at import), restored after."""
    from huggingface_hub import constants

    before_env, before_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before_flag
        if before_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before_env
