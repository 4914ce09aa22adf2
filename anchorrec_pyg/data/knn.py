r"""Memory-bounded exact cosine kNN and the item-item graph normalisation of SPEC §2.

For feature rows :math:`x_1, \dots, x_I` the cosine similarity is
:math:`c(i, j) = \langle x_i, x_j\rangle / (\lVert x_i\rVert \lVert x_j\rVert)`. Each item keeps
its :math:`k` most similar items :math:`N_k(i)` (itself included, with similarity 1) with
weight :math:`w(i, j) = c(i, j)`, and the graph is normalised with the row sums of both ends,

.. math::
    w'(i, j) = \frac{w(i, j)}{\sqrt{s_i s_j}}, \qquad s_i = \sum_{j \in N_k(i)} w(i, j),

without symmetrisation, so that :math:`H_i = \sum_{j \in N_k(i)} w'(i, j) X_j` is SPEC's
:math:`A X`.

The similarity matrix is never materialised: :func:`cosine_knn` walks the upper triangle of
:math:`[B \times B]` blocks (each block serves the top-k of its rows *and* of its columns, which
halves the matrix products) and merges every block's candidates into a running ``[I, k]`` top-k.
Peak memory is the input plus :math:`O(B^2 + I k)`, with :math:`B` chosen from a memory budget.

Zero rows (no direction, so no cosine): such an item keeps only a self loop of weight 1 and is
never another item's neighbour; its unused slots hold index ``-1`` and similarity 0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.utils import coalesce

from anchorrec_pyg.errors import DataError

DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20
r"""Working memory of one :func:`cosine_knn` call besides its input and output (256 MiB)."""

BLOCK_BUFFERS = 3
r"""Block-sized float32 buffers alive at once (the similarity block and the top-k workspace)."""

NO_NEIGHBOUR = -1
r"""Index of an unused neighbour slot (only zero-norm rows, or fewer than k non-zero rows)."""


def choose_block_size(num_items: int, chunk_size: int | None, memory_budget_bytes: int) -> int:
    """Side of the square similarity blocks: ``chunk_size`` when given, else the largest
    :math:`B` with ``BLOCK_BUFFERS * B * B * 4`` bytes within the budget (at most ``I``)."""
    if chunk_size is not None:
        if chunk_size <= 0:
            raise ValueError(f'chunk_size must be positive, got {chunk_size}')
        return min(chunk_size, num_items)
    side = math.isqrt(max(memory_budget_bytes, 0) // (4 * BLOCK_BUFFERS))
    return max(1, min(side, num_items))


def _merge(best_val: Tensor, best_idx: Tensor, rows: slice, val: Tensor, idx: Tensor,
           k: int) -> None:
    """Merges candidates ``(val, idx)`` of ``rows`` into the running top-k, in place."""
    all_val = torch.cat([best_val[rows], val], dim=1)
    all_idx = torch.cat([best_idx[rows], idx], dim=1)
    top_val, pos = all_val.topk(k, dim=1)
    best_val[rows] = top_val
    best_idx[rows] = all_idx.gather(1, pos)


@torch.no_grad()
def cosine_knn(
    x: Tensor,
    k: int,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> tuple[Tensor, Tensor]:
    r"""Exact top-:math:`k` cosine neighbours of every row of ``x``, in bounded memory.

    Args:
        x: ``[I, d]`` feature rows (computed in float32; the input is not modified).
        k: neighbours per row, the row itself included (``1 <= k <= I``).
        chunk_size: side :math:`B` of the square similarity blocks; by default the largest
            with ``3 * B * B * 4`` bytes within ``memory_budget_bytes``.
        memory_budget_bytes: working-memory budget used to choose ``chunk_size``.

    Returns:
        ``(index, similarity)``: ``[I, k]`` int64 neighbour ids and ``[I, k]`` float32 cosine
        similarities, each row sorted by decreasing similarity. A zero row has itself (1.0) in
        slot 0 and :data:`NO_NEIGHBOUR` (similarity 0) elsewhere, and never appears in another
        row. Ties between equal similarities are broken arbitrarily, as in a dense
        ``torch.topk``.
    """
    if x.dim() != 2:
        raise ValueError(f'expected a 2-D tensor [I, d], got shape {tuple(x.shape)}')
    num_items = x.size(0)
    if not 1 <= k <= num_items:
        raise ValueError(f'k must be in [1, I = {num_items}], got {k}')
    x = x.float()
    norm = x.norm(dim=1)
    nonzero = norm > 0
    inv_norm = torch.where(nonzero, 1.0 / norm, torch.zeros_like(norm))
    # Adding -inf to zero rows/columns keeps them out of every top-k.
    penalty = None if bool(nonzero.all()) else torch.where(nonzero, 0.0, -math.inf)

    best_val = torch.full((num_items, k), -math.inf, device=x.device)
    best_idx = torch.full((num_items, k), NO_NEIGHBOUR, dtype=torch.long, device=x.device)
    size = choose_block_size(num_items, chunk_size, memory_budget_bytes)
    starts = range(0, num_items, size)
    for a in starts:
        ra = slice(a, min(a + size, num_items))
        xa = x[ra] * inv_norm[ra].unsqueeze(1)
        for b in starts[a // size:]:
            rb = slice(b, min(b + size, num_items))
            sim = xa @ x[rb].T
            sim.mul_(inv_norm[rb])
            if penalty is not None:
                sim.add_(penalty[ra].unsqueeze(1)).add_(penalty[rb])
            kb = min(k, sim.size(1))
            val, idx = sim.topk(kb, dim=1)
            _merge(best_val, best_idx, ra, val, idx + b, k)
            if b != a:
                ka = min(k, sim.size(0))
                val, idx = sim.topk(ka, dim=0)
                _merge(best_val, best_idx, rb, val.T, idx.T + a, k)
            del sim

    missing = torch.isinf(best_val)
    best_idx[missing] = NO_NEIGHBOUR
    best_val[missing] = 0.0
    zero_rows = (~nonzero).nonzero().view(-1)
    best_idx[zero_rows, 0] = zero_rows
    best_val[zero_rows, 0] = 1.0
    return best_idx, best_val


def normalize_knn(index: Tensor, similarity: Tensor) -> tuple[Tensor, Tensor]:
    r"""Turns a top-k table into the SPEC §2 item-item graph.

    Args:
        index: ``[I, k]`` neighbour ids from :func:`cosine_knn` (``-1`` = unused slot).
        similarity: ``[I, k]`` the matching cosine similarities :math:`w(i, j)`.

    Returns:
        ``(edge_index, edge_weight)``: ``edge_index[0]`` = neighbour :math:`j` (source),
        ``edge_index[1]`` = item :math:`i` (target), grouped by target in item order;
        ``edge_weight`` = :math:`w(i,j) / \sqrt{s_i s_j}` in float32. Unused slots are dropped,
        so there are ``I * k`` edges unless zero rows exist.

    Raises:
        DataError: if a row sum :math:`s_i` is not positive (only possible for features whose
            nearest neighbours are strongly anti-correlated), where the normalisation is
            undefined.
    """
    num_items, k = index.shape
    target = torch.arange(num_items, device=index.device).repeat_interleave(k)
    source = index.reshape(-1)
    weight = similarity.reshape(-1).float()
    keep = source != NO_NEIGHBOUR
    source, target, weight = source[keep], target[keep], weight[keep]
    row_sum = torch.zeros(num_items, device=index.device).index_add_(0, target, weight)
    if not bool((row_sum > 0).all()):
        bad = int((row_sum <= 0).nonzero()[0])
        raise DataError(f'kNN row sum s_{bad} = {float(row_sum[bad]):.4g} is not positive: the '
                        'SPEC §2 normalisation w/sqrt(s_i s_j) is undefined for these features')
    weight = weight / (row_sum[target] * row_sum[source]).sqrt()
    return torch.stack([source, target]), weight


def knn_graph_normalized(
    x: Tensor,
    k: int,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> tuple[Tensor, Tensor]:
    r"""The normalised kNN graph of SPEC §2 for the feature rows ``x``: :func:`cosine_knn`
    followed by :func:`normalize_knn`. Returns ``(edge_index [2, I*k], edge_weight [I*k])`` with
    ``edge_index[0]`` = neighbour :math:`j` (source) and ``edge_index[1]`` = item :math:`i`
    (target). Zero rows keep only a self loop of weight 1 (see :func:`cosine_knn`)."""
    index, similarity = cosine_knn(x, k, chunk_size, memory_budget_bytes)
    return normalize_knn(index, similarity)


def max_union_graph(graphs: list[tuple[Tensor, Tensor]], num_items: int) -> tuple[Tensor, Tensor]:
    r"""The union of several item-item graphs, each edge weighted by the largest of its weights
    (SMORE's fusion graph, SPEC §10):

    .. math::
        w_f(i, j) = \max_{g:\,(j \rightarrow i) \in \mathcal{E}_g} w_g(i, j),

    over the graphs that hold the edge, with no renormalisation. Computed as one sparse
    coalesce with ``reduce='max'``, so the memory is that of the edge lists.

    Args:
        graphs: ``(edge_index [2, E_g], edge_weight [E_g])`` pairs over the same items
            (row 0 source, row 1 target; each graph without duplicate edges).
        num_items: :math:`I`.

    Returns:
        ``(edge_index, edge_weight)`` of the union, sorted by row 0 then row 1.
    """
    if not graphs:
        raise ValueError('max_union_graph needs at least one graph')
    edge_index = torch.cat([index for index, _ in graphs], dim=1)
    edge_weight = torch.cat([weight for _, weight in graphs])
    return coalesce(edge_index, edge_weight, num_items, reduce='max')


def normalized_ui_weights(edge_index: Tensor, num_users: int, num_items: int) -> Tensor:
    r"""The symmetric LightGCN weights of the user-item graph (SPEC §2):
    :math:`w(u, i) = 1 / \sqrt{\deg(u) \deg(i)}` for each training edge ``(u, i)`` of
    ``edge_index`` (``[2, E]``, row 0 user, row 1 item), as float32."""
    user, item = edge_index
    ones = torch.ones(user.numel(), device=user.device)
    deg_user = torch.zeros(num_users, device=user.device).index_add_(0, user, ones)
    deg_item = torch.zeros(num_items, device=user.device).index_add_(0, item, ones)
    return (deg_user[user] * deg_item[item]).rsqrt()
