r"""DA-MRS's item-item graphs (SPEC §10), built sparse: no ``I x I`` matrix at any point.

Two constructions, both with binary edges normalised as MMRec's DA-MRS does,

.. math::
    w(i, j) = \frac{1}{\sqrt{r_i r_j}}, \qquad r_i = |N(i)| + 10^{-7},

where :math:`N(i)` are the neighbours kept for item :math:`i` (not symmetrised; edge lists hold
row 0 = neighbour :math:`j` (source), row 1 = item :math:`i` (target), so that propagation over
them computes :math:`h_i = \sum_{j \in N(i)} w(i, j) x_j`):

* :func:`denoised_modality_graphs`: with :math:`S_v = \cos(V)`, :math:`S_t = \cos(T)`, every
  pair with :math:`S_v(i,j) < \overline{S_v}` or :math:`S_t(i,j) < \overline{S_t}` is dropped
  (the means over all :math:`I^2` pairs, :func:`mean_cosine`); each item keeps, per modality,
  the top :math:`\min(k, n_i)` of its remaining row (itself included), :math:`n_i` the number
  of non-zero remaining text similarities; walked in square blocks sized from a memory budget.
* :func:`co_interaction_graph`: :math:`c_{ij}` = the number of training users shared by items
  :math:`i \ne j`, a sparse :math:`R^\top R` computed in item chunks; each item keeps its top
  ``k`` items with :math:`c_{ij} \ge` ``min_count``, plus a self loop.

Ties in every top-k are broken towards the lower item index (:func:`stable_topk`), so the graphs
do not depend on the device or on the sort implementation. Zero feature rows have no direction:
their cosines are taken as 0 (MMRec divides by zero there), so such an item has no neighbour
when the mean is positive.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from anchorrec_pyg.errors import DataError

__all__ = [
    'NORM_EPS',
    'stable_topk',
    'mean_cosine',
    'binary_graph_weights',
    'denoised_modality_graphs',
    'co_interaction_graph',
]

NORM_EPS = 1e-7
r"""Added to every row count :math:`r_i` before :math:`r^{-1/2}` (MMRec's normalised Laplacian)."""

DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20
r"""Working memory of one :func:`denoised_modality_graphs` block (256 MiB)."""

BLOCK_BUFFERS = 4
r"""Block-sized float32 buffers alive at once (the two similarity blocks and the top-k work)."""

DEFAULT_CHUNK_ITEMS = 4096
r"""Items per block of the sparse :math:`R^\top R` in :func:`co_interaction_graph`."""


def stable_topk(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""The ``k`` largest entries of each row of ``values`` (``[n, m]``), ties broken towards the
    lower column index.

    Returns:
        ``(value, index)``, both ``[n, k]``, each row sorted by decreasing value (equal values by
        increasing index). ``values`` must hold no NaN.
    """
    value, index = values.topk(min(k + 1, values.size(1)), dim=1)
    # The top-k set is ambiguous where the (k+1)-th largest equals the k-th.
    ambiguous = (value[:, k:k + 1] == value[:, k - 1:k]).any(dim=1).nonzero()
    value, index = value[:, :k].contiguous(), index[:, :k].contiguous()
    threshold = value[:, -1:]
    if ambiguous.numel():
        # Rows where torch.topk had to choose among equal values at the threshold: take those
        # of lowest index.
        rows = ambiguous.view(-1)
        sub, limit = values[rows], threshold[rows]
        tied = sub == limit
        missing = k - (sub > limit).sum(dim=1, keepdim=True, dtype=torch.int32)
        take = (sub > limit) | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= missing))
        index[rows] = take.nonzero()[:, 1].view(-1, k)
        value[rows] = sub.gather(1, index[rows])
    order = index.sort(dim=1).indices
    value, index = value.gather(1, order), index.gather(1, order)
    order = value.sort(dim=1, descending=True, stable=True).indices
    return value.gather(1, order), index.gather(1, order)


def _inverse_norms(x: Tensor) -> Tensor:
    """``1 / ||x_i||`` per row, 0 for zero rows (so that their cosines are 0)."""
    norm = x.norm(dim=1)
    return torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))


def mean_cosine(x: Tensor, chunk_rows: int = 4096) -> float:
    r"""The mean of the :math:`I \times I` cosine-similarity matrix of the rows of ``x``, without
    forming it:

    .. math::
        \frac{1}{I^2}\sum_{i,j} \langle \hat{x}_i, \hat{x}_j\rangle
        = \frac{1}{I^2}\Big\lVert \sum_i \hat{x}_i \Big\rVert^2 \ge 0,

    :math:`\hat{x}_i` the unit rows (zero rows contribute zero similarities), summed in float64
    ``chunk_rows`` rows at a time."""
    inv = _inverse_norms(x.float())
    total = torch.zeros(x.size(1), dtype=torch.float64)
    for start in range(0, x.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        total += (x[rows].double() * inv[rows].double().unsqueeze(1)).sum(dim=0)
    return float(total.dot(total)) / x.size(0)**2


def binary_graph_weights(edge_index: Tensor, num_items: int) -> Tensor:
    r""":math:`1/\sqrt{r_i r_j}` for each edge ``(j -> i)`` of ``edge_index``, :math:`r_i` the
    number of edges into :math:`i` plus :data:`NORM_EPS` (float32)."""
    count = torch.bincount(edge_index[1], minlength=num_items).double() + NORM_EPS
    return (count[edge_index[0]] * count[edge_index[1]]).rsqrt().float()


def _edges(target: Tensor, source: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """``(edge_index, weight)`` of binary edges ``source -> target``, sorted by (target, source)."""
    order = torch.argsort(target * num_items + source)
    edge_index = torch.stack([source[order], target[order]])
    return edge_index, binary_graph_weights(edge_index, num_items)


def _merge(best_val: Tensor, best_idx: Tensor, rows: slice, val: Tensor, idx: Tensor) -> None:
    """Merges candidates ``(val, idx)`` of ``rows`` into the running top-k, in place, keeping the
    order of :func:`stable_topk` (decreasing value, then increasing index)."""
    all_val = torch.cat([best_val[rows], val], dim=1)
    all_idx = torch.cat([best_idx[rows], idx], dim=1)
    order = all_idx.argsort(dim=1)
    all_val, all_idx = all_val.gather(1, order), all_idx.gather(1, order)
    order = all_val.sort(dim=1, descending=True, stable=True).indices[:, :best_val.size(1)]
    best_val[rows] = all_val.gather(1, order)
    best_idx[rows] = all_idx.gather(1, order)


@torch.no_grad()
def denoised_modality_graphs(
    image: Tensor,
    text: Tensor,
    k: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> dict[str, tuple[Tensor, Tensor]]:
    r"""DA-MRS's denoised static image and text graphs (SPEC §10).

    The similarity matrices are walked in square blocks of the upper triangle, as
    :func:`~anchorrec_pyg.data.knn.cosine_knn` does (each block serves its rows and, transposed,
    its columns), merging every block's candidates into a running ``[I, k]`` top-k per modality.
    Dropped pairs never become candidates; the means are non-negative, so the kept similarities
    are too, and the kept pairs with a non-zero text similarity are those MMRec counts.

    Args:
        image, text: ``[I, d_v]`` and ``[I, d_t]`` raw feature rows of the same items.
        k: the most neighbours kept per item (published ``knn_k`` 10).
        memory_budget_bytes: working memory of one block (its side is chosen from it).

    Returns:
        ``{'image': (edge_index, edge_weight), 'text': (edge_index, edge_weight)}``, binary edges
        weighted :math:`1/\sqrt{r_i r_j}` (row 0 neighbour, row 1 item, sorted by item then
        neighbour). Both graphs give item :math:`i` the same number of neighbours.
    """
    if image.size(0) != text.size(0):
        raise DataError(f'the image table has {image.size(0)} rows but the text table has '
                        f'{text.size(0)}')
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    num_items = image.size(0)
    tables = {'image': image.float(), 'text': text.float()}
    inv = {m: _inverse_norms(x) for m, x in tables.items()}
    means = {m: mean_cosine(x) for m, x in tables.items()}
    width = min(k, num_items)
    best = {m: (torch.full((num_items, width), -math.inf),
                torch.full((num_items, width), num_items)) for m in tables}
    count = torch.zeros(num_items, dtype=torch.long)
    size = max(1, min(num_items, math.isqrt(memory_budget_bytes // (4 * BLOCK_BUFFERS))))
    starts = range(0, num_items, size)
    for a in starts:
        ra = slice(a, min(a + size, num_items))
        for b in starts[a // size:]:
            rb = slice(b, min(b + size, num_items))
            sims = {m: (x[ra] * inv[m][ra].unsqueeze(1)) @ x[rb].T for m, x in tables.items()}
            for m, sim in sims.items():
                sim.mul_(inv[m][rb])
            drop = (sims['image'] < means['image']) | (sims['text'] < means['text'])
            counted = sims['text'] > 0
            counted &= ~drop
            count[ra] += counted.sum(dim=1, dtype=torch.int32)
            if b != a:
                count[rb] += counted.sum(dim=0, dtype=torch.int32)
            del counted
            for m, sim in sims.items():
                sim.masked_fill_(drop, -math.inf)
                val, idx = stable_topk(sim, min(width, sim.size(1)))
                _merge(*best[m], ra, val, idx + b)
                if b != a:
                    val, idx = stable_topk(sim.T, min(width, sim.size(0)))
                    _merge(*best[m], rb, val, idx + a)
            del sims, drop
    slot = torch.arange(width).expand(num_items, width) < count.clamp_max(width).unsqueeze(1)
    target = torch.arange(num_items).unsqueeze(1).expand(-1, width)[slot]
    return {m: _edges(target, best[m][1][slot], num_items) for m in ('image', 'text')}


def _top_per_row(row: Tensor, col: Tensor, value: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of largest value in each row of a sparse matrix given as ``(row, col,
    value)`` sorted by ``(row, col)``; ties: lower column. Returns ``(row, col)`` of the kept."""
    order = torch.argsort(-value, stable=True)
    order = order[torch.argsort(row[order], stable=True)]
    row, col = row[order], col[order]
    rank = torch.arange(row.numel()) - torch.searchsorted(row, row, side='left')
    return row[rank < k], col[rank < k]


@torch.no_grad()
def co_interaction_graph(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    min_count: int = 2,
    k: int = 2,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
) -> tuple[Tensor, Tensor]:
    r"""DA-MRS's behaviour graph :math:`G_s` (SPEC §10) from the training interactions.

    :math:`c_{ij} = (R^\top R)_{ij}` for the binary :math:`U \times I` matrix :math:`R` of
    ``edge_index`` (row 0 user, row 1 item), computed as a sparse product, ``chunk_items`` rows
    at a time. Item :math:`i` keeps the ``k`` items :math:`j \ne i` of largest :math:`c_{ij}`
    among those with :math:`c_{ij} \ge` ``min_count`` (ties: lower index), plus itself.

    Returns:
        ``(edge_index, edge_weight)``: binary edges weighted :math:`1/\sqrt{r_i r_j}`, row 0
        neighbour, row 1 item, sorted by item then neighbour (self loops included).
    """
    if chunk_items < 1:
        raise ValueError(f'chunk_items must be >= 1, got {chunk_items}')
    pairs = torch.unique(edge_index[0] * num_items + edge_index[1])
    user, item = pairs // num_items, pairs % num_items
    ones = torch.ones(pairs.numel())
    by_item = torch.argsort(item * num_users + user)
    item_sorted, user_sorted = item[by_item], user[by_item]
    targets, sources = [torch.arange(num_items)], [torch.arange(num_items)]
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
        r = torch.sparse_coo_tensor(torch.stack([user, item]), ones, (num_users, num_items))
        for start in range(0, num_items, chunk_items):
            stop = min(start + chunk_items, num_items)
            lo, hi = torch.searchsorted(item_sorted, torch.tensor([start, stop])).tolist()
            block = torch.sparse_coo_tensor(
                torch.stack([item_sorted[lo:hi] - start, user_sorted[lo:hi]]), ones[lo:hi],
                (stop - start, num_users))
            counts = torch.sparse.mm(block, r).coalesce()
            row, col = counts.indices()
            keep = (counts.values() >= min_count) & (row + start != col)
            row, col = _top_per_row(row[keep], col[keep], counts.values()[keep], k)
            targets.append(row + start)
            sources.append(col)
    return _edges(torch.cat(targets), torch.cat(sources), num_items)
