"""Seeded sparse random projection of flattened features, applied one batch at a time.

The paper's linear probe (arXiv 2311.07864, authors' code) reads a layer's whole
activation, flattened, through a sparse random projection. Flattened early layers
are huge (ResNet-50 block 1 at 224 px: 802,816 values per image), so here each
batch's activation is projected as it leaves the model and only the projected
[n, dim] rows are kept: the flattened features of a dataset are never held whole.

The matrix is the "very sparse" projection of Li, Hastie & Church (KDD 2006), as
sklearn's ``SparseRandomProjection(density="auto")`` draws it: density s = 1/sqrt(D);
each of the ``dim`` rows has Binomial(D, s) non-zeros at distinct random columns,
each +-sqrt(1/s)/sqrt(dim) with equal odds; so squared norms are preserved in
expectation. It is drawn from ``numpy.random.default_rng([seed, layer])`` and stored
sparse (CSR, about dim * sqrt(D) entries: 0.9M for that ResNet-50 layer at dim
1,024), so the same seed gives the same matrix on every machine. A layer with
D <= dim is returned flattened as it is: projecting it would only add noise.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch


def sparse_projection(d_in: int, dim: int, seed) -> torch.Tensor:
    """The [dim, d_in] sparse projection matrix (float32 CSR) drawn from ``seed``
    (an int or a sequence of ints for ``numpy.random.default_rng``)."""
    if d_in < 1 or dim < 1:
        raise ValueError(f"projection of {d_in} features to {dim}: both must be >= 1")
    rng = np.random.default_rng(seed)
    density = 1.0 / math.sqrt(d_in)
    counts = rng.binomial(d_in, density, size=dim)
    columns = [np.sort(rng.choice(d_in, size=int(c), replace=False)) for c in counts]
    col = np.concatenate(columns).astype(np.int64) if columns else np.zeros(0, np.int64)
    scale = math.sqrt(1.0 / density) / math.sqrt(dim)
    values = np.where(rng.integers(0, 2, size=len(col)) == 1, scale, -scale).astype(np.float32)
    crow = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with warnings.catch_warnings():  # CSR is "beta" in torch; the product used here is not
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(col),
            torch.from_numpy(values),
            (dim, d_in),
            check_invariants=False,  # built sorted and in range above
        )


class Projector:
    """Projects each layer's flattened batch to ``dim`` features (matrices built lazily,
    one per layer, seeded by (seed, layer))."""

    def __init__(self, dim: int, seed: int):
        if dim < 1:
            raise ValueError(f"projection dimension {dim}: must be >= 1")
        self.dim, self.seed = dim, seed
        self.matrices: dict[int, torch.Tensor] = {}

    def matrix(self, layer: int, d_in: int, device) -> torch.Tensor:
        m = self.matrices.get(layer)
        if m is None or m.shape[1] != d_in:
            m = sparse_projection(d_in, self.dim, [self.seed, layer]).to(device)
            self.matrices[layer] = m
        return m

    def __call__(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """[B, D] (any float dtype) -> float32 [B, dim], or [B, D] itself when D <= dim."""
        x = x.reshape(x.shape[0], -1).float()
        if x.shape[1] <= self.dim:
            return x
        # (P @ x^T)^T: the sparse-dense product torch has on CPU and CUDA alike
        return torch.sparse.mm(self.matrix(layer, x.shape[1], x.device), x.T).T

    def nbytes(self) -> int:
        """Bytes held by the matrices built so far."""
        return sum(
            sum(
                t.numel() * t.element_size()
                for t in (m.crow_indices(), m.col_indices(), m.values())
            )
            for m in self.matrices.values()
        )
