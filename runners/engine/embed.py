"""Stream images through a model and reduce each tapped layer to Gram matrices.

The paper clusters flattened activations (up to 802,816 values per image for
ResNet-50 block 1 at 224 px) inside each superclass. Ward needs only pairwise
distances, and distances of unit vectors follow from their Gram matrix, so per
superclass and layer we keep just ``G = X X^T`` (n x n) of the flattened,
L2-normalised activations X. Everything up to G happens on the compute device;
only the n x n matrices (and small pooled vectors) reach the host.

Memory bound: a superclass's flattened features of several layers are held on
the device (raw, in one reused buffer; normalised only at the Gram, from its
diagonal) only while they fit ``memory_budget``; layers are grouped into forward
passes that fit, and a layer too wide even alone is done in row blocks, re-running
the forward for the blocks it pairs with (G[p, q] = X_p X_q^T). So a superclass
of 1,000 images at 224 px fits a 24 GB card at the cost of extra forward passes.

Same code path on CPU and CUDA. ``precision="bf16"`` runs the forward under
bf16 autocast (CPU too); on CUDA it also stores features in bf16 and forms
Grams with fp32 accumulation and output. ``"fp32"`` keeps fp32 throughout
(TF32 off for convolutions and matmuls while embedding). ``"fp64"`` runs the model
in float64 for the duration (its float32 weights cast exactly, restored after) and
keeps features and Grams in float64: for exact comparisons with references that
cluster float64 features (sklearn), where fp32 rounding can flip a near-tied merge.

``outputs=True`` also keeps the model's own output (logits) of every eval image:
the pass that reaches the last tap runs on to the end of the model instead of
stopping there, so the cost is only the layers after the last tap (ResNet: pool +
fc; ViT: final norm + head; VGG: nothing, its last tap is the classifier).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from clusterprobe.runners.choices import PRECISIONS, check_choice
from clusterprobe.runners.engine.cluster import DeadLayerWarning
from clusterprobe.runners.engine.progress import progress_bar


@dataclass
class Embedding:
    """What the model's evaluation pass leaves behind; enough to re-cluster.

    Rows of ``grams[s]`` follow ``eval_index[s]`` (indices into the eval split).
    """

    layer_names: list[str]
    grams: dict[int, np.ndarray]  # superclass -> float32 [L, n, n], Gram of unit vectors
    eval_index: dict[int, np.ndarray]  # superclass -> int64 [n] indices into the eval split
    pixel_grams: dict[int, np.ndarray]  # superclass -> float32 [n, n], raw pixels
    pooled: list[np.ndarray]  # per layer float32 [N_eval, C_l] (GAP / token mean), eval order
    dead: dict[int, list[int]] = field(default_factory=dict)  # layer -> superclasses with zero rows
    outputs: np.ndarray | None = None  # float64 [N_eval, C]: the model's output (outputs=True)
    reduced: list[np.ndarray] | None = None  # per layer float32 [N_eval, k]: ``reduce``'s rows
    params: dict[str, str] = field(
        default_factory=dict
    )  # precision, budget, passes: how it was made


# --- small tensor helpers ----------------------------------------------------------------


def flatten(t: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, D] without a copy where possible.

    A channels_last activation is flattened in memory order (H, W, C): the Gram
    matrix is invariant to the order of features, so no transpose copy is needed.
    """
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def scale_to_unit(gram: torch.Tensor) -> torch.Tensor:
    """Turn ``X X^T`` into the Gram of X's L2-normalised rows, in place; zero rows stay zero.

    ``G_ij / (|x_i| |x_j|)`` with the norms read off the diagonal: the features are
    stored raw, so the two full passes over them that normalising first would take
    (norms, then scale) shrink to n^2 work on the Gram.
    """
    norms = torch.sqrt(torch.diagonal(gram).clamp_min(0))
    inv = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
    gram.mul_(inv[:, None])
    gram.mul_(inv[None, :])
    return gram


def unit_gram(x: torch.Tensor) -> torch.Tensor:
    """fp32 Gram of the L2-normalised rows of ``x`` [n, D] (zero rows stay zero)."""
    return scale_to_unit(gram_block(x, x))


def pool(t: torch.Tensor, how: str = "avg", prefix_tokens: int = 0) -> torch.Tensor:
    """The pooled vector, fp32: [B,C,H,W] -> mean over H,W; [B,T,C] -> the mean of tokens
    ``prefix_tokens`` onwards (``how="avg"``: a ViT's patch tokens) or the class token
    (``how="token"``: token 0), following the model's own pooling."""
    if t.dim() == 4:
        return t.mean(dim=(2, 3), dtype=torch.float32)
    if t.dim() == 3:
        if how == "token":
            return t[:, 0].float()
        return t[:, prefix_tokens:].mean(dim=1, dtype=torch.float32)
    return t.reshape(t.shape[0], -1).float()


def pool_tap(t: torch.Tensor, tap) -> torch.Tensor:
    """:func:`pool` with the tap's pooling (``Tap.pool``, ``Tap.prefix_tokens``)."""
    return pool(t, getattr(tap, "pool", "avg"), getattr(tap, "prefix_tokens", 0))


def _tap_rows(t: torch.Tensor, pos: int, tap, reduce=None) -> torch.Tensor:
    """Tap ``pos``'s rows of activation ``t``: pooled (``reduce`` None), or what
    ``reduce(pos, flattened rows)`` makes of them (e.g. ``projection.Projector``)."""
    return pool_tap(t, tap) if reduce is None else reduce(pos, flatten(t))


def gram_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in fp32 (bf16 inputs accumulate and return in fp32; fp64 stays fp64)."""
    if a.dtype == torch.float64:
        return a @ b.to(torch.float64).T
    if a.dtype == torch.bfloat16 and a.is_cuda:
        try:
            return torch.mm(a, b.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # older torch: no mm(out_dtype=)
            pass
    return a.float() @ b.float().T


def _tensor_of(x):
    """The first tensor in a hook payload (modules may return tuples)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise TypeError(f"a tapped module produced {type(x).__name__}, not a tensor; tap another layer")


class _Stop(Exception):
    """Raised by the last hook of a pass: the rest of the forward is not needed."""


class _Taps:
    """Forward hooks on the taps of one pass; each calls ``consume(pos, activation)``."""

    def __init__(self, taps, positions, consume, stop_early=True):
        self.taps = taps
        self.positions = list(positions)
        self.consume = consume
        self.stop_early = stop_early
        self.handles = []
        self.seen: set[int] = set()

    def __enter__(self):
        for pos in self.positions:
            tap = self.taps[pos]
            if getattr(tap, "capture", "output") == "input":
                h = tap.module.register_forward_pre_hook(self._pre(pos))
            else:
                h = tap.module.register_forward_hook(self._post(pos))
            self.handles.append(h)
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

    def _got(self, pos, x):
        x = _tensor_of(x).detach()
        if x.dim() == 4 and getattr(self.taps[pos], "layout", "NCHW") == "NHWC":
            # A channels-last view (no copy): pooling averages over H, W; flatten keeps
            # the memory order, which the Gram does not see.
            x = x.permute(0, 3, 1, 2)
        self.consume(pos, x)
        self.seen.add(pos)
        if self.stop_early and len(self.seen) == len(self.positions):
            raise _Stop

    def _pre(self, pos):
        def hook(module, args):
            self._got(pos, args)

        return hook

    def _post(self, pos):
        def hook(module, args, output):
            self._got(pos, output)

        return hook

    def run(self, model, x, precision):
        """Forward ``x``; the model's output, or None when the last hook stopped it early."""
        self.seen = set()
        out = None
        if precision == "fp64":
            x = x.to(torch.float64)  # the model is float64 under _eval_mode
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if precision == "bf16":
                stack.enter_context(torch.autocast(device_type=x.device.type, dtype=torch.bfloat16))
            try:
                out = model(x)
            except _Stop:
                pass
        missing = set(self.positions) - self.seen
        if missing:
            names = [self.taps[p].name for p in sorted(missing)]
            raise ValueError(f"taps {names} never ran in the forward pass; are they in this model?")
        return out


@contextlib.contextmanager
def _eval_mode(model, precision, device):
    """model.eval(), a pinned matmul precision and (fp64) float64 weights for the duration;
    all restored after (float32 -> float64 -> float32 is exact)."""
    was_training = model.training
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if precision == "fp64" and dtype is not None:
        model.to(torch.float64)
    cuda = device.type == "cuda"
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if cuda:
        # fp32 means fp32 convolutions and Grams (PyTorch lets cuDNN use TF32 by default);
        # under bf16 the forward's own rounding dwarfs TF32's, so allow it there.
        torch.backends.cuda.matmul.allow_tf32 = precision == "bf16"
        torch.backends.cudnn.allow_tf32 = precision == "bf16"
    try:
        yield
    finally:
        model.train(was_training)
        if precision == "fp64" and dtype is not None:
            model.to(dtype)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --- streaming images ---------------------------------------------------------------------


def _images(dataset):
    """A tensor of all images when the dataset is one (fast path), else None."""
    if isinstance(dataset, torch.Tensor):
        return dataset
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0]
    return None


def _batches(dataset, rows: np.ndarray, batch_size: int, device, workers: int = 0):
    """Yield image batches (on ``device``) of ``dataset[rows]`` in order."""
    images = _images(dataset)
    if images is not None:
        for start in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[start : start + batch_size], device=images.device)
            yield images.index_select(0, idx).to(device, non_blocking=True)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [int(r) for r in rows]),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for item in loader:
        x = item[0] if isinstance(item, (tuple, list)) else item
        yield x.to(device, non_blocking=True)


def _first_image(dataset, index: int) -> torch.Tensor:
    images = _images(dataset)
    if images is not None:
        return images[index : index + 1]
    item = dataset[int(index)]
    x = item[0] if isinstance(item, (tuple, list)) else item
    return x.unsqueeze(0)


def _probe_shapes(model, taps, dataset, index, device, precision) -> list[tuple[int, int]]:
    """(flattened width D, pooled width C) of every tap, from a one-image forward."""
    out: dict[int, tuple[int, int]] = {}

    def consume(pos, t):
        out[pos] = (int(flatten(t).shape[1]), int(pool_tap(t, taps[pos]).shape[1]))

    x = _first_image(dataset, index).to(device)
    with _Taps(taps, range(len(taps)), consume) as hooks:
        hooks.run(model, x, precision)
    return [out[i] for i in range(len(taps))]


def default_budget(device) -> int:
    """Bytes of normalised features to hold at once: half of free device memory (CPU: 1/4 RAM, <= 8 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return int(min(ram // 4, 8 << 30))


def _plan(widths: list[int], n: int, itemsize: int, budget: int) -> list[list[int]]:
    """Group layer positions (forward order) into passes whose n x D features fit the budget."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for pos, d in enumerate(widths):
        need = n * d * itemsize
        if current and used + need > budget:
            groups.append(current)
            current, used = [], 0
        current.append(pos)
        used += need
    if current:
        groups.append(current)
    return groups


# --- the evaluation pass -------------------------------------------------------------------


class FeatureArena:
    """One flat feature buffer reused by every pass of every superclass.

    A fresh large CPU allocation is zero pages that the OS faults in on first
    touch, which costs about as much as copying the features in; reusing one
    buffer (never larger than a pass needs, so within the memory budget) pays that
    once per evaluation instead of once per superclass.
    """

    def __init__(self, device, dtype):
        self.device = device
        self.dtype = dtype
        self._flat = torch.empty(0, dtype=dtype, device=device)

    def views(self, n: int, widths: list[int]) -> list[torch.Tensor]:
        need = n * sum(widths)
        if self._flat.numel() < need:
            self._flat = torch.empty(0, dtype=self.dtype, device=self.device)  # free first
            self._flat = torch.empty(need, dtype=self.dtype, device=self.device)
        out, offset = [], 0
        for w in widths:
            out.append(self._flat[offset : offset + n * w].view(n, w))
            offset += n * w
        return out


@dataclass(frozen=True)
class _Forward:
    """What every forward pass of one evaluation shares: model, taps, images, settings."""

    model: torch.nn.Module
    taps: list
    dataset: object
    device: torch.device
    precision: str
    batch_size: int
    workers: int
    keep_outputs: bool = False  # also return the model's output where a pass reaches the end
    reduce: Callable[[int, torch.Tensor], torch.Tensor] | None = None  # kept beside the pooled

    def vectors(self, pos: int, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tap ``pos``'s pooled rows of activation ``t``, and its reduced rows (or None)."""
        tap = self.taps[pos]
        reduced = None if self.reduce is None else _tap_rows(t, pos, tap, self.reduce)
        return _tap_rows(t, pos, tap), reduced

    def batches(self, rows: np.ndarray, batch_size: int | None = None):
        """Image batches of ``dataset[rows]`` on the device, in order."""
        size = batch_size or self.batch_size
        return _batches(self.dataset, rows, size, self.device, self.workers)

    def run(self, hooks: _Taps, x: torch.Tensor) -> torch.Tensor | None:
        """One forward of ``x`` with ``hooks`` attached; stops after the last tap unless
        ``hooks.stop_early`` is off, then returns the model's output."""
        with hooks:
            return hooks.run(self.model, x, self.precision)

    def outputs_with(self, positions) -> bool:
        """Whether a pass over ``positions`` runs to the model's end for its outputs: only
        the pass that holds the last tap (it reaches the end at the least extra cost)."""
        return self.keep_outputs and len(self.taps) - 1 in positions


class _Superclass:
    """Accumulates Grams and pooled vectors of one superclass, one pass at a time.

    Features are copied raw into the arena as the hooks see them (a later in-place
    op such as VGG's ReLU would change a kept reference) and normalised only at
    the Gram (:func:`scale_to_unit`).
    """

    def __init__(self, n, device, store_dtype, arena):
        self.n = n
        self.device = device
        self.store_dtype = store_dtype
        self.arena = arena

    def full_pass(self, fwd: _Forward, positions, rows, widths):
        """One forward over all n rows holding the features of ``positions``: exact Grams,
        (pooled, reduced) rows per tap, and the model's outputs where
        ``fwd.outputs_with(positions)``."""
        feats = dict(
            zip(positions, self.arena.views(self.n, [widths[p] for p in positions]), strict=True)
        )
        vectors: dict[int, list[tuple]] = {p: [] for p in positions if p >= 0}
        cursor = [0]

        def consume(pos, t):
            b = t.shape[0]
            feats[pos][cursor[0] : cursor[0] + b].copy_(flatten(t))
            if pos >= 0:
                vectors[pos].append(fwd.vectors(pos, t))

        tap_positions = [p for p in positions if p >= 0]
        keep = fwd.outputs_with(tap_positions)
        hooks = _Taps(fwd.taps, tap_positions, consume, stop_early=not keep)
        outputs = []
        for x in fwd.batches(rows):
            if -1 in feats:  # raw pixels, as the model sees them
                consume(-1, x)
            if tap_positions:
                out = fwd.run(hooks, x)
                if keep:
                    outputs.append(_tensor_of(out).to(torch.float64))
            cursor[0] += x.shape[0]
        grams = {p: unit_gram(f) for p, f in feats.items()}
        return (
            grams,
            {p: _joined(v) for p, v in vectors.items()},
            (torch.cat(outputs) if keep else None),
        )

    def blocked_pass(self, fwd: _Forward, pos, rows, width, budget):
        """One layer too wide for n rows: row blocks X_p held in turn, G[p, q] = X_p X_q^T.
        Returns (Gram, (pooled, reduced) or None, outputs); the outputs come from the held
        blocks, which see every row once."""
        itemsize = torch.empty((), dtype=self.store_dtype).element_size()
        bs = max(1, min(fwd.batch_size, budget // (2 * width * itemsize)))
        m = max(1, budget // (width * itemsize) - bs)  # rows held, leaving room for one batch
        gram = torch.zeros((self.n, self.n), dtype=torch.float32, device=self.device)
        vectors: list[tuple] = []
        outputs: list[torch.Tensor] | None = [] if fwd.outputs_with([pos]) else None
        starts = list(range(0, self.n, m))
        for bi, p0 in enumerate(starts):
            p1 = min(self.n, p0 + m)
            # from the arena too: a second buffer beside it would double the memory budget
            held = self.arena.views(p1 - p0, [width])[0]

            def keep(r0, f, t, _held=held):
                _held[r0 : r0 + f.shape[0]] = f
                if pos >= 0:
                    vectors.append(fwd.vectors(pos, t))

            self._stream(fwd, pos, rows[p0:p1], bs, keep, outputs)
            gram[p0:p1, p0:p1] = gram_block(held, held)
            for q0 in starts[bi + 1 :]:
                q1 = min(self.n, q0 + m)

                def cross(r0, f, t, _held=held, _q0=q0, _p0=p0, _p1=p1):
                    block = gram_block(_held, f)
                    gram[_p0:_p1, _q0 + r0 : _q0 + r0 + f.shape[0]] = block
                    gram[_q0 + r0 : _q0 + r0 + f.shape[0], _p0:_p1] = block.T

                self._stream(fwd, pos, rows[q0:q1], bs, cross)
            del held
        joined = _joined(vectors) if vectors else None
        return scale_to_unit(gram), joined, (torch.cat(outputs) if outputs else None)

    def _stream(self, fwd: _Forward, pos, rows, bs, sink, outputs=None):
        """Forward ``rows`` in batches; ``sink(row offset, unit features, activation)`` per batch.
        A list ``outputs`` collects the model's output of every batch (the forward then runs
        to the end instead of stopping at the tap)."""
        offset = [0]
        box: dict[str, torch.Tensor] = {}

        def consume(p, t):
            box["t"] = t

        hooks = None
        if pos >= 0:
            hooks = _Taps(fwd.taps, [pos], consume, stop_early=outputs is None)
        for x in fwd.batches(rows, bs):
            if hooks is None:
                t = x
            else:
                out = fwd.run(hooks, x)
                if outputs is not None:
                    outputs.append(_tensor_of(out).to(torch.float64))
                t = box.pop("t")
            sink(offset[0], flatten(t).to(self.store_dtype), t)
            offset[0] += x.shape[0]


def _joined(parts: list[tuple]) -> tuple:
    """Per-batch (pooled, reduced) pairs -> (all pooled rows, all reduced rows or None)."""
    pooled, reduced = zip(*parts, strict=True)
    return torch.cat(pooled), (None if reduced[0] is None else torch.cat(reduced))


def _host(t: torch.Tensor) -> np.ndarray:
    """float32 on the host; float64 stays float64 (fp64 Grams, model outputs)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).numpy()


def _is_constant(g: np.ndarray) -> bool:
    """All rows zero or all rows identical: every pairwise distance ~0."""
    if g.shape[0] == 0:
        return True
    diag = np.diagonal(g).astype(np.float64)
    if diag.max() == 0.0:
        return True
    if g.shape[0] == 1:  # one image: nothing to compare, not a dead layer
        return False
    d2 = diag[:, None] + diag[None, :] - 2.0 * g.astype(np.float64)
    return bool(d2.max() <= 64 * np.finfo(np.float32).eps * max(1.0, diag.max()))


def embed_eval(
    model,
    taps,
    dataset,
    labels,
    *,
    device,
    precision: str = "fp32",
    batch_size: int = 256,
    quiet: bool = False,
    memory_budget: int | None = None,
    workers: int = 0,
    pixels: bool = True,
    outputs: bool = False,
    reduce=None,
) -> Embedding:
    """Per superclass: forward its eval images, Gram of every tap (and raw pixels) on ``device``.

    model: a torch module already on ``device``. taps: list of Tap (index order =
    forward order; ``capture`` "output" hooks the module's output, "input" its
    first input; ``layout`` "NHWC" marks channels-last 4-D activations). dataset: the eval split (items ``(image, superclass, subclass)``),
    or a tensor of images; labels: its :class:`Labels`. Returns an
    :class:`Embedding`; constant layers are listed in ``.dead`` with a warning.
    ``outputs=True``: ``.outputs`` holds the model's output for every eval image (the
    pass with the last tap runs to the end of the model; see the module docstring).
    ``reduce(layer, flat activation) -> [B, k]`` (e.g. ``projection.Projector``):
    ``.reduced`` holds its rows for every eval image, made in the same passes.
    Bad arguments raise ValueError (TypeError for a tap that yields no tensor).
    """
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    if not taps:
        raise ValueError("no layers to tap: the taps list is empty")
    sup = np.asarray(labels.superclass)
    if sup.shape[0] == 0:
        raise ValueError("the evaluation set is empty")
    budget = int(memory_budget) if memory_budget is not None else default_budget(device)
    fwd = _Forward(
        model, list(taps), dataset, device, precision, batch_size, workers, outputs, reduce
    )
    with _eval_mode(model, precision, device):
        run = _Evaluation(fwd, budget, n_eval=sup.shape[0], pixels=pixels)
        sups = sorted(int(s) for s in np.unique(sup))
        bar = progress_bar(len(sups), show=not quiet, desc="embed", unit="superclass")
        for s in sups:
            run.add_superclass(s, np.flatnonzero(sup == s).astype(np.int64))
            bar.update(1)
        bar.close()
    for li in sorted(run.dead):
        warnings.warn(
            f"layer {li} ({fwd.taps[li].name}) is dead: constant activations (all zero or all "
            f"identical) in superclass(es) {run.dead[li]}",
            DeadLayerWarning,
            stacklevel=2,
        )
    return run.embedding()


def _store_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Features are held in bf16 on CUDA under bf16 (Grams still accumulate in fp32), in
    float64 under fp64, else in float32."""
    if precision == "fp64":
        return torch.float64
    return torch.bfloat16 if (precision == "bf16" and device.type == "cuda") else torch.float32


class _Evaluation:
    """One :func:`embed_eval` in progress: what every superclass adds up to.

    Construct it under :func:`_eval_mode`: it probes the taps' widths with a
    one-image forward.
    """

    def __init__(self, fwd: _Forward, budget: int, *, n_eval: int, pixels: bool):
        self.fwd = fwd
        self.budget = budget
        self.pixels = pixels
        self.store_dtype = _store_dtype(fwd.precision, fwd.device)
        self.itemsize = torch.empty((), dtype=self.store_dtype).element_size()
        self.arena = FeatureArena(fwd.device, self.store_dtype)
        shapes = _probe_shapes(fwd.model, fwd.taps, fwd.dataset, 0, fwd.device, fwd.precision)
        self.pooled = [np.zeros((n_eval, c), dtype=np.float32) for _, c in shapes]
        self.widths = {p: d for p, (d, _) in enumerate(shapes)}
        self.widths[-1] = int(_first_image(fwd.dataset, 0)[0].numel())  # position -1: pixels
        self.order = ([-1] if pixels else []) + list(range(len(fwd.taps)))
        self.grams: dict[int, np.ndarray] = {}
        self.pixel_grams: dict[int, np.ndarray] = {}
        self.eval_index: dict[int, np.ndarray] = {}
        self.dead: dict[int, list[int]] = {}
        self.outputs: np.ndarray | None = None  # [n_eval, C], allocated at the first output
        self.reduced: list[np.ndarray | None] = [None] * len(fwd.taps)  # at the first rows
        self.n_eval = n_eval
        self.passes = 0

    def add_superclass(self, s: int, rows: np.ndarray) -> None:
        """Grams (every tap, pixels) and pooled vectors of superclass ``s`` = ``dataset[rows]``."""
        out = self._unit_grams(rows)
        num_layers = len(self.fwd.taps)
        stack = np.stack([_host(out[p]) for p in range(num_layers)])
        if not np.isfinite(stack).all():
            li = int(np.argwhere(~np.isfinite(stack).reshape(num_layers, -1).all(axis=1))[0, 0])
            raise ValueError(
                f"layer {li} ({self.fwd.taps[li].name}): activations hold NaN/Inf for "
                f"superclass {s} (a diverged model, or an fp16/bf16 overflow?)"
            )
        self.grams[s] = stack
        if self.pixels:
            self.pixel_grams[s] = _host(out[-1])
        self.eval_index[s] = rows
        for li in range(num_layers):
            if _is_constant(stack[li]):
                self.dead.setdefault(li, []).append(s)

    def _unit_grams(self, rows: np.ndarray) -> dict[int, torch.Tensor]:
        """Position -> unit Gram of one superclass, in as few forward passes as the budget
        allows; pooled vectors are written into ``self.pooled`` on the way."""
        n = rows.shape[0]
        acc = _Superclass(n, self.fwd.device, self.store_dtype, self.arena)
        out: dict[int, torch.Tensor] = {}
        for group in _plan([self.widths[p] for p in self.order], n, self.itemsize, self.budget):
            positions = [self.order[i] for i in group]
            if n * sum(self.widths[p] for p in positions) * self.itemsize <= self.budget:
                grams, vectors, outputs = acc.full_pass(self.fwd, positions, rows, self.widths)
                out.update(grams)
                for p, v in vectors.items():
                    self._keep_vectors(p, rows, v)
            else:  # a single layer wider than the budget allows for n rows
                (pos,) = positions
                out[pos], vectors, outputs = acc.blocked_pass(
                    self.fwd, pos, rows, self.widths[pos], self.budget
                )
                if vectors is not None:
                    self._keep_vectors(pos, rows, vectors)
            if outputs is not None:
                self._keep_outputs(rows, outputs)
            self.passes += 1
        return out

    def _keep_vectors(self, pos: int, rows: np.ndarray, vectors: tuple) -> None:
        pooled, reduced = vectors
        self.pooled[pos][rows] = _host(pooled)
        if reduced is not None:
            if self.reduced[pos] is None:
                self.reduced[pos] = np.zeros((self.n_eval, reduced.shape[1]), dtype=np.float32)
            self.reduced[pos][rows] = _host(reduced)

    def _keep_outputs(self, rows: np.ndarray, outputs: torch.Tensor) -> None:
        values = _host(outputs.reshape(outputs.shape[0], -1))
        if self.outputs is None:
            self.outputs = np.zeros((self.n_eval, values.shape[1]), dtype=np.float64)
        self.outputs[rows] = values

    def embedding(self) -> Embedding:
        fwd = self.fwd
        bf16_cuda = fwd.precision == "bf16" and fwd.device.type == "cuda"
        params = {
            "precision": fwd.precision,
            "feature_store": str(self.store_dtype).replace("torch.", ""),
            "gram": "fp64" if fwd.precision == "fp64" else ("tf32" if bf16_cuda else "fp32"),
            "device": str(fwd.device),
            "memory_budget_bytes": str(self.budget),
            "forward_passes": str(self.passes),
            "normalisation": "l2 per example, zero rows stay zero",
        }
        return Embedding(
            layer_names=[t.name for t in fwd.taps],
            grams=self.grams,
            eval_index=self.eval_index,
            pixel_grams=self.pixel_grams,
            pooled=self.pooled,
            dead=self.dead,
            outputs=self.outputs,
            reduced=None if fwd.reduce is None else self.reduced,
            params=params,
        )


def pooled_features(
    model,
    taps,
    dataset,
    indices=None,
    *,
    device,
    precision: str = "fp32",
    batch_size: int = 256,
    workers: int = 0,
    quiet: bool = True,
    reduce=None,
) -> list[np.ndarray]:
    """Per layer float32 [n, C_l]: pooled activations of ``dataset[indices]`` (global average;
    a ViT's tokens as the model pools them, :func:`pool_tap`); or, with ``reduce(layer,
    activation) -> [B, k]`` (e.g. ``projection.Projector``), what it makes of each batch's
    flattened activation, so only the reduced rows are ever kept."""
    (features,) = layer_features(
        model,
        taps,
        dataset,
        indices,
        reducers=(reduce,),
        device=device,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
        quiet=quiet,
    )
    return features


def layer_features(
    model,
    taps,
    dataset,
    indices=None,
    *,
    reducers,
    device,
    precision: str = "fp32",
    batch_size: int = 256,
    workers: int = 0,
    quiet: bool = True,
    desc: str | None = None,
) -> list[list[np.ndarray]]:
    """:func:`pooled_features` for each of ``reducers`` (None: pooled) from one forward
    pass: per reducer, per layer float32 [n, k]. ``desc`` names the progress bar."""
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    rows = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    chunks = [[[] for _ in taps] for _ in reducers]

    def consume(pos, t):
        for out, reduce in zip(chunks, reducers, strict=True):
            out[pos].append(_tap_rows(t, pos, taps[pos], reduce).cpu())

    hooks = _Taps(taps, range(len(taps)), consume)
    desc = desc or ("pooled" if reducers == (None,) else "features")
    progress = progress_bar(len(rows), show=not quiet, desc=desc, unit="image")
    with _eval_mode(model, precision, device):
        for x in _batches(dataset, rows, batch_size, device, workers):
            with hooks:
                hooks.run(model, x, precision)
            progress.update(x.shape[0])
    progress.close()
    if len(rows) == 0:
        return [[np.zeros((0, 0), dtype=np.float32) for _ in taps] for _ in reducers]
    return [[torch.cat(c).numpy().astype(np.float32, copy=False) for c in out] for out in chunks]
