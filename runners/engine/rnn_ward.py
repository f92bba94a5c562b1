"""Exact Ward without the distance matrix: rounds of reciprocal nearest neighbours.

``rnn_ward(x)`` returns the linkage matrix of ``scipy.cluster.hierarchy.linkage(x,
"ward")`` (same merges, same order, heights in scipy's convention) in O(N d)
memory plus bounded blocks, in torch on the CPU or on CUDA (one code path).

Why it is exact. Ward's merge cost of clusters A, B needs only their centroids
and sizes, ``cost(A, B) = |A||B| / (|A| + |B|) * ||c_A - c_B||^2``, and Ward is
*reducible*: merging A and B never brings them closer to a third cluster than the
nearer of the two was. Hence two clusters that are each other's nearest
neighbour (reciprocal nearest neighbours, RNN) are merged by the sequential
algorithm sooner or later, whatever merges first, and merging every RNN pair in
the same round gives the sequential dendrogram (Murtagh 1983; the basis of RAC,
Sumengen et al. 2021, arXiv 2105.11653). Reducibility also means that a cluster
whose nearest neighbour took no part in a round keeps it, and that a cluster
whose neighbour merged can find a cheaper one only among the clusters that grew
out of the ``KEEP`` nearest it saw at its last search, or beyond the next bound
it saw (``_State.stale``); so each round searches again only for the merged
clusters and those that this short list does not settle.

One round:

1. nearest neighbour of every cluster that needs one, by blocks of rows against
   all clusters (in round one, where all need one, against the rows from the
   block's own on: each pair once; working memory bounded by ``block_bytes``):
   one float32 matrix product gives a *certified lower bound* of every cost
   (below); a row whose second-lowest bound lies above what the lowest bound's
   column can cost at most has found its neighbour, and the few other rows
   (near-ties, duplicates) take the least exact cost (float64) among the columns
   whose bound does not rule them out, ties to the lowest position;
2. merge every reciprocal pair: size-weighted mean centroid, height
   ``sqrt(2 cost)`` (scipy's convention: the Euclidean distance for two points);
3. mark for step 1 the merged clusters, and those whose neighbour merged unless
   the bounds of their listed clusters prove which is now the nearest.

Precision. Whenever the bounds cannot tell, the answer is decided in float64 by
one function of two centroids (``_State.exact_cost``), symmetric to the last bit,
so exact ties stay ties, the lowest-position rule makes the globally cheapest
pair reciprocal in every round, and the result is deterministic. The search runs
in float32 (three times float64's BLAS speed on the CPU, and the speed of any
GPU): ``[-2 c_i, 1, low_i] . [c_j, low_j, 1]`` with ``low = (1 - rho) |c|^2`` is
``|c_i - c_j|^2`` lowered by ``rho (|c_i|^2 + |c_j|^2)``, and rounded to float32
it errs by less than that (``_rho``: the worst-case error of a (d + 2)-term dot
product and of rounding the inputs, with half as much again to spare), so it is
a lower bound whatever the rounding. Where ``rho`` passes ``MAX_FILTER_RHO`` (d
above ~11,000) the filter runs in float64 instead, same code. TF32 is switched
off for the search (its 10-bit mantissa would void the bound). The data are
centred (Ward is translation invariant: smaller norms, tighter bounds) and scaled
by a power of two to unit largest norm (exact, so no rounding changes; float32
cannot overflow); heights are scaled back.

Dead clusters stay in the arrays with a huge norm (no search picks them) until an
eighth of the rows are dead; then the arrays are compacted (each compaction
shrinks them by an eighth or more, so the copies add up to O(N d)).

The number of rounds, and the fraction of clusters merged and searched in each,
decide how it scales: a round costs one product of the rows it searches against
all rows. :class:`RnnWard` records them (on 512-d blobs: ~20-30% of the clusters
merge per round, ~50 rounds at N = 20,000, a quarter of the clusters searched in
most rounds; the searches add up to ~1.0-1.4 N^2 row-against-row bounds, the
first round's ~N^2/2 included).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from clusterprobe.runners.engine.neighbors import _tf32
from clusterprobe.runners.engine.progress import progress_bar
from clusterprobe.runners.engine.ward import relabel

CPU_BLOCK_BYTES = 256 << 20  # the search's working memory beyond the centroids
CUDA_BLOCK_BYTES = 2 << 30  # larger blocks keep a GPU busy
KEEP = 8  # nearest rows listed per search: candidates when the neighbour merges
MAX_FILTER_RHO = 2e-3  # relative error bound above which the filter runs in float64
_TINY = 2.0**-100  # absolute slack for float32 underflow, far below any cost that matters
# a dead row's "squared norm": finite (an infinity in a BLAS product risks NaN), far
# above any real bound (centroids have norm <= 1, so costs stay below 2 N)
DEAD = 2.0**100


def _two_lowest(torch, g):
    """The two lowest values of each row of ``g`` and their columns (two min passes)."""
    ar = torch.arange(g.shape[0], device=g.device)
    first, j0 = g.min(dim=1)
    g[ar, j0] = math.inf
    second, j1 = g.min(dim=1)
    g[ar, j0] = first
    return torch.stack([first, second], 1), torch.stack([j0, j1], 1)


def _keep_lowest(torch, top, at, rows: slice, v, i) -> None:
    """Merge candidates (values ``v``, columns ``i``) into the running lowest ``top``,
    ``at`` of ``rows``, kept sorted."""
    vals = torch.cat([top[rows], v], 1)
    cols = torch.cat([at[rows], i], 1)
    best, pos = torch.topk(vals, top.shape[1], dim=1, largest=False)
    top[rows] = best
    at[rows] = cols.gather(1, pos)


def _merged_floor(floor_a, floor_b, wa, wb, cost_ab):
    """A lower bound of cost(A + B, K) for every cluster K with cost(A, K) >= floor_a
    and cost(B, K) >= floor_b, any size n: Lance-Williams for Ward,
    ``cost(AB, K) = ((wa + n) cost(A, K) + (wb + n) cost(B, K) - n cost(A, B)) /
    (wa + wb + n)``, increasing in both costs and monotone in n, so the least of
    its values at n = 1 and as n grows without bound."""
    at_one = (wa * floor_a + wb * floor_b + floor_a + floor_b - cost_ab) / (wa + wb + 1.0)
    return at_one.minimum(floor_a + floor_b - cost_ab)


def _rho(d: int, u: float) -> float:
    """Relative error bound of the filter in precision ``u``: the product
    ``[-2 c_i, 1, low_i] . [c_j, low_j, 1]`` (d + 2 terms) errs by at most
    ``gamma_{d+2} (2 |c_i||c_j| + low_i + low_j) <= 2 (d + 2) u (|c_i|^2 + |c_j|^2)``
    (to first order), rounding the inputs adds ``4 u`` of the same; 3 (d + 8) u
    exceeds that sum by half again, which also covers the division by the size factor."""
    return 3.0 * (d + 8) * u


@dataclass
class RnnWard:
    """What ``rnn_ward`` built and how: the tree and the figures that decide its cost."""

    linkage: np.ndarray  # scipy-style Z [N-1, 4]: children, height, size
    device: str  # where the searches ran: "cpu", "cuda", "cuda:1"
    filter: str  # dtype of the search's lower bounds: "fp32" (or "fp64" for huge d)
    active: np.ndarray  # int64 [rounds]: clusters alive at the start of each round
    merged: np.ndarray  # int64 [rounds]: pairs merged in each round
    searched: np.ndarray  # int64 [rounds]: nearest-neighbour searches (rows) in each round
    products: np.ndarray  # int64 [rounds]: row-against-row bounds computed (dead rows too)
    exact_costs: int = 0  # float64 costs evaluated (candidates that passed the filter)
    settled: int = 0  # rows given their new neighbour from their lists, without a search
    fallbacks: int = 0  # rounds with no reciprocal pair (rounding broke a tie's symmetry)
    seconds: dict[str, float] = field(default_factory=dict)  # "search", "merge", "total"

    @property
    def rounds(self) -> int:
        return int(self.active.size)

    def work(self) -> float:
        """Row-against-row bounds of all searches, in units of N^2 (a plain search of
        every row against every row)."""
        n = float(self.active[0]) if self.active.size else 1.0
        return float(self.products.sum()) / (n * n)

    def merged_fraction(self) -> np.ndarray:
        """Fraction of the alive clusters that took part in a merge, per round."""
        return 2.0 * self.merged / np.maximum(self.active, 1)


def resolve_device(device: str = "auto") -> str:
    """``"auto"``: CUDA when torch sees it, else the CPU; ``"cpu"``, ``"cuda"`` or
    ``"cuda:1"`` as given, checked (ValueError naming the device)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not known; use auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked but torch sees no CUDA device; use cpu")
    return str(dev)


def rnn_ward(
    x,
    *,
    device: str = "auto",
    block_bytes: int | None = None,
    quiet: bool = True,
) -> RnnWard:
    """Ward's linkage of the rows of ``x`` [N >= 2, d] (finite numbers), exact, in
    O(N d) memory: equals ``scipy.cluster.hierarchy.linkage(x, "ward")`` where no
    two candidate merges tie (with ties: another of the valid trees, every merge
    at minimum cost).

    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
    ``block_bytes``: the search's working memory beyond the centroids (default
    256 MiB on the CPU, 2 GiB on CUDA). ``quiet=False`` shows a progress bar.
    """
    import torch

    xa = np.asarray(x)
    if xa.ndim != 2 or xa.shape[0] < 2 or xa.shape[1] < 1:
        raise ValueError(f"x must be a 2-D array [N >= 2, d >= 1]; got shape {xa.shape}")
    dev = resolve_device(device)
    budget = block_bytes
    if budget is None:
        budget = CUDA_BLOCK_BYTES if dev.startswith("cuda") else CPU_BLOCK_BYTES
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"block_bytes={block_bytes!r} is invalid; use a positive byte count")
    t_all = time.perf_counter()
    state = _State.start(torch, xa, torch.device(dev), int(budget))
    with _tf32(torch, False):
        rows, stats = _rounds(state, quiet)
    heights = np.concatenate(rows)
    heights[:, 2] *= state.scale  # a power of two: exact
    z = relabel(heights, xa.shape[0])
    total = time.perf_counter() - t_all
    return RnnWard(
        linkage=z,
        device=dev,
        filter=str(state.cols.dtype).replace("torch.float", "fp"),
        active=np.asarray(stats["active"], dtype=np.int64),
        merged=np.asarray(stats["merged"], dtype=np.int64),
        searched=np.asarray(stats["searched"], dtype=np.int64),
        products=np.asarray(stats["products"], dtype=np.int64),
        exact_costs=state.exact_count,
        settled=state.settled,
        fallbacks=stats["fallbacks"],
        seconds={"search": stats["search_s"], "merge": total - stats["search_s"], "total": total},
    )


def _rounds(state: _State, quiet: bool) -> tuple[list[np.ndarray], dict]:
    """Rounds until one cluster is left: the merge rows of each round, and per-round figures."""
    torch = state.torch
    n = state.c.shape[0]
    rows: list[np.ndarray] = []
    stats = dict(active=[], merged=[], searched=[], products=[], fallbacks=0, search_s=0.0)
    need = torch.arange(n, device=state.c.device)
    bar = progress_bar(n - 1, show=not quiet, desc="exact-rnn Ward", unit="merge")
    while state.alive_count > 1:
        stats["active"].append(state.alive_count)
        stats["searched"].append(int(need.numel()))
        t0 = time.perf_counter()
        products = state.search(need) if rows else state.first_round()
        stats["products"].append(products)
        stats["search_s"] += time.perf_counter() - t0
        a, b, fallback = state.reciprocal_pairs()
        stats["fallbacks"] += int(fallback)
        rows.append(state.merge(a, b))
        stats["merged"].append(int(a.numel()))
        need = state.compact(state.stale(a, b))
        bar.update(int(a.numel()))
    bar.close()
    return rows, stats


class _State:
    """The clusters as rows of device tensors (dead rows wait for compaction).

    ``c`` centroids [M, d] float64 (centred, scaled); ``sq`` their squared norms;
    ``cols`` [M, d + 2] in the filter's dtype, ``[c, low, 1]`` with the lowered
    squared norm ``low = (1 - rho) |c|^2 - tiny/2`` (``DEAD`` once dead: no search
    picks a dead row), so that ``[-2 c_i, 1, low_i] . cols_j`` is the lower bound
    of ``|c_i - c_j|^2`` in one matrix product; ``w`` sizes; ``slot`` the leaf id
    naming each cluster in the merge rows; ``made`` the height that formed it (0
    for a leaf); ``nn`` the nearest neighbour (a row); ``near_list`` [M, keep] the
    rows of least bound at the last search (followed through their merges) and
    ``floor`` a lower bound of the cost of every cluster outside that list
    (``stale``); ``_pending`` the rows merged this round with A's and B's lists.
    """

    def __init__(self, torch, c, budget: int, scale: float = 1.0):
        n, d = c.shape
        self.torch, self.budget, self.scale = torch, budget, scale
        rho32 = _rho(d, 2.0**-24)
        fdtype = torch.float32 if rho32 <= MAX_FILTER_RHO else torch.float64
        self.rho = rho32 if fdtype == torch.float32 else _rho(d, 2.0**-53)
        self.c = c
        self.sq = (c * c).sum(1)
        self.cols = torch.empty((n, d + 2), dtype=fdtype, device=c.device)
        self.cols[:, :d] = c
        self.cols[:, d] = self._lowered(self.sq)
        self.cols[:, d + 1] = 1.0
        self.w = torch.ones(n, dtype=torch.float64, device=c.device)
        self.slot = torch.arange(n, device=c.device)
        self.made = torch.zeros_like(self.w)
        self.nn = torch.zeros_like(self.slot)
        self.keep = min(KEEP, n)  # search lists rows only while M >= keep + 2
        self.near_list = torch.zeros((n, self.keep), dtype=torch.int64, device=c.device)
        self.floor = torch.zeros_like(self.w)  # a lower bound of cost(i, k), k not listed
        self.settled = 0
        self.alive = torch.ones_like(self.slot, dtype=torch.bool)
        self.alive_count = n
        self.exact_count = 0

    @classmethod
    def start(cls, torch, x: np.ndarray, dev, budget: int) -> _State:
        # a float64 copy made on the device (none on the host; never x itself)
        c = torch.as_tensor(np.ascontiguousarray(x)).to(dev).to(torch.float64, copy=True)
        c -= c.mean(0)
        top = float(c.norm(dim=1).max())
        k = math.frexp(top)[1] if top > 0 else 0  # top = f * 2^k, 0.5 <= f < 1
        c *= 2.0**-k
        return cls(torch, c, budget, scale=2.0**k)

    def _lowered(self, sq):
        return ((1.0 - self.rho) * sq - _TINY / 2).to(self.cols.dtype)

    def exact_cost(self, i, j):
        """Ward's cost of rows i and j (index tensors), float64, from the difference of
        the centroids: one formula, symmetric in (i, j) to the last bit."""
        torch = self.torch
        out = torch.empty(i.numel(), dtype=torch.float64, device=i.device)
        step = max(1, self.budget // (16 * self.c.shape[1]))
        for s in range(0, i.numel(), step):
            diff = self.c[i[s : s + step]] - self.c[j[s : s + step]]
            out[s : s + step] = (diff * diff).sum(1)
        wi, wj = self.w[i], self.w[j]
        self.exact_count += int(i.numel())
        return wi * wj / (wi + wj) * out

    def search(self, rows) -> int:
        """Nearest neighbour of every row in ``rows``, blockwise against all rows;
        returns the number of bounds computed."""
        m = self.c.shape[0]
        per_elem = 2 * self.cols.element_size()  # the bounds and the size factors
        per_block = max(1, self.budget // (per_elem * m))
        for s in range(0, rows.numel(), per_block):
            blk = rows[s : s + per_block]
            g = self._bound_rows(blk)
            if m < self.keep + 2:  # a handful of rows left: the two lowest will do
                low, idx = _two_lowest(self.torch, g)
            else:
                low, idx = self.torch.topk(g, self.keep + 1, dim=1, largest=False)
            self._conclude(blk, low, idx, g)
        return rows.numel() * m

    def first_round(self) -> int:
        """The search of round one, where every row needs one and every size is 1:
        each block of rows against the rows from its own first on, so every pair's
        bound is computed once and serves both rows (half a plain search's
        products). The lowest bounds of each row gather in a running top list.
        Returns the number of bounds computed."""
        torch = self.torch
        n, k = self.c.shape[0], self.keep + 1
        if n < k + 1:
            return self.search(torch.arange(n, device=self.c.device))
        top = torch.full((n, k), math.inf, dtype=self.cols.dtype, device=self.c.device)
        at = torch.zeros((n, k), dtype=torch.int64, device=self.c.device)
        per_block = self.budget // (2 * self.cols.element_size() * n)
        per_block = max(1, min(per_block, -(-n // 16)))  # 16 blocks or more: ~0.53 N^2
        products = 0
        for s in range(0, n, per_block):
            e = min(n, s + per_block)
            rows = torch.arange(s, e, device=self.c.device)
            g = self._lhs(rows) @ self.cols[s:].T  # bounds of |c_i - c_j|^2, j >= s
            g[rows - s, rows - s] = math.inf
            products += g.numel()
            v, i = torch.topk(g, min(k, n - s), dim=1, largest=False)
            _keep_lowest(torch, top, at, slice(s, e), v, i + s)
            if e < n:  # the same bounds seen from the later rows
                v, i = torch.topk(g[:, e - s :].T, min(k, e - s), dim=1, largest=False)
                _keep_lowest(torch, top, at, slice(e, n), v, i + s)
        self._conclude(torch.arange(n, device=self.c.device), top * 0.5, at)  # cost = d^2 / 2
        return products

    def _bound_rows(self, blk):
        """Lower bounds [b, M] of the costs of rows ``blk`` against all rows (+inf on
        the row itself); dead rows' are huge."""
        torch = self.torch
        g = self._lhs(blk) @ self.cols.T  # lower bound of |c_i - c_j|^2 (may dip below 0)
        inv = 1.0 / self.w.to(g.dtype)
        g /= torch.add(inv[blk, None], inv[None, :])  # lower bound of the cost
        g[torch.arange(blk.numel(), device=blk.device), blk] = math.inf
        return g

    def _conclude(self, blk, low, idx, g=None) -> None:
        """Each row's nearest neighbour, list and floor from its lowest cost bounds
        ``low`` (sorted, [b, keep + 1], or [b, 2] when too few rows are left) and
        their columns ``idx``.

        The column ``j0`` of the lowest bound has a true cost at most
        ``L_ij0 + 2 rho f_ij0 (|c_i|^2 + |c_j0|^2)`` (``f`` = ``|A||B|/(|A|+|B|)``);
        a row whose second-lowest bound is above that has ``j0`` as its unique
        nearest neighbour, and the others (near-ties, duplicates) are settled by
        exact costs over the columns whose bounds do not rule them out (the rows'
        bounds ``g``, recomputed where not given). The list is the ``keep`` lowest
        bounds' columns, the floor the next bound (below every other column's cost).
        """
        torch = self.torch
        if low.shape[1] > self.keep:
            self.near_list[blk] = idx[:, : self.keep]
            self.floor[blk] = low[:, self.keep].double()
        else:
            self.floor[blk] = -math.inf  # no list: nothing to settle from
        first, second, j0 = low[:, 0], low[:, 1], idx[:, 0].clone()
        wi, wj = self.w[blk], self.w[j0]
        slack = 2.0 * self.rho * wi * wj / (wi + wj) * (self.sq[blk] + self.sq[j0])
        thr = (first.double() + slack).to(low.dtype)
        thr = torch.nextafter(thr, torch.full_like(thr, math.inf))  # never round it down
        near = torch.nonzero(second <= thr).squeeze(1)
        if near.numel():
            rows = blk[near]
            g_near = g[near] if g is not None else self._bound_rows(rows)
            j0[near] = self._exact_choice(rows, g_near <= thr[near, None])
        self.nn[blk] = j0

    def _lhs(self, rows):
        """``[-2 c_i, 1, low_i]`` for ``rows``: times ``cols_j``, the bound of ``|c_i - c_j|^2``."""
        d = self.c.shape[1]
        lhs = self.cols[rows]
        lhs[:, :d] *= -2.0
        lhs[:, d] = 1.0
        lhs[:, d + 1] = self.cols[rows, d]
        return lhs

    def _exact_choice(self, rows, passed):
        """Among the columns that passed the filter (``passed`` [r, M] bool), the one of
        least exact cost per row; ties to the lowest position."""
        torch = self.torch
        r, j = torch.nonzero(passed, as_tuple=True)
        cost = self.exact_cost(rows[r], j)
        best = torch.full((rows.numel(),), math.inf, dtype=torch.float64, device=rows.device)
        best.scatter_reduce_(0, r, cost, "amin")
        big = torch.iinfo(torch.int64).max
        pick = torch.where(cost == best[r], j, torch.full_like(j, big))
        out = torch.full((rows.numel(),), big, dtype=torch.int64, device=rows.device)
        return out.scatter_reduce_(0, r, pick, "amin")

    def reciprocal_pairs(self) -> tuple:
        """Rows ``a < b`` that are each other's nearest neighbour, and whether none was
        found and the cheapest pair was taken instead.

        With costs symmetric to the last bit and ties to the lowest position, the
        cheapest pair is always reciprocal. Should a device's reduction break that
        symmetry in a tie, merging the cheapest pair is still a merge at minimum
        cost, and the round still makes progress.
        """
        torch = self.torch
        i = torch.nonzero(self.alive).squeeze(1)
        j = self.nn[i]
        mutual = (i < j) & (self.nn[j] == i)
        if bool(mutual.any()):
            return i[mutual], j[mutual], False
        k = i[torch.argmin(self.exact_cost(i, j))]
        pair = torch.stack([k, self.nn[k]])
        return pair.min().view(1), pair.max().view(1), True

    def merge(self, a, b) -> np.ndarray:
        """Merge rows ``b`` into rows ``a``; the merge rows (kept slot, other slot,
        height, size) as a host array, heights in the scaled units."""
        torch = self.torch
        wa, wb = self.w[a], self.w[b]
        size = wa + wb
        cost = self.exact_cost(a, b)
        self._pending = (a, torch.cat([self.near_list[a], self.near_list[b]], 1))
        self.floor[a] = _merged_floor(self.floor[a], self.floor[b], wa, wb, cost)
        height = torch.sqrt(2.0 * cost)
        # Ward's heights never decrease towards the root; rounding could put a
        # parent a last bit below its child, and relabel sorts by height
        height = torch.maximum(height, torch.maximum(self.made[a], self.made[b]))
        out = torch.stack([self.slot[a].double(), self.slot[b].double(), height, size], 1)
        # c_a + (c_b - c_a) |B| / (|A| + |B|): the weighted mean, and exactly c_a
        # when the two coincide (duplicate points keep merging at height 0)
        ca = self.c[a]
        cen = ca + (self.c[b] - ca) * (wb / size)[:, None]
        self.c[a] = cen
        self.sq[a] = (cen * cen).sum(1)
        self.cols[a, :-2] = cen.to(self.cols.dtype)
        self.cols[a, -2] = self._lowered(self.sq[a])
        self.w[a] = size
        self.made[a] = height
        self.cols[b, -2] = DEAD
        self.w[b] = 1.0  # any positive size: keeps a dead row's cost factor finite
        self.alive[b] = False
        self.alive_count -= int(b.numel())
        return out.cpu().numpy()

    def stale(self, a, b):
        """Rows that need a new search: the merged ones and the rows whose neighbour
        merged, except where their lists prove the new neighbour.

        Reducibility keeps every other row's neighbour. It also bounds the rest of
        row ``j``: a cluster that holds none of the rows listed at ``j``'s last
        search was either outside the list then, costing at least ``floor[j]``, or
        merged since from two such clusters, each no closer to ``j`` than to its
        partner, and so costs at least the cheaper of the two. The listed rows,
        followed through their merges, are the only candidates below ``floor[j]``.
        A merged cluster AB takes the lists of A and B, and a floor from theirs by
        the Lance-Williams formula (``_merged_floor``).
        """
        torch = self.torch
        touched = torch.zeros_like(self.alive)
        touched[a] = True
        touched[b] = True
        home = torch.arange(self.alive.numel(), device=a.device)
        home[b] = a  # the row that now holds each merged cluster
        self.near_list = home[self.near_list]
        orphan = torch.nonzero(self.alive & ~touched & touched[self.nn]).squeeze(1)
        cand = self.near_list[orphan]
        low = self._bounds(orphan, cand)
        found = self._prove(orphan, cand, low, self.floor[orphan])
        rows, union = self._pending
        cand = home[union]
        low = self._bounds(rows, cand)
        made = self._prove(rows, cand, low, self.floor[rows])
        self._relist(rows[made], cand[made], low[made])
        self.settled += int(found.sum()) + int(made.sum())
        need = torch.zeros_like(self.alive)
        need[orphan[~found]] = True
        need[rows[~made]] = True
        return torch.nonzero(need).squeeze(1)

    def _bounds(self, rows, cand):
        """Lower bounds [r, w] of the costs of ``rows`` against their candidate rows
        ``cand`` [r, w]: the search's float32 product, row by row; +inf where a
        candidate is the row itself (A's and B's entries for each other: AB now)."""
        torch = self.torch
        out = torch.empty(cand.shape, dtype=torch.float64, device=cand.device)
        step = max(1, self.budget // (cand.shape[1] * self.cols.shape[1] * 4))
        for s in range(0, rows.numel(), step):
            r, c = rows[s : s + step], cand[s : s + step]
            wi, wk = self.w[r, None], self.w[c]
            low = torch.bmm(self.cols[c], self._lhs(r)[:, :, None]).squeeze(2)
            out[s : s + step] = low.double() * (wi * wk / (wi + wk))
        out[cand == rows[:, None]] = math.inf
        return out

    def _prove(self, rows, cand, low, floor):
        """Where the candidate of least bound certainly costs less than every other
        candidate's bound and than ``floor``, make it the row's neighbour; True there."""
        torch = self.torch
        first, at = low.min(dim=1)
        k0 = cand.gather(1, at[:, None]).squeeze(1)
        wi, wk = self.w[rows], self.w[k0]
        upper = first + 2.0 * self.rho * wi * wk / (wi + wk) * (self.sq[rows] + self.sq[k0])
        others = torch.where(cand == k0[:, None], math.inf, low).min(dim=1).values
        proven = (upper < floor) & (upper < others)
        self.nn[rows[proven]] = k0[proven]
        return proven

    def _relist(self, rows, cand, low) -> None:
        """Keep the ``keep`` candidates of least bound as the rows' list (the row
        itself never: the best one repeated in its place); the floor drops to the
        next bound if that is lower."""
        torch = self.torch
        order = torch.argsort(low, dim=1)
        kept = cand.gather(1, order[:, : self.keep])
        itself = low.gather(1, order[:, : self.keep]) == math.inf
        self.near_list[rows] = torch.where(itself, kept[:, :1], kept)
        nxt = low.gather(1, order[:, self.keep : self.keep + 1]).squeeze(1)
        self.floor[rows] = torch.minimum(self.floor[rows], nxt)

    def compact(self, need):
        """Drop the dead rows once they are an eighth of all; ``need`` renumbered."""
        torch = self.torch
        m = self.c.shape[0]
        if 8 * (m - self.alive_count) < m:
            return need
        keep = torch.nonzero(self.alive).squeeze(1)
        new = torch.full((m,), -1, dtype=torch.int64, device=keep.device)
        new[keep] = torch.arange(keep.numel(), device=keep.device)
        for name in ("c", "sq", "cols", "w", "slot", "made", "floor"):
            setattr(self, name, getattr(self, name)[keep])
        self.near_list = new[self.near_list[keep]]
        self.nn = new[self.nn[keep]]  # a dead neighbour becomes -1: that row is in need
        self.alive = torch.ones_like(self.slot, dtype=torch.bool)
        return new[need]
